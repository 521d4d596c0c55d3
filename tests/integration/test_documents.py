"""Adding documents beside a worker storing them: reprocessing takes its locks in the worker's
order (jobs, then the document), so the two never deadlock."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from pgvector import Vector

from docpipe_ingest.pipeline import STORE
from docpipe_queue import jobs as queue
from docpipe_queue.documents import AddedDocument, Connection, add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS

DATA = b"# Tides\n\nThe harbour floods twice a day.\n"


async def _add(conn: Connection, *, reprocess: bool) -> AddedDocument:
    return await add_document(
        conn,
        pipeline="p",
        owner="alice",
        filename="tides.md",
        content_type="text/markdown",
        data=DATA,
        reprocess=reprocess,
    )


async def _wait_until_blocked_on_a_lock(pool: asyncpg.Pool, pid: int) -> None:
    for _ in range(500):
        waiting = await pool.fetchval(
            "select wait_event_type = 'Lock' from pg_stat_activity where pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


@pytest.mark.timeout(30)
async def test_reprocessing_while_the_worker_stores_the_document_does_not_deadlock(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        first = await _add(conn, reprocess=False)
    (job,) = await queue.claim(pool, "p", 1, lease_s=60, worker="w")
    assert job.id == first.job_id

    worker = await pool.acquire()
    uploader = await pool.acquire()
    try:
        # The worker's store has taken its job's row (STORE's first step) when the upload asks
        # for reprocessing; the upload then waits for that job. Under the old order the upload
        # held the document's row by then, which the store needs next: a deadlock, which
        # Postgres broke by aborting one of the two.
        transaction = worker.transaction()
        await transaction.start()
        await worker.execute("select 1 from docpipe.jobs where id = $1 for update", job.id)
        upload = asyncio.create_task(_add(uploader, reprocess=True))
        await _wait_until_blocked_on_a_lock(pool, uploader.get_server_pid())
        stored = await worker.fetchval(
            STORE,
            job.id,
            job.lease.token,
            job.document_id,
            "p",
            "alice",
            [0],
            ["The harbour floods twice a day."],
            [None],
            [0],
            [31],
            [Vector([1.0] * DEFAULT_EMBEDDING_DIMENSIONS)],
            "rev-1",  # the revision and settings digest the chunks record
            "0123456789abcdef",
        )
        await transaction.commit()
        again = await asyncio.wait_for(upload, 10)
    finally:
        await pool.release(worker)
        await pool.release(uploader)

    assert stored == 1
    assert again.document_id == first.document_id
    assert again.job_id is not None
    assert again.job_id != job.id
    rows = await pool.fetch(
        "select id, status from docpipe.jobs where document_id = $1", first.document_id
    )
    jobs = {row["id"]: row["status"] for row in rows}
    # The store finished its job; the reprocessing queued a new one after it.
    assert jobs == {job.id: "succeeded", again.job_id: "queued"}
    document = await pool.fetchrow(
        "select status from docpipe.documents where id = $1", first.document_id
    )
    assert document is not None
    assert document["status"] == "pending"


@pytest.mark.timeout(30)
async def test_concurrent_reprocessing_leaves_one_active_job(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await _add(conn, reprocess=False)

    async def reprocess() -> int | None:
        async with pool.acquire() as conn:
            return (await _add(conn, reprocess=True)).job_id

    queued = await asyncio.gather(*(reprocess() for _ in range(8)))
    active = await pool.fetch(
        "select id from docpipe.jobs where document_id = $1 and status in ('queued', 'running')",
        first.document_id,
    )
    assert len(active) == 1
    assert active[0]["id"] in queued
