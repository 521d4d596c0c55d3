"""Documents in Postgres: adding one together with its ingest job, idempotently."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue import jobs as queue
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
) -> AddedDocument:
    """Store a document and enqueue its ingest job in one transaction.

    The same content from the same owner in the same pipeline is the same document: it is
    returned as it is, unless `reprocess` asks for its job to run again.
    """
    digest = hashlib.sha256(data).hexdigest()
    async with conn.transaction():
        # A concurrent delete can remove the conflicting row between the insert and the reads
        # after it; the insert is then tried again and, with the row gone, inserts.
        for _ in range(_ATTEMPTS):
            row = await conn.fetchrow(
                "insert into docpipe.documents"
                " (pipeline, owner, filename, content_type, size_bytes, sha256, content)"
                " values ($1, $2, $3, $4, $5, $6, $7)"
                " on conflict (pipeline, owner, sha256) do nothing"
                " returning id, status",
                pipeline,
                owner,
                filename,
                content_type,
                len(data),
                digest,
                data,
            )
            if row is not None:
                return await _enqueue(conn, row["id"], True, pipeline, correlation_id, max_attempts)
            row = await conn.fetchrow(
                "select id, status from docpipe.documents"
                " where pipeline = $1 and owner = $2 and sha256 = $3",
                pipeline,
                owner,
                digest,
            )
            if row is None:
                continue
            if not reprocess:
                return AddedDocument(row["id"], None, False, row["status"])
            if await _requeue(conn, row["id"]):
                return await _enqueue(
                    conn, row["id"], False, pipeline, correlation_id, max_attempts
                )
        raise RuntimeError(f"document {digest} kept disappearing while it was added")


# Locks are taken jobs first, then the document: the order of the worker's store (its job, then
# the document's chunks and row), of the job triggers and of deleting a document. Reprocessing
# the other way round (document, then jobs) deadlocked with a worker storing the same document.
_CANCEL_ACTIVE_JOBS = """
update docpipe.jobs set status = 'cancelled', finished_at = now(),
    lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running')
"""
_MARK_PENDING = """
update docpipe.documents set status = 'pending', error = null, updated_at = now()
where id = $1 returning id
"""
# Reprocessing requests for one document queue behind each other here, so each one cancels the
# job the one before it queued: at most one job of a document stays active. An advisory lock,
# not a row lock, so that it is taken before the job rows without taking the document's row.
_SERIALIZE_REPROCESSING = "select pg_advisory_xact_lock($1, hashtext($2::uuid::text))"
_REPROCESSING_LOCK_CLASS = 0x6470  # "dp": docpipe's advisory locks on a document


async def _requeue(conn: Connection, document_id: uuid.UUID) -> bool:
    """Supersede the document's active jobs and mark it pending; False when it is gone."""
    await conn.execute(_SERIALIZE_REPROCESSING, _REPROCESSING_LOCK_CLASS, document_id)
    await conn.execute(_CANCEL_ACTIVE_JOBS, document_id)
    return await conn.fetchval(_MARK_PENDING, document_id) is not None


async def _enqueue(
    conn: Connection,
    document_id: uuid.UUID,
    created: bool,
    pipeline: str,
    correlation_id: str | None,
    max_attempts: int,
) -> AddedDocument:
    (job_id,) = await queue.enqueue(
        conn,
        [
            NewJob(
                pipeline=pipeline,
                document_id=document_id,
                correlation_id=correlation_id,
                max_attempts=max_attempts,
            )
        ],
    )
    return AddedDocument(document_id, job_id, created, "pending")
