"""Reprocessing the output of a worker revision: every document with a chunk a revision stored
goes back to the queue, so that the workers running now replace its chunks (their store replaces
a document's chunks whole). Run by `docpipe documents reprocess --revision` and by the operator
after it rolls a canary back (issue 18).

The operator imports this module: it may import only asyncpg and `docpipe_queue.queries`
(.importlinter, contract `operator-reads-contracts-and-statistics`)."""

from __future__ import annotations

import uuid

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue import queries

Connection = asyncpg.Connection | PoolConnectionProxy

# Below a new upload's jobs (priority 0): within one owner's jobs, claims take the higher
# priority first, so an owner's new documents are not held up behind the redoing of old ones.
# Owners still take turns (ADR 0006): one owner's reprocessing does not hold up another's uploads.
REPROCESS_PRIORITY = -1
REPROCESS_MAX_ATTEMPTS = 5
# Who the audit trail names as having reprocessed the documents, unless the caller says.
DEFAULT_SUBJECT = "system:reprocess-revision"
# Documents enqueued per transaction: each holds an advisory lock per document until it commits.
DEFAULT_BATCH = 500
_BEFORE_EVERY_ID = uuid.UUID(int=0)


async def reprocess_revision(
    conn: Connection,
    *,
    revision: str,
    pipeline: str | None = None,
    subject: str = DEFAULT_SUBJECT,
    batch_size: int = DEFAULT_BATCH,
) -> int:
    """Enqueue an ingest job, below new uploads' priority, for every document with a chunk of
    `revision` (in `pipeline`, or any), except those with a queued or running job; return how
    many. Each job is recorded in the audit trail as a `reprocess` by `subject`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # One id for the whole run: its jobs' log lines and provider requests, and its audit rows.
    correlation_id = f"reprocess-{uuid.uuid4().hex}"
    enqueued = 0
    after = _BEFORE_EVERY_ID
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                queries.REVISION_DOCUMENTS, revision, pipeline, after, batch_size
            )
            ids = [row[0] for row in rows]
            if not ids:
                return enqueued
            # The locks the intake API's reprocessing takes (docpipe_queue.documents), then the
            # check for active jobs in a statement of its own, whose snapshot sees the jobs that
            # the requests that held the locks before us enqueued.
            await conn.fetchval(
                queries.LOCK_DOCUMENTS_FOR_REPROCESSING, queries.REPROCESSING_LOCK_CLASS, ids
            )
            batch: int = await conn.fetchval(
                queries.REPROCESS_DOCUMENTS,
                ids,
                REPROCESS_PRIORITY,
                REPROCESS_MAX_ATTEMPTS,
                correlation_id,
                subject,
            )
            enqueued += batch
        if len(ids) < batch_size:
            return enqueued
        after = ids[-1]
