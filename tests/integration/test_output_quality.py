"""Output quality end to end (issue 18): the pipeline records each chunk's revision and settings
digest, and counts its output per revision, against the mocks over real HTTP; a revision pointed
at a degraded mock shows it in its output metrics while its jobs still complete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.parts import PartsConfig
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline, Parser
from docpipe_ingest.provenance import OutputSettings, settings_digest
from docpipe_mocks.llamaparse import LlamaParseSettings
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.documents import add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS
from docpipe_queue.retry import RetryPolicy
from tests.samples import markdown_bytes
from tests.support.mocks import serve
from tests.support.polling import eventually

DIMS = DEFAULT_EMBEDDING_DIMENSIONS
PIPELINE = "quality"
PARAGRAPHS = [
    "Harbour seals rest on sandbanks at low tide and hunt flatfish when the water returns.",
    "Volunteers count the seals every August from the dunes with binoculars and notebooks.",
    "The survey compares the colony with the counts of earlier decades and of nearby islands.",
]


@dataclass
class Stack:
    pool: asyncpg.Pool
    session: aiohttp.ClientSession
    mocks: str

    def pipeline(
        self,
        revision: str,
        *,
        openai_path: str = "/v1",
        parse_path: str | None = None,
        parts: PartsConfig | None = None,
    ) -> IngestPipeline:
        """A worker of `revision`: local parsing, or LlamaParse at `parse_path` of the mock;
        embeddings at `openai_path` of the mock; documents in `parts` above its threshold."""
        parser: Parser = LocalParser()
        if parse_path is not None:
            parser = LlamaParseClient(
                self.session, api_key="k", base_url=self.mocks + parse_path, poll_interval=0.02
            )
        embedder = OpenAIEmbedder(
            self.session, api_key="k", base_url=self.mocks + openai_path, dimensions=DIMS
        )
        digest = settings_digest(
            OutputSettings(
                parser="local" if parse_path is None else "llamaparse",
                chunk_max_chars=300,
                chunk_overlap_chars=30,
                embedding_model="text-embedding-3-small",
                embedding_dimensions=DIMS,
                embedding_endpoint=self.mocks + openai_path,
                parser_endpoint=None if parse_path is None else self.mocks + parse_path,
            )
        )
        return IngestPipeline(
            self.pool,
            parser,
            embedder,
            chunking=ChunkingConfig(max_chars=300, overlap_chars=30),
            dimensions=DIMS,
            revision=revision,
            settings_digest=digest,
            parts=parts,
        )


@pytest.fixture
async def stack(pool: asyncpg.Pool) -> AsyncIterator[Stack]:
    config = MockConfig(llamaparse=LlamaParseSettings(pending_polls=0))
    async with serve("127.0.0.1", 0, config) as url, aiohttp.ClientSession() as session:
        yield Stack(pool, session, url)


async def add(pool: asyncpg.Pool, title: str, *, owner: str = "alice") -> uuid.UUID:
    async with pool.acquire() as conn:
        added = await add_document(
            conn,
            pipeline=PIPELINE,
            owner=owner,
            filename=f"{title}.md",
            content_type="text/markdown",
            data=markdown_bytes(title, PARAGRAPHS * 3),
            max_attempts=2,
        )
    return added.document_id


async def drain(pool: asyncpg.Pool, pipeline: IngestPipeline, timeout_s: float = 30) -> None:
    """Run a consumer of `pipeline` until no job is queued or running."""
    consumer = Consumer(
        pool,
        pipeline,
        ConsumerConfig(
            pipeline=PIPELINE,
            concurrency=4,
            poll_interval_s=0.05,
            revision=pipeline.revision,
            retry_policy=RetryPolicy(base_s=0.02, cap_s=0.05),
        ),
    )

    async def idle() -> bool:
        active = "select count(*) from docpipe.jobs where status in ('queued', 'running')"
        count: int = await pool.fetchval(active)
        return count == 0

    task = asyncio.create_task(consumer.run())
    try:
        await eventually(idle, within=timeout_s, what="the jobs to finish")
    finally:
        await consumer.drain(grace_s=2)
        await task


def output(name: str, revision: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(
        f"docpipe_output_{name}", {"pipeline": PIPELINE, "revision": revision, **labels}
    )
    return value or 0.0


def fresh_revision() -> str:
    # The counters live in this process for the whole session: each test counts its own revision.
    return f"r-{uuid.uuid4().hex[:8]}"


async def test_each_chunk_records_the_revision_and_settings_digest_that_stored_it(
    stack: Stack,
) -> None:
    first, second = await add(stack.pool, "first"), await add(stack.pool, "second")
    revision = fresh_revision()
    pipeline = stack.pipeline(revision)

    await drain(stack.pool, pipeline)

    rows = await stack.pool.fetch(
        "select document_id, revision, settings_digest, count(*) from docpipe.chunks"
        " group by 1, 2, 3"
    )
    assert {r["document_id"] for r in rows} == {first, second}
    assert {(r["revision"], r["settings_digest"]) for r in rows} == {
        (revision, pipeline.settings_digest)
    }
    assert pipeline.settings_digest is not None
    assert len(pipeline.settings_digest) == 16


async def test_the_output_counters_add_up_what_was_stored(stack: Stack) -> None:
    ids = [await add(stack.pool, "first"), await add(stack.pool, "second")]
    revision = fresh_revision()

    await drain(stack.pool, stack.pipeline(revision))

    sizes = await stack.pool.fetchval(
        "select sum(size_bytes)::bigint from docpipe.documents where id = any($1::uuid[])", ids
    )
    chunks = await stack.pool.fetchval("select count(*) from docpipe.chunks")
    assert output("documents_total", revision) == 2
    assert output("input_bytes_total", revision) == sizes
    # Markdown is its own text: about as many characters as bytes (ASCII).
    assert 0.9 * sizes <= output("extracted_chars_total", revision) <= sizes
    assert output("chunks_total", revision) == chunks > 2
    assert output("vectors_total", revision) == chunks
    assert output("vector_norm_count", revision) == chunks
    assert output("vector_norm_bucket", revision, le="0.999") == 0
    assert output("vector_norm_bucket", revision, le="1.001") == chunks
    assert output("degenerate_vectors_total", revision, kind="zero") == 0
    assert output("empty_documents_total", revision) == 0


async def test_a_revision_on_zero_vectors_completes_its_jobs_but_counts_them_degenerate(
    stack: Stack,
) -> None:
    doc = await add(stack.pool, "zeros")
    revision = fresh_revision()

    await drain(stack.pool, stack.pipeline(revision, openai_path="/_faults/zero/v1"))

    chunks = await stack.pool.fetchval("select count(*) from docpipe.chunks")
    status = await stack.pool.fetchval("select status from docpipe.documents where id = $1", doc)
    assert status == "processed"
    assert output("degenerate_vectors_total", revision, kind="zero") == chunks > 0
    assert output("vector_norm_bucket", revision, le="0.0") == chunks


async def test_vectors_with_nan_are_refused_counted_and_never_stored(stack: Stack) -> None:
    doc = await add(stack.pool, "nan")
    revision = fresh_revision()

    await drain(stack.pool, stack.pipeline(revision, openai_path="/_faults/nan/v1"))

    job = await stack.pool.fetchrow(
        "select status, attempts, last_error from docpipe.jobs where document_id = $1", doc
    )
    assert job is not None
    assert (job["status"], job["attempts"]) == ("dead", 2)
    assert "NaN or infinite" in job["last_error"]
    assert await stack.pool.fetchval("select count(*) from docpipe.chunks") == 0
    # Every vector of both attempts; none stored.
    assert output("degenerate_vectors_total", revision, kind="non_finite") > 0
    assert output("vectors_total", revision) == output("documents_total", revision) == 0


async def test_a_revision_on_a_truncating_parser_extracts_fewer_characters_per_byte(
    stack: Stack,
) -> None:
    await add(stack.pool, "whole")
    good = fresh_revision()
    await drain(stack.pool, stack.pipeline(good, parse_path=""))
    await stack.pool.execute("delete from docpipe.documents")
    await add(stack.pool, "whole")
    bad = fresh_revision()

    await drain(stack.pool, stack.pipeline(bad, parse_path="/_faults/truncate=0.3"))

    def chars_per_byte(revision: str) -> float:
        return output("extracted_chars_total", revision) / output("input_bytes_total", revision)

    assert output("documents_total", good) == output("documents_total", bad) == 1
    assert chars_per_byte(bad) == pytest.approx(0.3 * chars_per_byte(good), rel=0.05)
    assert output("chunks_total", bad) < output("chunks_total", good)


async def test_an_empty_parse_is_counted_as_an_empty_document(stack: Stack) -> None:
    doc = await add(stack.pool, "empty")
    revision = fresh_revision()

    await drain(stack.pool, stack.pipeline(revision, parse_path="/_faults/empty"))

    status = await stack.pool.fetchval("select status from docpipe.documents where id = $1", doc)
    assert status == "failed"
    assert output("empty_documents_total", revision) == 1
    assert output("documents_total", revision) == 0


async def test_a_document_stored_in_parts_records_provenance_and_counts_its_output(
    stack: Stack,
) -> None:
    doc = await add(stack.pool, "large")
    size = await stack.pool.fetchval("select size_bytes from docpipe.documents where id = $1", doc)
    revision = fresh_revision()
    # Just below the document's size: it is processed in parts of two chunks.
    pipeline = stack.pipeline(revision, parts=PartsConfig(threshold_bytes=size - 1, chunks=2))

    await drain(stack.pool, pipeline)

    rows = await stack.pool.fetch(
        "select revision, settings_digest, count(*) from docpipe.chunks group by 1, 2"
    )
    assert [(r["revision"], r["settings_digest"]) for r in rows] == [
        (revision, pipeline.settings_digest)
    ]
    chunks = rows[0]["count"]
    assert chunks > 2, "more than one part"
    assert output("documents_total", revision) == 1
    assert output("input_bytes_total", revision) == size
    assert output("chunks_total", revision) == output("vectors_total", revision) == chunks
