"""Documents in Postgres: adding one together with its ingest job, idempotently."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue import jobs as queue
from docpipe_queue import original_deletions, queries
from docpipe_queue.jobs import NewJob

Connection = asyncpg.Connection | PoolConnectionProxy


_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class AddedDocument:
    document_id: uuid.UUID
    # None when the same content was already there and no reprocessing was asked for.
    job_id: int | None
    created: bool
    status: str
    # The original's object may have been deleted after the caller put it (a deletion of the
    # same key was purged meanwhile): put it again before the transaction commits.
    put_original_again: bool = False


async def add_document(
    conn: Connection,
    *,
    pipeline: str,
    owner: str,
    filename: str,
    content_type: str,
    data: bytes,
    correlation_id: str | None = None,
    reprocess: bool = False,
    max_attempts: int = 5,
    tags: Sequence[str] | None = None,
    source_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    content_key: str | None = None,
    trace_context: str | None = None,
) -> AddedDocument:
    """Store a document and enqueue its ingest job in one transaction.

    The same content from the same owner in the same pipeline is the same document: it is
    returned as it is, unless `reprocess` asks for its job to run again. Tags, source URL and
    metadata given (not None) are stored, replacing those of a document already there.
    With `content_key` (the original is in object storage under that key) the bytes are not
    stored here: only their size, hash and the key, and a deletion of the key still asked for
    (docpipe_queue.original_deletions) is cancelled. `trace_context` (a W3C traceparent) goes
    with the job, for the worker to continue the caller's trace.
    """
    digest = hashlib.sha256(data).hexdigest()
    async with conn.transaction():
        # A concurrent delete can remove the conflicting row between the insert and the reads
        # after it; the insert is then tried again and, with the row gone, inserts.
        for _ in range(_ATTEMPTS):
            row = await conn.fetchrow(
                "insert into docpipe.documents"
                " (pipeline, owner, filename, content_type, size_bytes, sha256, content,"
                " tags, source_url, metadata, content_key)"
                " values ($1, $2, $3, $4, $5, $6, $7, coalesce($8, '{}'::text[]), $9,"
                " coalesce($10, '{}'::jsonb), $11)"
                " on conflict (pipeline, owner, sha256) do nothing"
                " returning id, status",
                pipeline,
                owner,
                filename,
                content_type,
                len(data),
                digest,
                data if content_key is None else None,
                list(tags) if tags is not None else None,
                source_url,
                metadata,
                content_key,
            )
            if row is not None:
                added = await _enqueue(
                    conn, row["id"], True, pipeline, owner, correlation_id, max_attempts,
                    trace_context,
                )  # fmt: skip
                if content_key is None:
                    return added
                # After the insert: a purge that locked the key's request before it (and could
                # not see this uncommitted document) is waited for, and its outcome seen.
                cancelled = await original_deletions.cancel_deletion(conn, content_key)
                return replace(
                    added, put_original_again=original_deletions.must_put_again(cancelled)
                )
            row = await conn.fetchrow(
                "select id, status from docpipe.documents"
                " where pipeline = $1 and owner = $2 and sha256 = $3",
                pipeline,
                owner,
                digest,
            )
            if row is None:
                continue
            if tags is not None or source_url is not None or metadata is not None:
                await conn.execute(
                    _UPDATE_METADATA,
                    row["id"],
                    list(tags) if tags is not None else None,
                    source_url,
                    metadata,
                )
            if not reprocess:
                return AddedDocument(row["id"], None, False, row["status"])
            if await _requeue(conn, row["id"]):
                return await _enqueue(
                    conn, row["id"], False, pipeline, owner, correlation_id, max_attempts,
                    trace_context,
                )  # fmt: skip
        raise RuntimeError(f"document {digest} kept disappearing while it was added")


_UPDATE_METADATA = """
update docpipe.documents
set tags = coalesce($2, tags), source_url = coalesce($3, source_url),
    metadata = coalesce($4, metadata), updated_at = now()
where id = $1
"""
_MARK_PENDING = """
update docpipe.documents set status = 'pending', error = null, updated_at = now()
where id = $1 returning id
"""
# Reprocessing requests for one document queue behind each other here, so each one cancels the
# job the one before it queued: at most one job of a document stays active. An advisory lock,
# not a row lock, so that it is taken before the job rows without taking the document's row.
_SERIALIZE_REPROCESSING = "select pg_advisory_xact_lock($1, hashtext($2::uuid::text))"
_REPROCESSING_LOCK_CLASS = queries.REPROCESSING_LOCK_CLASS  # also a revision's reprocessing


async def _requeue(conn: Connection, document_id: uuid.UUID) -> bool:
    """Supersede the document's active jobs and mark it pending; False when it is gone."""
    await conn.execute(_SERIALIZE_REPROCESSING, _REPROCESSING_LOCK_CLASS, document_id)
    # Jobs first, then the document: see queries.CANCEL_DOCUMENT_JOBS.
    await conn.execute(queries.CANCEL_DOCUMENT_JOBS, document_id)
    return await conn.fetchval(_MARK_PENDING, document_id) is not None


async def _enqueue(
    conn: Connection,
    document_id: uuid.UUID,
    created: bool,
    pipeline: str,
    owner: str,
    correlation_id: str | None,
    max_attempts: int,
    trace_context: str | None = None,
) -> AddedDocument:
    (job_id,) = await queue.enqueue(
        conn,
        [
            NewJob(
                pipeline=pipeline,
                document_id=document_id,
                owner=owner,
                correlation_id=correlation_id,
                max_attempts=max_attempts,
                trace_context=trace_context,
            )
        ],
    )
    return AddedDocument(document_id, job_id, created, "pending")
