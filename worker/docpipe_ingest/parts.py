"""Large documents in parts: a document above a size threshold is parsed in parts (page ranges
of a PDF; other formats in one parse) and its chunks embedded and stored in parts, each part
kept in the database as soon as it is done (migration 0008). An attempt that resumes the job,
after a crash or a lost lease, starts from what is kept: no stored part is parsed, embedded or
stored again. The job's `progress` tells where it stands.

Such a document does not hold its slot (the worker's concurrency slot and the job's lease) for
its whole run: after a part is kept, once the attempt has held the slot for a slice
(`PartsConfig.slice_s`), the job goes back to the queue behind the jobs already ready, its
attempt given back, and the next claim, by any worker, resumes it from the kept parts."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pgvector import Vector

from docpipe_contracts.errors import LeaseLostError
from docpipe_ingest import metrics
from docpipe_ingest.chunking import Chunk, chunk_markdown
from docpipe_ingest.extraction import EmptyDocumentError
from docpipe_ingest.output_quality import DocumentOutput
from docpipe_providers import metrics as provider_metrics
from docpipe_providers import usage
from docpipe_queue import document_usage, queries
from docpipe_queue import jobs as queue
from docpipe_queue.jobs import ClaimedJob

if TYPE_CHECKING:
    from docpipe_ingest.pipeline import IngestPipeline, StoredDocument

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartsConfig:
    """Above `threshold_bytes` a document goes in parts: `pages` PDF pages per parse, `chunks`
    chunks per embed and store; after `slice_s` seconds holding its slot the job hands it back
    between parts (0: never)."""

    threshold_bytes: int = 2_097_152
    pages: int = 100
    chunks: int = 500
    slice_s: float = 20.0


def hand_back_due(held_s: float, slice_s: float, *, parts_left: int) -> bool:
    """Whether a job in parts, having just kept a part, gives its slot back now: it has held the
    slot for `slice_s` (> 0) or longer and has parts left (the last one completes it instead)."""
    return slice_s > 0 and parts_left > 0 and held_s >= slice_s


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
    pipeline: IngestPipeline,
    job: ClaimedJob,
    doc: StoredDocument,
    timer: Timer,
    *,
    started: float | None = None,
) -> int | None:
    """Process the document of `job` in parts and complete the job; return its chunk count, or
    None when the job handed its slot back between parts (queued again, its parts kept).
    `started`: when the job took its slot (`time.monotonic()`; default: now)."""
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
        slot = _Slot(pipeline, job, time.monotonic() if started is None else started, meter)
        with pipeline.counting_empty(job.pipeline):
            with timer.stage("parse"):
                texts = await _parse(pipeline, job, doc, progress, parsed, slot)
            if texts is None:
                return None
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
            measure = pipeline.check_vectors(job.pipeline, vectors, len(part))
            progress = {
                **progress,
                "phase": "store",
                "chunks": len(chunks),
                "chunks_stored": start + len(part),
            }
            with timer.stage("store"):
                async with _part_slot(pipeline), pipeline._store_slots:
                    await _store_part(pipeline, job, doc, part, vectors, start, progress)
            metrics.count_vectors(job.pipeline, pipeline.revision, measure)
            if await slot.hand_back(progress, left=len(chunks) - progress["chunks_stored"]):
                return None
        with timer.stage("store"):
            final = slot.held({**progress, "phase": "done"})
            await _complete(pipeline, job, doc, len(chunks), final, slot.total_usage(final))
    # This attempt's provider usage (the slices it handed back counted theirs); an interrupted
    # earlier attempt's is not counted.
    count_usage(job.pipeline, meter)
    metrics.count_document(
        job.pipeline, pipeline.revision, DocumentOutput(len(doc.content), len(text), len(chunks))
    )
    return len(chunks)


def count_usage(pipeline: str, meter: usage.Usage) -> None:
    """Provider usage into the usage counters, once the work it paid for is kept."""
    if meter.model is not None:
        provider_metrics.USAGE_TOKENS.labels(pipeline, meter.model).inc(meter.tokens)
    provider_metrics.USAGE_PAGES.labels(pipeline).inc(meter.pages)


class _Slot:
    """This attempt's hold on its slot: how long so far, and the hand-back once it has held it
    for a slice. The job's progress keeps `handed_back` (how many times), `longest_slot_s` and
    the provider `usage` of the slices handed back, which the completion adds to its own."""

    def __init__(
        self, pipeline: IngestPipeline, job: ClaimedJob, started: float, meter: usage.Usage
    ) -> None:
        self.pipeline = pipeline
        self.job = job
        self.started = started
        self.meter = meter

    def held(self, progress: dict[str, Any]) -> dict[str, Any]:
        """`progress` with this hold counted in `longest_slot_s`."""
        held_s = time.monotonic() - self.started
        longest = max(float(progress.get("longest_slot_s", 0.0)), held_s)
        return {**progress, "longest_slot_s": round(longest, 2)}

    def total_usage(self, progress: dict[str, Any]) -> usage.Usage:
        """This attempt's usage plus that of the slices handed back before it."""
        carried = progress.get("usage") or {}
        return usage.Usage(
            tokens=int(carried.get("tokens", 0)) + self.meter.tokens,
            pages=int(carried.get("pages", 0)) + self.meter.pages,
            requests=int(carried.get("requests", 0)) + self.meter.requests,
            model=self.meter.model or carried.get("model"),
        )

    async def hand_back(self, progress: dict[str, Any], *, left: int) -> bool:
        """After a part is kept: hand the slot back when it is due (`left`: the parts or chunks
        still to do); True when the job is queued again. Raises LeaseLostError when the job
        is no longer this attempt's (cancelled, deleted, rescued)."""
        held_s = time.monotonic() - self.started
        if not hand_back_due(held_s, self.pipeline.parts.slice_s, parts_left=left):
            return False
        total = self.total_usage(progress)
        handed = {
            **self.held(progress),
            "handed_back": int(progress.get("handed_back", 0)) + 1,
            "usage": {
                "tokens": total.tokens,
                "pages": total.pages,
                "requests": total.requests,
                "model": total.model,
            },
        }
        job = self.job
        if await queue.hand_back(self.pipeline.pool, job.lease, progress=handed):
            count_usage(job.pipeline, self.meter)
            log.info(
                "document handed back between parts",
                extra={
                    "job_id": job.id,
                    "document_id": str(job.document_id),
                    "held_s": round(held_s, 2),
                    **{k: v for k, v in handed.items() if k != "usage"},
                },
            )
            return True
        raise LeaseLostError(f"job {job.id} lost its lease before it could hand its slot back")


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
    slot: _Slot,
) -> list[str] | None:
    """The parsed text of each part (kept ones from `parsed`); None when the job handed its slot
    back after keeping one."""
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
        # What is left: the ranges after this one, and the chunks to store in any case.
        if await slot.hand_back(progress, left=len(ranges) - index):
            return None
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
        pipeline.revision,
        pipeline.settings_digest,
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
