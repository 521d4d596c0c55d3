"""The ingest pipeline under hostile and large documents, with a real consumer, Postgres and
the mock embeddings service: hostile documents fail permanently at their first attempt with
their real cause, heartbeats keep every lease through CPU-heavy parses, and a large document is
processed in parts that a later attempt resumes without redoing them."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import aiohttp
import asyncpg
import pytest

from docpipe_contracts.errors import TransientError
from docpipe_ingest.isolation import ParseLimits, ParsePool
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.parts import PartsConfig
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline
from docpipe_providers import usage
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_queue import metrics as queue_metrics
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.documents import add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS
from docpipe_queue.retry import RetryPolicy
from tests.samples import markdown_bytes
from tests.support.hostile import corpus, pdf_pages, whale_html
from tests.support.ports import free_port


@pytest.fixture
async def embedder() -> AsyncIterator[OpenAIEmbedder]:
    # The mocks in a process of their own, as deployed: computing thousands of embeddings in this
    # process would block the consumer's event loop, which is what these tests watch.
    port = free_port()
    mocks = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", "mocks", "--port", str(port),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"{url}/_admin/stats") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the mocks did not start"
                await asyncio.sleep(0.1)
            yield OpenAIEmbedder(
                session,
                api_key="k",
                base_url=f"{url}/v1",
                dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
                request_timeout=10.0,
            )
    finally:
        mocks.kill()
        await mocks.wait()


@pytest.fixture
async def parser() -> AsyncIterator[LocalParser]:
    local = LocalParser(ParsePool(2, ParseLimits(cpu_s=10, wall_s=60, memory_mb=320)))
    await local.pool.start()
    try:
        yield local
    finally:
        await local.aclose()


def pipeline(
    pool: asyncpg.Pool, parser: LocalParser, embedder: object, parts: PartsConfig | None = None
) -> IngestPipeline:
    return IngestPipeline(
        pool,
        parser,
        embedder,  # type: ignore[arg-type]
        chunking=ChunkingConfig(max_chars=400, overlap_chars=50),
        dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
        revision="test",
        parts=parts,
    )


async def add(pool: asyncpg.Pool, filename: str, content_type: str, data: bytes) -> uuid.UUID:
    async with pool.acquire() as conn:
        added = await add_document(
            conn,
            pipeline="p",
            owner="o",
            filename=filename,
            content_type=content_type,
            data=data,
            max_attempts=3,
        )
    return added.document_id


async def run_until_finished(
    pool: asyncpg.Pool, handler: IngestPipeline, timeout_s: float, *, concurrency: int = 8
) -> None:
    consumer = Consumer(
        pool,
        handler,
        ConsumerConfig(
            pipeline="p",
            concurrency=concurrency,
            batch_size=concurrency,
            # Short: a parse that starved the heartbeats would lose its lease within seconds.
            lease_s=2.0,
            heartbeat_s=0.5,
            poll_interval_s=0.05,
            rescue_interval_s=0.3,
            retry_policy=RetryPolicy(base_s=0.05, cap_s=0.2),
        ),
    )
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while await pool.fetchval(
            "select count(*) from docpipe.jobs where status in ('queued', 'running')"
        ):
            assert time.monotonic() < deadline, "jobs still unfinished"
            await asyncio.sleep(0.05)
    finally:
        await consumer.drain(grace_s=2)
        await task


async def test_hostile_documents_fail_at_their_first_attempt_and_no_lease_lapses(
    pool: asyncpg.Pool, parser: LocalParser, embedder: OpenAIEmbedder
) -> None:
    documents = corpus(bomb_mb=360)
    for doc in documents:
        await add(pool, doc.filename, doc.content_type, doc.data)
    healthy = await add(pool, "tides.md", "text/markdown", markdown_bytes("Tides", ["Noon."]))
    started = time.monotonic()

    async def healthy_done() -> float:
        while (
            await pool.fetchval("select status from docpipe.documents where id = $1", healthy)
            != "processed"
        ):
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    watcher = asyncio.create_task(healthy_done())
    await run_until_finished(pool, pipeline(pool, parser, embedder), timeout_s=90)
    healthy_s = await watcher
    rows = await pool.fetch(
        "select d.filename, d.status, d.error, j.status as job, j.attempts, j.last_error"
        " from docpipe.documents d join docpipe.jobs j on j.document_id = d.id"
    )
    by_name = {r["filename"]: r for r in rows}
    assert healthy_s < 10, f"the healthy document waited {healthy_s:.1f} s behind hostile ones"
    for row in rows:
        # One attempt each: failures of the input are permanent, and no lease lapsed although
        # the parses kept both cores busy (a lapse would have started a second attempt).
        assert row["attempts"] == 1, f"{row['filename']}: {row['last_error']}"
        assert row["job"] in ("succeeded", "dead"), dict(row)
        assert "lease" not in (row["last_error"] or ""), dict(row)
    assert "nested too deeply" in by_name["nested.html"]["last_error"]
    assert "memory limit of 320 MB" in by_name["bomb.docx"]["last_error"]
    assert "NUL bytes" in by_name["nul.txt"]["last_error"]
    assert by_name["thousands.pdf"]["job"] == "succeeded"
    assert by_name["one-line.txt"]["job"] == "succeeded"


class CountingParser(LocalParser):
    """The local parser, counting the parts it parses."""

    def __init__(self, pool: ParsePool) -> None:
        super().__init__(pool)
        self.pages: list[tuple[int, int]] = []
        self.whole = 0

    async def parse(self, data: bytes, *, filename: str, content_type: str) -> str:
        self.whole += 1
        return await super().parse(data, filename=filename, content_type=content_type)

    async def parse_pages(self, data: bytes, *, filename: str, first: int, last: int) -> str:
        self.pages.append((first, last))
        return await super().parse_pages(data, filename=filename, first=first, last=last)


class FailingOnce:
    """An embedder that fails once, on its `fail_on`-th call (a crash mid-document)."""

    def __init__(self, inner: OpenAIEmbedder, fail_on: int) -> None:
        self.inner = inner
        self.calls = 0
        self.fail_on = fail_on

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise TransientError("the embeddings service went away")
        return await self.inner.embed(texts)


async def test_a_large_pdf_resumes_from_its_kept_parts_after_a_failed_attempt(
    pool: asyncpg.Pool, parser: LocalParser, embedder: OpenAIEmbedder
) -> None:
    data = pdf_pages(250, "Tide tables for the harbour, page after page, all year long. " * 5)
    doc_id = await add(pool, "almanac.pdf", "application/pdf", data)
    counting = CountingParser(parser.pool)
    flaky = FailingOnce(embedder, fail_on=3)
    parts = PartsConfig(threshold_bytes=1024, pages=100, chunks=40)
    handler = pipeline(pool, counting, flaky, parts)
    first_ids: dict[int, int] = {}

    async def watch_first_parts() -> None:
        while not first_ids:
            rows = await pool.fetch(
                "select ordinal, id from docpipe.chunks where document_id = $1", doc_id
            )
            if len(rows) >= 80:
                first_ids.update({r[0]: r[1] for r in rows})
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_first_parts())
    await run_until_finished(pool, handler, timeout_s=60)
    watcher.cancel()
    job = await pool.fetchrow(
        "select status, attempts, progress from docpipe.jobs where document_id = $1", doc_id
    )
    doc = await pool.fetchrow(
        "select status, chunk_count from docpipe.documents where id = $1", doc_id
    )
    assert job is not None
    assert doc is not None
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert doc["status"] == "processed"
    chunks = await pool.fetch(
        "select ordinal, id from docpipe.chunks where document_id = $1 order by ordinal", doc_id
    )
    assert [r[0] for r in chunks] == list(range(doc["chunk_count"]))
    # Three page ranges, each parsed once; two parts of chunks stored by the first attempt,
    # kept as they were by the second.
    assert sorted(counting.pages) == [(0, 100), (100, 200), (200, 250)]
    assert counting.whole == 0
    assert len(first_ids) == 80
    assert {r[0]: r[1] for r in chunks if r[0] < 80} == first_ids
    progress = job["progress"]
    assert progress["phase"] == "done"
    assert progress["chunks_stored"] == progress["chunks"] == doc["chunk_count"]
    assert progress["parts"] == 3
    assert progress["pages"] == 250
    assert await pool.fetchval("select count(*) from docpipe.job_parts") == 0


async def test_a_large_html_document_is_stored_in_parts_with_its_progress_kept(
    pool: asyncpg.Pool, parser: LocalParser, embedder: OpenAIEmbedder
) -> None:
    doc_id = await add(pool, "whale.html", "text/html", whale_html(60))
    parts = PartsConfig(threshold_bytes=10_000, pages=100, chunks=25)
    await run_until_finished(pool, pipeline(pool, parser, embedder, parts), timeout_s=60)
    doc = await pool.fetchrow(
        "select status, chunk_count from docpipe.documents where id = $1", doc_id
    )
    progress = await pool.fetchval(
        "select progress from docpipe.jobs where document_id = $1", doc_id
    )
    assert doc is not None
    assert doc["status"] == "processed"
    assert doc["chunk_count"] > 25 * 3
    assert progress["parts"] == 1
    assert progress["pages"] is None
    assert progress["chunks_stored"] == doc["chunk_count"]
    count = await pool.fetchval(
        "select count(*) from docpipe.chunks where document_id = $1", doc_id
    )
    assert count == doc["chunk_count"]


class SlowWhaleEmbedder:
    """The mock embeddings service behind `delay_s` of latency per request (a provider's), and a
    count of what it embedded of the whale (its texts all say "harbour master") and the tokens
    billed for them."""

    def __init__(self, inner: OpenAIEmbedder, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.whale_texts = 0
        self.whale_tokens = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        await asyncio.sleep(self.delay_s)
        meter = usage.current()
        before = meter.tokens if meter is not None else 0
        vectors = await self.inner.embed(texts)
        whale = sum("harbour master" in t for t in texts)
        if whale:
            assert whale == len(texts), "a whale's part is embedded on its own"
            self.whale_texts += whale
            self.whale_tokens += (meter.tokens if meter is not None else 0) - before
        return vectors


async def test_a_whale_hands_its_slot_back_so_documents_queued_after_it_finish_first(
    pool: asyncpg.Pool, parser: LocalParser, embedder: OpenAIEmbedder
) -> None:
    # One worker with one slot: the whale (360 chunks, 9 parts of 40) is claimed first, the small
    # documents are queued behind it. Held whole, it would keep the slot to the end.
    whale_id = await add(pool, "whale.html", "text/html", whale_html(60))
    small_ids = [
        await add(pool, f"tide-{i}.md", "text/markdown", markdown_bytes(f"Tide {i}", ["Noon."]))
        for i in range(4)
    ]
    slow = SlowWhaleEmbedder(embedder, delay_s=0.1)
    parts = PartsConfig(threshold_bytes=10_000, pages=100, chunks=40, slice_s=0.3)
    lost_before = queue_metrics.JOBS_LEASE_LOST.labels("p", "dev")._value.get()
    await run_until_finished(pool, pipeline(pool, parser, slow, parts), 90, concurrency=1)
    done = {
        r["id"]: r
        for r in await pool.fetch(
            "select id, status, chunk_count, processed_at from docpipe.documents"
        )
    }
    assert {d["status"] for d in done.values()} == {"processed"}
    whale_done = done[whale_id]["processed_at"]
    assert all(done[s]["processed_at"] < whale_done for s in small_ids), (
        "a small document waited for the whale to finish"
    )
    job = await pool.fetchrow(
        "select status, attempts, last_error, progress from docpipe.jobs where document_id = $1",
        whale_id,
    )
    assert job is not None
    assert (job["status"], job["attempts"], job["last_error"]) == ("succeeded", 1, None)
    progress = job["progress"]
    assert progress["handed_back"] >= 1
    assert progress["longest_slot_s"] >= parts.slice_s
    assert progress["chunks_stored"] == progress["chunks"] == done[whale_id]["chunk_count"] == 360
    # Every chunk stored exactly once: each embedded once, and the ordinals one each.
    assert slow.whale_texts == 360
    ordinals = await pool.fetch(
        "select ordinal from docpipe.chunks where document_id = $1 order by ordinal", whale_id
    )
    assert [r[0] for r in ordinals] == list(range(360))
    # The document's usage is that of every slice, not of the last one only.
    tokens = await pool.fetchval(
        "select embedding_tokens from docpipe.document_usage where document_id = $1", whale_id
    )
    assert tokens == slow.whale_tokens > 0
    assert queue_metrics.JOBS_LEASE_LOST.labels("p", "dev")._value.get() == lost_before
    assert await pool.fetchval("select count(*) from docpipe.job_parts") == 0
