"""Cross-document batching against the mock OpenAI server over HTTP: concurrent callers share
requests, a refused shared request is split so that only the caller whose input was refused
fails, and each caller's meter gets its share of the billed tokens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from docpipe_contracts.errors import PermanentError
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline
from docpipe_mocks.openai import OpenAISettings, estimate_tokens
from docpipe_mocks.server import MockConfig
from docpipe_providers import usage
from docpipe_providers.batching import SharedRequests
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.documents import add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS
from tests.samples import markdown_bytes
from tests.support.mocks import serve

DIMS = DEFAULT_EMBEDDING_DIMENSIONS


async def embedding_requests(session: aiohttp.ClientSession, mocks: str) -> int:
    async with session.get(f"{mocks}/_admin/stats") as response:
        body = await response.json()
    return sum(body["requests"].get("POST /v1/embeddings", {}).values())


def client(session: aiohttp.ClientSession, mocks: str) -> OpenAIEmbedder:
    return OpenAIEmbedder(session, api_key="k", base_url=f"{mocks}/v1", dimensions=DIMS)


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    # Requests of more than 400 tokens are refused for their size; inputs over 100 tokens too.
    config = MockConfig(openai=OpenAISettings(max_request_tokens=400, max_input_tokens=100))
    async with serve("127.0.0.1", 0, config) as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def texts(caller: int, count: int = 3) -> list[str]:
    return [f"caller {caller} text {i} about harbour seals and tides" for i in range(count)]


async def test_concurrent_callers_share_one_request(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    shared = client(session, mocks).shared(window_s=0.05, max_inputs=256, max_tokens=400)
    alone = await client(session, mocks).embed(texts(0) + texts(1))
    before = await embedding_requests(session, mocks)
    results = await asyncio.gather(*(shared.embed(texts(c)) for c in range(5)))
    assert await embedding_requests(session, mocks) - before == 1
    assert results[0] + results[1] == alone


async def test_a_request_is_never_larger_than_the_input_limit(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    shared = client(session, mocks).shared(window_s=0.05, max_inputs=4, max_tokens=400)
    before = await embedding_requests(session, mocks)
    results = await asyncio.gather(*(shared.embed(texts(c)) for c in range(4)))
    assert [len(r) for r in results] == [3, 3, 3, 3]
    assert await embedding_requests(session, mocks) - before == 3  # 12 inputs, 4 a request


async def test_an_input_the_service_refuses_fails_only_its_caller(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    shared = client(session, mocks).shared(window_s=0.05, max_inputs=256, max_tokens=400)
    bad = [*texts(9, 2), "seal " * 200]  # 250 tokens: over the input limit
    results = await asyncio.gather(
        shared.embed(texts(0)), shared.embed(bad), shared.embed(texts(1)), return_exceptions=True
    )
    assert isinstance(results[1], PermanentError)
    assert results[1].status == 400
    assert [len(r) for r in (results[0], results[2]) if isinstance(r, list)] == [3, 3]


async def test_a_request_refused_for_its_size_is_split(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    # The batcher believes 10,000 tokens fit; the service takes 400: the request is split until
    # each part fits, and every caller gets its vectors.
    shared = client(session, mocks).shared(window_s=0.05, max_inputs=256, max_tokens=10_000)
    many = [[f"caller {c} sentence {i} " + "tide " * 15 for i in range(8)] for c in range(3)]
    results = await asyncio.gather(*(shared.embed(t) for t in many))
    assert results == [await client(session, mocks).embed(t) for t in many]


async def test_each_caller_is_billed_its_share_of_a_shared_request(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    shared = client(session, mocks).shared(window_s=0.05, max_inputs=256, max_tokens=400)
    inputs = [texts(0, 1), texts(1, 4), [t * 3 for t in texts(2, 2)]]

    async def metered(batch: list[str]) -> usage.Usage:
        with usage.metering() as meter:
            await shared.embed(batch)
        return meter

    before = await embedding_requests(session, mocks)
    meters = await asyncio.gather(*(metered(batch) for batch in inputs))
    assert await embedding_requests(session, mocks) - before == 1
    # The mock bills its own estimate per input, the batcher weighs by the same estimate.
    assert [m.tokens for m in meters] == [sum(estimate_tokens(t) for t in b) for b in inputs]
    assert [m.requests for m in meters] == [1, 1, 1]


async def test_a_lone_caller_without_a_window_does_not_wait(
    mocks: str, session: aiohttp.ClientSession
) -> None:
    shared = SharedRequests(client(session, mocks).request, window_s=0.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert len(await shared.embed(texts(0))) == 3
    assert shared.requests_sent == 1
    assert loop.time() - start < 1.0


async def test_jobs_of_the_pipeline_share_requests_and_keep_their_own_usage(
    pool: asyncpg.Pool, session: aiohttp.ClientSession
) -> None:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        embedder = client(session, url).shared(window_s=0.2, max_inputs=256, max_tokens=240_000)
        pipeline = IngestPipeline(
            pool,
            LocalParser(),
            embedder,
            chunking=ChunkingConfig(max_chars=300, overlap_chars=20),
            dimensions=DIMS,
            revision="test",
        )
        ids: list[uuid.UUID] = []
        async with pool.acquire() as conn:
            for n in range(6):
                paragraphs = [
                    f"Document {n} paragraph {p}: seals and tides." * 3 for p in range(n + 1)
                ]
                added = await add_document(
                    conn,
                    pipeline="docs",
                    owner="alice",
                    filename=f"d{n}.md",
                    content_type="text/markdown",
                    data=markdown_bytes(f"Doc {n}", paragraphs),
                )
                ids.append(added.document_id)
        before = await embedding_requests(session, url)
        consumer = Consumer(pool, pipeline, ConsumerConfig(pipeline="docs", poll_interval_s=0.05))
        task = asyncio.create_task(consumer.run())
        try:
            for _ in range(200):
                done = await pool.fetchval(
                    "select count(*) from docpipe.documents where status = 'processed'"
                )
                if done == len(ids):
                    break
                await asyncio.sleep(0.05)
        finally:
            await consumer.drain(grace_s=2)
            await task
        assert done == len(ids)
        requests = await embedding_requests(session, url) - before
        assert requests < len(ids)
        for doc_id in ids:
            chunks = await pool.fetch(
                "select content from docpipe.chunks where document_id = $1", doc_id
            )
            billed = await pool.fetchval(
                "select embedding_tokens from docpipe.document_usage where document_id = $1", doc_id
            )
            assert billed == sum(estimate_tokens(r["content"]) for r in chunks)
