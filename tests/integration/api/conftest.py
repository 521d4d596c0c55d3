"""The intake API served on 127.0.0.1 over a per-test database, with the mock OpenAI service for
query embeddings; clients are real HTTP clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from docpipe_api.auth import mint_token
from docpipe_api.server import RunningApi, open_api
from docpipe_api.settings import ApiSettings
from docpipe_mocks.server import MockConfig
from docpipe_providers.object_storage import ObjectStore
from tests.support.mocks import serve

SECRET = "integration-test-secret-of-at-least-32-bytes"
PIPELINES = "default,other"


@dataclass
class Api:
    """A running API and what a test needs to call it."""

    url: str
    mocks: str
    session: aiohttp.ClientSession
    pool: asyncpg.Pool
    running: RunningApi

    def token(self, subject: str = "alice", scopes: str = "read write search", **kw: Any) -> str:
        return mint_token(SECRET, subject=subject, scopes=scopes.split(), **kw)

    def auth(self, subject: str = "alice", scopes: str = "read write search") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject, scopes)}"}

    async def upload(
        self,
        data: bytes,
        *,
        subject: str = "alice",
        filename: str = "notes.md",
        content_type: str | None = "text/markdown",
        pipeline: str = "default",
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=content_type)
        async with self.session.post(
            f"{self.url}/v1/pipelines/{pipeline}/documents{query}",
            data=form,
            headers={**self.auth(subject), **(headers or {})},
        ) as response:
            return response.status, await response.json()

    async def call(
        self,
        method: str,
        path: str,
        *,
        subject: str = "alice",
        scopes: str = "read write search",
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        async with self.session.request(
            method,
            self.url + path,
            json=json,
            headers={**self.auth(subject, scopes), **(headers or {})},
        ) as response:
            body = await response.json() if response.status != 204 else None
            return response.status, body, dict(response.headers)


ApiFactory = Callable[..., Any]


def api_settings(database_url: str, mocks: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "host": "127.0.0.1",
        "port": 0,
        "pipelines": PIPELINES,
        "jwt_secret": SECRET,
        "openai_base_url": f"{mocks}/v1",
        "openai_api_key": "test",
        "rate_limit_per_second": 1000.0,
        "rate_limit_burst": 1000,
        "request_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return ApiSettings(**values)


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


@pytest.fixture
async def api(database_url: str, pool: asyncpg.Pool, mocks: str) -> AsyncIterator[Api]:
    async with (
        open_api(api_settings(database_url, mocks)) as running,
        aiohttp.ClientSession() as session,
    ):
        yield Api(running.url, mocks, session, pool, running)


def unique_markdown(title: str = "Notes", sentence: str | None = None) -> bytes:
    sentence = sentence or f"Tide tables for harbour {uuid.uuid4().hex} list the high waters."
    return f"# {title}\n\n{sentence}\n".encode()


async def process_pending(
    api: Api,
    pipeline: str = "default",
    timeout_s: float = 20.0,
    *,
    revision: str = "test",
    settings_digest: str | None = None,
    originals: ObjectStore | None = None,
) -> None:
    """Run the real ingest pipeline (local parser, mock embeddings) until no document of
    `pipeline` is pending or processing; its chunks record `revision` and `settings_digest`;
    `originals`: the object storage of documents uploaded with DOCPIPE_ORIGINALS_STORE=s3."""
    import asyncio

    from docpipe_ingest.parsers import LocalParser
    from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline
    from docpipe_providers.embeddings import OpenAIEmbedder
    from docpipe_queue.consumer import Consumer, ConsumerConfig
    from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS

    embedder = OpenAIEmbedder(
        api.session,
        api_key="test",
        base_url=f"{api.mocks}/v1",
        dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
        request_timeout=5.0,
    )
    pipeline_handler = IngestPipeline(
        api.pool,
        LocalParser(),
        embedder,
        chunking=ChunkingConfig(max_chars=400, overlap_chars=50),
        dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
        revision=revision,
        settings_digest=settings_digest,
        originals=originals,
    )
    consumer = Consumer(
        api.pool,
        pipeline_handler,
        ConsumerConfig(pipeline=pipeline, concurrency=4, batch_size=4, poll_interval_s=0.05),
    )
    running = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while await api.pool.fetchval(
                "select count(*) from docpipe.documents"
                " where pipeline = $1 and status in ('pending', 'processing')",
                pipeline,
            ):
                await asyncio.sleep(0.05)
    finally:
        await consumer.drain(5.0)
        await running
