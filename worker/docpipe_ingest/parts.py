"""Large documents in parts: a document above a size threshold is parsed in parts (page ranges
of a PDF; other formats in one parse) and its chunks embedded and stored in parts, each part
kept in the database as soon as it is done (migration 0008). An attempt that resumes the job,
after a crash or a lost lease, starts from what is kept: no stored part is parsed, embedded or
stored again. The job's `progress` tells where it stands."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pgvector import Vector

from docpipe_contracts.errors import LeaseLostError
from docpipe_ingest.chunking import Chunk, chunk_markdown
from docpipe_ingest.extraction import EmptyDocumentError
from docpipe_providers import metrics as provider_metrics
from docpipe_providers import usage
from docpipe_queue import document_usage, queries
from docpipe_queue.jobs import ClaimedJob

if TYPE_CHECKING:
    from docpipe_ingest.pipeline import IngestPipeline, StoredDocument

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartsConfig:
    """Above `threshold_bytes` a document goes in parts: `pages` PDF pages per parse, `chunks`
    chunks per embed and store."""

    threshold_bytes: int = 2_097_152
    pages: int = 100
    chunks: int = 500


@runtime_checkable
class PagedParser(Protocol):
    """A parser that can parse a PDF a page range at a time."""

    async def page_count(self, data: bytes, *, filename: str, content_type: str) -> int | None: ...

    async def parse_pages(self, data: bytes, *, filename: str, first: int, last: int) -> str: ...


@runtime_checkable
class Chunker(Protocol):
    """A parser that can also chunk a text away from the worker's process."""

    async def chunk(self, text: str, *, max_chars: int, overlap_chars: int) -> list[Chunk]: ...


class Timer(Protocol):
    def stage(self, name: str) -> AbstractContextManager[None]: ...


async def process_in_parts(
    pipeline: IngestPipeline, job: ClaimedJob, doc: StoredDocument, timer: Timer
) -> int:
    """Process the document of `job` in parts and complete the job; return its chunk count."""
    assert job.document_id is not None
    config = pipeline.parts
    progress: dict[str, Any] = await pipeline.pool.fetchval(queries.PROGRESS, job.id) or {}
    parsed = {r[0]: r[1] for r in await pipeline.pool.fetch(queries.PARSED_PARTS, job.id)}
    if progress:
        log.info(
            "resuming document in parts",
            extra={"job_id": job.id, "document_id": str(job.document_id), **progress},
        )
    with usage.metering() as meter:
        with timer.stage("parse"):
            texts = await _parse(pipeline, job, doc, progress, parsed)
        text = "\n\n".join(t for t in texts if t.strip())
        with timer.stage("chunk"):
            # Chunking megabytes of text takes a while: in a parse child when the parser has
            # them (at their lower priority), else off the event loop in a thread.
            sizes = {
                "max_chars": pipeline.chunking.max_chars,
                "overlap_chars": pipeline.chunking.overlap_chars,
            }
            if isinstance(pipeline.parser, Chunker):
                chunks = await pipeline.parser.chunk(text, **sizes)
            else:
                chunks = await asyncio.to_thread(chunk_markdown, text, **sizes)
        if not chunks:
            raise EmptyDocumentError(
                f"{doc.filename}: no text to index after parsing", filename=doc.filename
            )
        # Chunking is deterministic: the same text gives the same chunks, so the stored ones are
        # the first `chunks_stored` of these.
        done = progress.get("chunks_stored", 0) if progress.get("chunks") == len(chunks) else 0
        for start in range(done, len(chunks), config.chunks):
            part = chunks[start : start + config.chunks]
            with timer.stage("embed"):
                vectors = await pipeline.embedder.embed([c.text for c in part])
            pipeline._check_vectors(vectors, len(part))
            progress = {
                **progress,
                "phase": "store",
                "chunks": len(chunks),
                "chunks_stored": start + len(part),
            }
            with timer.stage("store"):
                async with _part_slot(pipeline), pipeline._store_slots:
                    await _store_part(pipeline, job, doc, part, vectors, start, progress)
        with timer.stage("store"):
            await _complete(pipeline, job, doc, len(chunks), {**progress, "phase": "done"}, meter)
    # This attempt's provider usage; an interrupted earlier attempt's is not counted.
    if meter.model is not None:
        provider_metrics.USAGE_TOKENS.labels(job.pipeline, meter.model).inc(meter.tokens)
    provider_metrics.USAGE_PAGES.labels(job.pipeline).inc(meter.pages)
    return len(chunks)


