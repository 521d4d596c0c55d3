"""Documents in Postgres: adding one together with its ingest job, idempotently."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_worker import queue
from docpipe_worker.queue import NewJob

Connection = asyncpg.Connection | PoolConnectionProxy


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
        created = row is not None
        if row is None:
            row = await conn.fetchrow(
                "select id, status from docpipe.documents"
                " where pipeline = $1 and owner = $2 and sha256 = $3 for update",
                pipeline,
                owner,
                digest,
            )
            assert row is not None  # the conflicting row exists and deletes take this lock too
            if not reprocess:
                return AddedDocument(row["id"], None, False, row["status"])
            # Any job still queued or running for it is superseded by the new one.
            await conn.execute(
                "update docpipe.jobs set status = 'cancelled', finished_at = now(),"
                " lease_token = null, lease_expires_at = null"
                " where document_id = $1 and status in ('queued', 'running')",
                row["id"],
            )
            await conn.execute(
                "update docpipe.documents set status = 'pending', error = null, updated_at = now()"
                " where id = $1",
                row["id"],
            )
        (job_id,) = await queue.enqueue(
            conn,
            [
                NewJob(
                    pipeline=pipeline,
                    document_id=row["id"],
                    correlation_id=correlation_id,
                    max_attempts=max_attempts,
                )
            ],
        )
        return AddedDocument(row["id"], job_id, created, "pending")
