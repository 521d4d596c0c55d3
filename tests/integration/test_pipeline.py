"""The ingest pipeline end to end in one process: documents in Postgres, parsing and embedding
over real HTTP against the mock services, chunks with embeddings stored in pgvector."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.pipeline import (
    ChunkingConfig,
    DimensionMismatchError,
    IngestPipeline,
    Parser,
)
from docpipe_mocks.llamaparse import LlamaParseSettings
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.documents import add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS
from docpipe_queue.retry import RetryPolicy
from tests.samples import docx_bytes, html_bytes, markdown_bytes, pdf_bytes
from tests.support.mocks import serve

DIMS = DEFAULT_EMBEDDING_DIMENSIONS
PARAGRAPHS = [
    "Harbour seals rest on sandbanks at low tide and hunt flatfish when the water returns.",
    "Volunteers count the seals every August from the dunes with binoculars and notebooks.",
]


@dataclass
class Stack:
    pool: asyncpg.Pool
    session: aiohttp.ClientSession
    mocks: str

    def embedder(self, **options: Any) -> OpenAIEmbedder:
        settings: dict[str, Any] = {
            "api_key": "k",
            "base_url": f"{self.mocks}/v1",
            "dimensions": DIMS,
            "request_timeout": 2.0,
        }
        return OpenAIEmbedder(self.session, **(settings | options))

    def llamaparse(self) -> LlamaParseClient:
        return LlamaParseClient(
            self.session, api_key="k", base_url=self.mocks, poll_interval=0.02, request_timeout=2
        )

    def pipeline(self, parser: Parser | None = None, **embedder: Any) -> IngestPipeline:
        return IngestPipeline(
            self.pool,
            parser or LocalParser(),
            self.embedder(**embedder),
            chunking=ChunkingConfig(max_chars=400, overlap_chars=50),
            dimensions=embedder.get("dimensions", DIMS),
            revision="test",
        )

    async def faults(self, faults: dict[str, Any]) -> None:
        async with self.session.put(f"{self.mocks}/_admin/faults", json=faults) as response:
            assert response.status == 200, await response.text()


@pytest.fixture
async def stack(pool: asyncpg.Pool) -> AsyncIterator[Stack]:
    config = MockConfig(llamaparse=LlamaParseSettings(pending_polls=1))
    async with serve("127.0.0.1", 0, config) as url, aiohttp.ClientSession() as session:
        yield Stack(pool, session, url)


async def add(pool: asyncpg.Pool, filename: str, content_type: str, data: bytes) -> uuid.UUID:
    async with pool.acquire() as conn:
        added = await add_document(
            conn,
            pipeline="p",
            owner="alice",
            filename=filename,
            content_type=content_type,
            data=data,
            max_attempts=4,
        )
    return added.document_id


async def drain(stack: Stack, pipeline: IngestPipeline, timeout_s: float = 30) -> None:
    """Run a consumer until no job of the pipeline is queued or running."""
    consumer = Consumer(
        stack.pool,
        pipeline,
        ConsumerConfig(
            pipeline="p",
            concurrency=4,
            poll_interval_s=0.05,
            retry_policy=RetryPolicy(base_s=0.05, cap_s=0.2),
        ),
    )
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while await stack.pool.fetchval(
            "select count(*) from docpipe.jobs where status in ('queued', 'running')"
        ):
            assert time.monotonic() < deadline, "jobs still unfinished"
            await asyncio.sleep(0.05)
    finally:
        await consumer.drain(grace_s=2)
        await task


async def document(pool: asyncpg.Pool, doc_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        "select status, error, chunk_count from docpipe.documents where id = $1", doc_id
    )
    assert row is not None
    return row


SAMPLES = [
    ("seals.pdf", "application/pdf", pdf_bytes(PARAGRAPHS)),
    (
        "seals.docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        docx_bytes("Seal survey", PARAGRAPHS),
    ),
    ("seals.html", "text/html", html_bytes("Seal survey", PARAGRAPHS)),
    ("seals.md", "text/markdown", markdown_bytes("Seal survey", PARAGRAPHS)),
]


@pytest.mark.parametrize("parser_kind", ["local", "llamaparse"])
async def test_every_format_ends_as_chunks_with_embeddings_of_the_column_dimension(
    stack: Stack, parser_kind: str
) -> None:
    ids = [await add(stack.pool, *sample) for sample in SAMPLES]
    parser = stack.llamaparse() if parser_kind == "llamaparse" else LocalParser()
    await drain(stack, stack.pipeline(parser))
    for (filename, _, _), doc_id in zip(SAMPLES, ids, strict=True):
        row = await document(stack.pool, doc_id)
        assert (row["status"], row["error"]) == ("processed", None), filename
        chunks = await stack.pool.fetch(
            "select content, vector_dims(embedding) as dims from docpipe.chunks"
            " where document_id = $1 order by ordinal",
            doc_id,
        )
        assert len(chunks) == row["chunk_count"] >= 1
        assert {c["dims"] for c in chunks} == {DIMS}
        text = " ".join(c["content"] for c in chunks)
        assert "sandbanks" in text, (filename, text)
        assert "binoculars" in text, (filename, text)


async def test_reprocessing_replaces_chunks_without_duplicates(stack: Stack) -> None:
    data = markdown_bytes("Seal survey", PARAGRAPHS * 6)
    doc_id = await add(stack.pool, "seals.md", "text/markdown", data)
    await drain(stack, stack.pipeline())
    first = await stack.pool.fetch(
        "select ordinal, content from docpipe.chunks where document_id = $1 order by ordinal",
        doc_id,
    )
    async with stack.pool.acquire() as conn:
        again = await add_document(
            conn,
            pipeline="p",
            owner="alice",
            filename="seals.md",
            content_type="text/markdown",
            data=data,
            reprocess=True,
        )
    assert again.document_id == doc_id
    assert again.job_id is not None
    await drain(stack, stack.pipeline())
    second = await stack.pool.fetch(
        "select ordinal, content from docpipe.chunks where document_id = $1 order by ordinal",
        doc_id,
    )
    assert len(first) > 1
    assert [tuple(r) for r in second] == [tuple(r) for r in first]


async def test_rate_limited_embedding_waits_for_retry_after_then_succeeds(stack: Stack) -> None:
    doc_id = await add(stack.pool, "seals.md", "text/markdown", markdown_bytes("S", PARAGRAPHS))
    await stack.faults({"openai": {"rate_limit_rate": 1.0, "retry_after_seconds": 1}})

    async def lift_fault_after_first_attempt() -> float:
        """How long after its failure the job was scheduled to run again (seconds)."""
        while True:
            row = await stack.pool.fetchrow(
                "select extract(epoch from run_after - now())::float8 as wait from docpipe.jobs"
                " where document_id = $1 and status = 'queued' and last_error is not null",
                doc_id,
            )
            if row is not None:
                break
            await asyncio.sleep(0.01)
        await stack.faults({})
        wait: float = row["wait"]
        return wait

    lifter = asyncio.create_task(lift_fault_after_first_attempt())
    await drain(stack, stack.pipeline())
    scheduled_wait = await lifter
    job = await stack.pool.fetchrow(
        "select status, attempts, last_error, run_after from docpipe.jobs where document_id = $1",
        doc_id,
    )
    assert job is not None
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert "429" in job["last_error"]
    # The retry waits for retry-after (1 s), not for the backoff of this test's policy (<0.2 s).
    assert 0.8 < scheduled_wait <= 1.0
    row = await document(stack.pool, doc_id)
    assert row["status"] == "processed"


async def test_server_errors_are_retried_until_the_service_recovers(stack: Stack) -> None:
    doc_id = await add(stack.pool, "seals.md", "text/markdown", markdown_bytes("S", PARAGRAPHS))
    await stack.faults({"openai": {"error_rate": 1.0}})

    async def recover_after_two_failures() -> None:
        while (
            await stack.pool.fetchval(
                "select attempts from docpipe.jobs where document_id = $1", doc_id
            )
            < 3
        ):
            await asyncio.sleep(0.02)
        await stack.faults({})

    recovering = asyncio.create_task(recover_after_two_failures())
    await drain(stack, stack.pipeline())
    await recovering
    job = await stack.pool.fetchrow(
        "select status, attempts, last_error from docpipe.jobs where document_id = $1", doc_id
    )
    assert job is not None
    assert job["status"] == "succeeded"
    assert job["attempts"] >= 3
    assert "5" in job["last_error"]


async def test_permanent_client_error_goes_dead_with_the_services_message(stack: Stack) -> None:
    doc_id = await add(stack.pool, "seals.md", "text/markdown", markdown_bytes("S", PARAGRAPHS))
    # The mock refuses a dimension the model cannot give, as OpenAI does, with a 400.
    await drain(stack, stack.pipeline(dimensions=100_000))
    job = await stack.pool.fetchrow(
        "select status, attempts, last_error from docpipe.jobs where document_id = $1", doc_id
    )
    assert job is not None
    assert (job["status"], job["attempts"]) == ("dead", 1)
    assert "dimensions" in job["last_error"]
    row = await document(stack.pool, doc_id)
    assert (row["status"], row["error"]) == ("failed", job["last_error"])


async def test_hung_service_times_out_and_the_job_is_retried(stack: Stack) -> None:
    doc_id = await add(stack.pool, "seals.md", "text/markdown", markdown_bytes("S", PARAGRAPHS))
    await stack.faults({"openai": {"hang_rate": 1.0}})

    async def recover_after_one_timeout() -> None:
        while not await stack.pool.fetchval(
            "select last_error from docpipe.jobs where document_id = $1", doc_id
        ):
            await asyncio.sleep(0.02)
        await stack.faults({})

    recovering = asyncio.create_task(recover_after_one_timeout())
    started = time.monotonic()
    await drain(stack, stack.pipeline(request_timeout=0.5))
    await recovering
    job = await stack.pool.fetchrow(
        "select status, last_error from docpipe.jobs where document_id = $1", doc_id
    )
    assert job is not None
    assert job["status"] == "succeeded"
    assert "timed out" in job["last_error"] or "timeout" in job["last_error"]
    assert time.monotonic() - started < 10


async def test_unreadable_document_goes_dead_with_a_message_a_person_can_act_on(
    stack: Stack,
) -> None:
    doc_id = await add(stack.pool, "broken.pdf", "application/pdf", b"%PDF-1.4 garbage")
    await drain(stack, stack.pipeline())
    row = await document(stack.pool, doc_id)
    assert row["status"] == "failed"
    assert "broken.pdf" in row["error"]


async def test_empty_document_goes_dead_at_once(stack: Stack) -> None:
    doc_id = await add(stack.pool, "blank.md", "text/markdown", b"   \n\n  ")
    await drain(stack, stack.pipeline())
    row = await document(stack.pool, doc_id)
    assert row["status"] == "failed"
    attempts = await stack.pool.fetchval(
        "select attempts from docpipe.jobs where document_id = $1", doc_id
    )
    assert attempts == 1


async def test_dimension_that_does_not_fit_the_column_is_refused_at_start(stack: Stack) -> None:
    with pytest.raises(DimensionMismatchError, match=rf"holds vector\({DIMS}\); set it to {DIMS}"):
        await stack.pipeline(dimensions=DIMS * 2).check_dimensions()
    await stack.pipeline().check_dimensions()