# One large document's part at a time per worker goes to the store: a part is hundreds of HNSW
# inserts, and the other store slots stay free for the small documents, which a whale (or a
# huge hostile document that parses) must not hold up.
_part_slots: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _part_slot(pipeline: IngestPipeline) -> asyncio.Semaphore:
    slot = _part_slots.get(pipeline)
    if slot is None:
        slot = _part_slots[pipeline] = asyncio.Semaphore(1)
    return slot


async def _parse(
    pipeline: IngestPipeline,
    job: ClaimedJob,
    doc: StoredDocument,
    progress: dict[str, Any],
    parsed: dict[int, str],
) -> list[str]:
    parser = pipeline.parser
    pages: int | None = progress.get("pages")
    if pages is None and isinstance(parser, PagedParser):
        pages = await parser.page_count(
            doc.content, filename=doc.filename, content_type=doc.content_type
        )
    step = pipeline.parts.pages
    ranges: list[tuple[int, int] | None] = (
        [None] if pages is None else [(a, min(a + step, pages)) for a in range(0, pages, step)]
    ) or [None]
    texts: list[str] = []
    for index, pages_range in enumerate(ranges):
        if index in parsed:
            texts.append(parsed[index])
            continue
        if pages_range is None or not isinstance(parser, PagedParser):
            text = await parser.parse(
                doc.content, filename=doc.filename, content_type=doc.content_type
            )
        else:
            text = await parser.parse_pages(
                doc.content, filename=doc.filename, first=pages_range[0], last=pages_range[1]
            )
        progress.update(
            {"phase": "parse", "parts": len(ranges), "parts_parsed": index + 1, "pages": pages}
        )
        saved = await pipeline.pool.fetchval(
            queries.SAVE_PARSED_PART, job.id, job.lease.token, index, text, progress
        )
        if saved is None:
            raise LeaseLostError(f"job {job.id} lost its lease while parsing part {index}")
        texts.append(text)
    return texts


async def _store_part(
    pipeline: IngestPipeline,
    job: ClaimedJob,
    doc: StoredDocument,
    chunks: Sequence[Chunk],
    vectors: Sequence[Sequence[float]],
    first: int,
    progress: dict[str, Any],
) -> None:
    stored = await pipeline.pool.fetchval(
        queries.STORE_PART,
        job.id,
        job.lease.token,
        job.document_id,
        job.pipeline,
        doc.owner,
        first,
        [c.ordinal for c in chunks],
        [c.text for c in chunks],
        [c.heading for c in chunks],
        [c.char_start for c in chunks],
        [c.char_end for c in chunks],
        [Vector(list(v)) for v in vectors],
        progress,
    )
    if stored is None:
        raise LeaseLostError(f"job {job.id} lost its lease before chunks {first}+ were stored")


async def _complete(
    pipeline: IngestPipeline,
    job: ClaimedJob,
    doc: StoredDocument,
    total: int,
    progress: dict[str, Any],
    meter: usage.Usage,
) -> None:
    assert job.document_id is not None
    async with pipeline.pool.acquire() as conn, conn.transaction():
        completed = await conn.fetchval(
            queries.COMPLETE_PARTS, job.id, job.lease.token, job.document_id, total, progress
        )
        if completed is not None:
            await document_usage.record(
                conn,
                job.document_id,
                pipeline=job.pipeline,
                owner=doc.owner,
                usage=document_usage.DocumentUsage(
                    meter.tokens, meter.pages, meter.requests, meter.model
                ),
            )
    if completed is None:
        raise LeaseLostError(f"job {job.id} lost its lease before it completed")
