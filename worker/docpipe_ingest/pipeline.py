"""The ingest pipeline, one job at a time: load the document, parse it to markdown, chunk,
embed, and store the chunks, each stage timed. The store and the job's completion share one
transaction, so a document's chunks change only under a lease the worker still holds."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from pgvector import Vector

from docpipe_contracts import correlation, tracing
from docpipe_contracts.errors import LeaseLostError, PermanentError, TransientError
from docpipe_ingest import metrics
from docpipe_ingest.chunking import Chunk, chunk_markdown
from docpipe_ingest.extraction import EmptyDocumentError
from docpipe_ingest.output_quality import DocumentOutput, VectorMeasure, measure_vectors
from docpipe_ingest.parts import PartsConfig, count_usage, process_in_parts
from docpipe_providers import usage
from docpipe_providers.embeddings import Embedder
from docpipe_providers.llamaparse import EmptyParseError
from docpipe_providers.object_storage import ObjectStore
from docpipe_queue import document_usage, queries
from docpipe_queue.consumer import Outcome
from docpipe_queue.jobs import ClaimedJob
from docpipe_queue.migrator import embedding_column_dimensions

log = logging.getLogger(__name__)


class Parser(Protocol):
    async def parse(self, data: bytes, *, filename: str, content_type: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_chars: int = 1500
    overlap_chars: int = 200


@dataclass(frozen=True, slots=True)
class StoredDocument:
    filename: str
    content_type: str
    content: bytes
    owner: str


class DimensionMismatchError(PermanentError):
    """The embedder returns vectors the database column cannot hold."""


class NonFiniteVectorError(TransientError):
    """The embedder returned a vector with a NaN or infinite component (pgvector refuses it)."""


class IngestPipeline:
    """The job handler of `docpipe worker` for jobs of kind 'ingest'."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        parser: Parser,
        embedder: Embedder,
        *,
        chunking: ChunkingConfig,
        dimensions: int,
        revision: str,
        settings_digest: str | None = None,
        store_concurrency: int = 8,
        originals: ObjectStore | None = None,
        parts: PartsConfig | None = None,
    ) -> None:
        self.pool = pool
        self.parser = parser
        self.embedder = embedder
        self.chunking = chunking
        self.dimensions = dimensions
        self.revision = revision
        # Stored with each chunk beside the revision (docpipe_ingest.provenance); None: unknown.
        self.settings_digest = settings_digest
        # pgvector's HNSW inserts wait on each other's graph pages more than on the CPU: up to
        # about eight writers store faster than fewer, and than one session copying every job's
        # chunks (ADR 0007); a bound still keeps a burst of jobs from taking every connection.
        self._store_slots = asyncio.Semaphore(store_concurrency)
        # Where originals uploaded with DOCPIPE_ORIGINALS_STORE=s3 are (content_key set).
        self.originals = originals
        # Documents above its threshold go in parts whose progress is kept (docpipe_ingest.parts).
        self.parts = parts or PartsConfig()

    async def check_dimensions(self) -> None:
        """Refuse to start when the configured dimension does not fit the database column."""
        column = await embedding_column_dimensions(self.pool)
        if column != self.dimensions:
            raise DimensionMismatchError(
                f"DOCPIPE_EMBEDDING_DIMENSIONS is {self.dimensions} but the database column "
                f"docpipe.chunks.embedding holds vector({column}); set it to {column} (OpenAI's "
                "text-embedding-3 models accept `dimensions`)"
            )

    async def __call__(self, job: ClaimedJob) -> Outcome:
        # The job's span continues the trace of the request that queued it (the traceparent
        # stored with the job): the stages, the provider calls and the job's log lines are in it.
        with tracing.span(
            "ingest job",
            kind="consumer",
            parent=tracing.context_from_traceparent(job.trace_context),
            attributes={
                "messaging.system": "docpipe",
                "messaging.operation.type": "process",
                "messaging.destination.name": job.pipeline,
                "messaging.message.id": str(job.id),
                "docpipe.job.id": job.id,
                "docpipe.job.attempt": job.attempt,
                "docpipe.document.id": str(job.document_id),
                "docpipe.revision": self.revision,
            },
        ):
            return await self._process(job)

    async def _process(self, job: ClaimedJob) -> Outcome:
        if job.document_id is None:
            raise PermanentError(f"job {job.id} of kind {job.kind!r} names no document")
        # Each job runs in its own task, so this reaches the job's log lines and its outbound
        # requests (parser, embedder) and nothing else.
        correlation.CURRENT.set(job.correlation_id)
        timer = _StageTimer(job.pipeline, self.revision)
        started = time.monotonic()
        with timer.stage("load"):
            doc = await self._load(job.document_id)
        if len(doc.content) > self.parts.threshold_bytes:
            chunk_count = await process_in_parts(self, job, doc, timer, started=started)
            if chunk_count is None:
                return Outcome.HANDED_BACK
            log.info(
                "document processed",
                extra={
                    "job_id": job.id,
                    "document_id": str(job.document_id),
                    "correlation_id": job.correlation_id,
                    "chunks": chunk_count,
                    "parts": True,
                    "stages_ms": timer.millis(),
                },
            )
            return Outcome.COMPLETED
        # What the providers report for this job's parse and embed requests (cost accounting).
        with usage.metering() as meter, self.counting_empty(job.pipeline):
            with timer.stage("parse"):
                text = await self.parser.parse(
                    doc.content, filename=doc.filename, content_type=doc.content_type
                )
            with timer.stage("chunk"):
                chunks = chunk_markdown(
                    text,
                    max_chars=self.chunking.max_chars,
                    overlap_chars=self.chunking.overlap_chars,
                )
            if not chunks:
                raise EmptyDocumentError(
                    f"{doc.filename}: no text to index after parsing", filename=doc.filename
                )
            with timer.stage("embed"):
                vectors = await self.embedder.embed([c.text for c in chunks])
        measure = self.check_vectors(job.pipeline, vectors, len(chunks))
        with timer.stage("store"):
            async with self._store_slots:
                await self._store(job, doc, chunks, vectors, meter)
        count_usage(job.pipeline, meter)
        metrics.count_vectors(job.pipeline, self.revision, measure)
        metrics.count_document(
            job.pipeline, self.revision, DocumentOutput(len(doc.content), len(text), len(chunks))
        )
        log.info(
            "document processed",
            extra={
                "job_id": job.id,
                "document_id": str(job.document_id),
                "correlation_id": job.correlation_id,
                "chunks": len(chunks),
                "stages_ms": timer.millis(),
                "usage": {"tokens": meter.tokens, "pages": meter.pages, "model": meter.model},
            },
        )
        return Outcome.COMPLETED

    async def _load(self, document_id: uuid.UUID) -> StoredDocument:
        row = await self.pool.fetchrow(
            "update docpipe.documents set status = 'processing', updated_at = now()"
            " where id = $1 returning filename, content_type, content, owner, content_key",
            document_id,
        )
        if row is None:
            raise PermanentError(f"document {document_id} no longer exists (deleted?)")
        content = row[2]
        if content is None:
            content = await self._load_original(document_id, row[4])
        return StoredDocument(row[0], row[1], content, row[3])

    async def _load_original(self, document_id: uuid.UUID, key: str) -> bytes:
        """The original of a document kept in object storage (the database has its key)."""
        if self.originals is None:
            raise PermanentError(
                f"document {document_id} is kept in object storage ({key}) but this worker has "
                "none configured: set DOCPIPE_ORIGINALS_STORE=s3 and its DOCPIPE_S3_* variables"
            )
        return await self.originals.get(key)

    @contextmanager
    def counting_empty(self, pipeline: str) -> Iterator[None]:
        """Count a document found empty (by the parser, or with no chunk) in the output metrics."""
        try:
            yield
        except (EmptyDocumentError, EmptyParseError):
            metrics.count_empty_document(pipeline, self.revision)
            raise

    def check_vectors(
        self, pipeline: str, vectors: Sequence[Sequence[float]], expected: int
    ) -> VectorMeasure:
        """Refuse vectors the store cannot hold (count, dimensions, non-finite components);
        measure those it can for the output metrics."""
        self._check_vectors(vectors, expected)
        measure = measure_vectors(vectors)
        if measure.non_finite:
            metrics.count_refused_vectors(pipeline, self.revision, measure)
            raise NonFiniteVectorError(
                f"embedding service returned {measure.non_finite} of {measure.count} vectors "
                "with NaN or infinite components; the database cannot store them"
            )
        return measure

    def _check_vectors(self, vectors: Sequence[Sequence[float]], expected: int) -> None:
        if len(vectors) != expected:
            raise TransientError(
                f"embedding service returned {len(vectors)} vectors for {expected} inputs"
            )
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise DimensionMismatchError(
                    f"embedding service returned {len(vector)} dimensions, the database column "
                    f"holds {self.dimensions}; check DOCPIPE_EMBEDDING_MODEL and "
                    "DOCPIPE_EMBEDDING_DIMENSIONS"
                )

    async def _store(
        self,
        job: ClaimedJob,
        doc: StoredDocument,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        meter: usage.Usage,
    ) -> None:
        # One statement, atomic by itself: see queries.STORE_AND_COMPLETE. The document's usage
        # goes in the same transaction, only when the store held the lease.
        assert job.document_id is not None
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(
                STORE,
                job.id,
                job.lease.token,
                job.document_id,
                job.pipeline,
                doc.owner,
                [c.ordinal for c in chunks],
                [c.text for c in chunks],
                [c.heading for c in chunks],
                [c.char_start for c in chunks],
                [c.char_end for c in chunks],
                [Vector(list(v)) for v in vectors],
                self.revision,
                self.settings_digest,
            )
            if stored is not None:
                await document_usage.record(
                    conn,
                    job.document_id,
                    pipeline=job.pipeline,
                    owner=doc.owner,
                    usage=document_usage.DocumentUsage(
                        meter.tokens, meter.pages, meter.requests, meter.model
                    ),
                )
        if stored is None:
            raise LeaseLostError(f"job {job.id} lost its lease before its chunks were stored")


# The statement lives with the queue's other statements that change a job (it completes the job).
STORE = queries.STORE_AND_COMPLETE


class _StageTimer:
    def __init__(self, pipeline: str, revision: str) -> None:
        self._labels = (pipeline, revision)
        self._times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with tracing.span(f"stage {name}", attributes={"docpipe.stage": name}):
                yield
        finally:
            elapsed = time.perf_counter() - start
            self._times[name] = elapsed
            metrics.STAGE_SECONDS.labels(*self._labels, name).observe(elapsed)

    def millis(self) -> dict[str, float]:
        return {k: round(v * 1000, 2) for k, v in self._times.items()}
