"""The intake API's reads and writes of documents, jobs and chunks. Every statement is scoped to
the calling owner: another owner's rows are indistinguishable from rows that do not exist."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import asyncpg
from pgvector import Vector

from docpipe_api import metrics
from docpipe_queue import jobs as queue
from docpipe_queue.jobs import Executor

T = TypeVar("T")

DOCUMENT_COLUMNS = (
    "id, pipeline, filename, content_type, size_bytes, sha256, status, error, chunk_count,"
    " created_at, updated_at, processed_at"
)

GET_DOCUMENT = f"select {DOCUMENT_COLUMNS} from docpipe.documents where id = $1 and owner = $2"

# Newest first; the cursor is the last row's (created_at, id). The index documents_owner_listing
# is ordered (created_at desc, id), so the tie-break on id runs ascending to match it.
LIST_DOCUMENTS = f"""
select {DOCUMENT_COLUMNS} from docpipe.documents
where owner = $1 and pipeline = $2
  and ($3::timestamptz is null or created_at < $3 or (created_at = $3 and id > $4))
order by created_at desc, id
limit $5
"""

# Jobs are taken first, then the document: the same order as the worker's store, which locks
# its job and then writes the document's chunks, so the two cannot deadlock. Cancelling clears
# the lease, so a worker still processing the document drops its result. The delete cascades
# to the chunks and the jobs.
CANCEL_DOCUMENT_JOBS = """
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running')
  and exists (select 1 from docpipe.documents where id = $1 and owner = $2)
"""
DELETE_DOCUMENT = "delete from docpipe.documents where id = $1 and owner = $2 returning id"

JOB_COLUMNS = (
    "j.id, j.pipeline, j.kind, j.document_id, j.status, j.attempts, j.max_attempts, j.run_after,"
    " j.last_error, j.correlation_id, j.created_at, j.finished_at"
)
# A job belongs to the owner of its document; jobs without a document are nobody's here.
GET_JOB = f"""
select {JOB_COLUMNS} from docpipe.jobs j join docpipe.documents d on d.id = j.document_id
where j.id = $1 and d.owner = $2
"""

_HIT_COLUMNS = "c.id, c.document_id, c.ordinal, c.heading, c.char_start, c.char_end, c.content"
# Looked up per hit by primary key: a join let the planner hash the whole documents table for
# every search (a sequential scan of it), which grows with the documents, not with top_k.
_FILENAME = "(select d.filename from docpipe.documents d where d.id = hits.document_id)"

# Approximate: ordered by the HNSW index (`embedding <=> $1` exactly as the index's operator),
# filtered by owner after the index has produced its candidates (hnsw.ef_search of them).
SEARCH_APPROXIMATE = f"""
with hits as (
    select {_HIT_COLUMNS}, c.embedding <=> $1 as distance
    from docpipe.chunks c
    where c.pipeline = $2 and c.owner = $3
    order by c.embedding <=> $1
    limit $4
)
select hits.*, {_FILENAME} as filename from hits
order by hits.distance, hits.id
"""

# Exact: every candidate chunk's distance. The materialized CTE keeps the planner from ordering
# through the HNSW index, whose post-filtering could return fewer hits than exist.
SEARCH_EXACT = f"""
with candidates as materialized (
    select {_HIT_COLUMNS}, c.embedding <=> $1 as distance
    from docpipe.chunks c
    where c.pipeline = $2 and c.owner = $3
      and ($5::uuid[] is null or c.document_id = any($5))
)
select candidates.*, {_FILENAME.replace("hits.", "candidates.")} as filename
from candidates
order by candidates.distance, candidates.id
limit $4
"""


async def get_document(conn: Executor, document_id: uuid.UUID, owner: str) -> asyncpg.Record | None:
    """The owner's document, or None."""
    return await conn.fetchrow(GET_DOCUMENT, document_id, owner)


async def list_documents(
    conn: Executor,
    owner: str,
    pipeline: str,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """Up to `limit` of the owner's documents in `pipeline`, newest first, after the cursor."""
    created, last_id = after if after is not None else (None, None)
    return list(await conn.fetch(LIST_DOCUMENTS, owner, pipeline, created, last_id, limit))


async def delete_document(pool: asyncpg.Pool, document_id: uuid.UUID, owner: str) -> bool:
    """Delete the owner's document with its chunks and jobs; False when there is none."""

    async def attempt() -> bool:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(CANCEL_DOCUMENT_JOBS, document_id, owner)
            return await conn.fetchval(DELETE_DOCUMENT, document_id, owner) is not None

    return await retry_deadlocks(attempt)


async def get_job(conn: Executor, job_id: int, owner: str) -> asyncpg.Record | None:
    """The job, when it belongs to one of the owner's documents; else None."""
    return await conn.fetchrow(GET_JOB, job_id, owner)


async def retry_job(
    pool: asyncpg.Pool, job_id: int, owner: str
) -> tuple[asyncpg.Record | None, bool]:
    """Requeue the owner's dead or cancelled job: the job afterwards (None: not the owner's)
    and whether it was requeued (False: it was not dead or cancelled)."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(GET_JOB + " for update of j", job_id, owner) is None:
            return None, False
        retried = await queue.retry(conn, job_id)
        return await conn.fetchrow(GET_JOB, job_id, owner), retried


async def search_chunks(
    pool: asyncpg.Pool,
    vector: Sequence[float],
    *,
    pipeline: str,
    owner: str,
    top_k: int,
    document_ids: Sequence[uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """The owner's `top_k` chunks closest to `vector` (cosine), closest first."""
    embedding = Vector(list(vector))
    if document_ids is None:
        rows = await pool.fetch(SEARCH_APPROXIMATE, embedding, pipeline, owner, top_k)
        if len(rows) == top_k:
            return list(rows)
        # Fewer than asked: the owner has fewer chunks, or most of the index's candidates were
        # other owners'. The exact search tells which, and is cheap exactly when it is needed
        # (an owner with few chunks).
        metrics.API_SEARCH_EXACT.labels("too_few_hits").inc()
    else:
        metrics.API_SEARCH_EXACT.labels("document_filter").inc()
    return list(
        await pool.fetch(
            SEARCH_EXACT,
            embedding,
            pipeline,
            owner,
            top_k,
            list(document_ids) if document_ids is not None else None,
        )
    )


async def retry_deadlocks(action: Callable[[], Awaitable[T]], *, attempts: int = 3) -> T:
    """Run a transaction again when Postgres broke a deadlock by aborting it."""
    for attempt in range(attempts):
        try:
            return await action()
        except asyncpg.DeadlockDetectedError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")
