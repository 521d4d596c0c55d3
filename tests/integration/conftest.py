"""Fixtures shared by the integration tests of originals in object storage (moto's S3 server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from docpipe_providers.object_storage import ObjectStorageConfig, ObjectStore
from tests.support.object_storage import bucket_config, moto_server, open_bucket


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, for the module's tests."""
    with moto_server() as url:
        yield url


@pytest.fixture
def config(s3_endpoint: str) -> ObjectStorageConfig:
    """A bucket of the test's own on that server."""
    return bucket_config(s3_endpoint)


@pytest.fixture
async def store(config: ObjectStorageConfig) -> AsyncIterator[ObjectStore]:
    async with open_bucket(config) as objects:
        yield objects
