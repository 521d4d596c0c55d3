"""moto's S3 server on 127.0.0.1, for the tests of originals in object storage: a real S3 HTTP
API, started as a process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp

from docpipe_providers.object_storage import ObjectStorageConfig, ObjectStore
from tests.support.ports import free_port

# The credentials the tests sign with (moto accepts any).
KEY_ID, SECRET_KEY = "testing-key", "testing-secret"


@contextmanager
def moto_server() -> Iterator[str]:
    """Run `moto_server` on a free port until the block ends; yields its URL."""
    executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def bucket_config(endpoint_url: str) -> ObjectStorageConfig:
    """The configuration of a bucket of its own (a new name) on the server at `endpoint_url`."""
    return ObjectStorageConfig(
        endpoint_url, f"originals-{uuid.uuid4().hex[:12]}", KEY_ID, SECRET_KEY
    )


@asynccontextmanager
async def open_bucket(config: ObjectStorageConfig) -> AsyncIterator[ObjectStore]:
    """A store of `config`'s bucket, created first, over a session of its own."""
    async with aiohttp.ClientSession() as session:
        objects = ObjectStore(session, config)
        await objects.create_bucket()
        yield objects
