"""What the heartbeat reports when it cannot renew a lease: nothing for a job the worker itself
completed, and, for a lease lost on a live worker, the job's record says so (not a crash)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from docpipe_queue import jobs as queue
from docpipe_queue import metrics
from docpipe_queue.consumer import Consumer, Outcome
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import all_finished, config, running, wait_until


def lost_count(revision: str) -> float:
    value: float = metrics.JOBS_LEASE_LOST.labels("p", revision)._value.get()
    return value


async def test_a_job_its_handler_completed_is_not_reported_as_a_lost_lease(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    finished = asyncio.Event()

    async def completes_then_lingers(job: ClaimedJob) -> Outcome:
        # As the ingest pipeline does: the job completes in the handler's own statement, and the
        # handler still has work to do (logging, metrics) when the next heartbeat runs.
        assert await queue.complete(pool, [job.lease]) == {job.id}
        await asyncio.sleep(0.6)
        finished.set()
        return Outcome.COMPLETED

    caplog.set_level(logging.INFO, logger="docpipe_queue")
    cfg = config(heartbeat_s=0.1, revision="completed-first")
    async with running(Consumer(pool, completes_then_lingers, cfg)):
        await asyncio.wait_for(finished.wait(), 5)
        await wait_until(all_finished(pool), 5)
    assert not [r for r in caplog.records if "abandoning" in r.getMessage()]
    assert lost_count("completed-first") == 0
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["status"] == "succeeded"


async def test_a_lease_lost_on_a_live_worker_is_recorded_as_such(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=1)])
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def long(job: ClaimedJob) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    cfg = config(heartbeat_s=0.2, rescue_interval_s=60, revision="lost-live")
    async with running(Consumer(pool, long, cfg)):
        await asyncio.wait_for(started.wait(), 5)
        # The renewals stop reaching the database in time (an outage, an overloaded server): the
        # lease runs out and a rescuer takes the job while this worker is alive and well.
        await pool.execute(
            "update docpipe.jobs set lease_expires_at = now() - interval '1 second' where id = $1",
            job_id,
        )
        await queue.rescue_expired(pool)
        await asyncio.wait_for(stopped.wait(), 5)

        async def recorded() -> bool:
            error = await pool.fetchval("select last_error from docpipe.jobs where id = $1", job_id)
            return "live worker" in (error or "")

        await wait_until(recorded, 5)
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["status"] == "dead"
    assert "crashed or unreachable" not in row["last_error"]
    assert f"lease lost on live worker {cfg.worker_id}" in row["last_error"]
    assert lost_count("lost-live") == 1


async def test_a_job_row_locked_by_its_store_does_not_stall_the_other_leases(
    pool: asyncpg.Pool,
) -> None:
    storing, waiting = await queue.enqueue(pool, [NewJob(pipeline="p"), NewJob(pipeline="p")])
    locked = asyncio.Event()

    async def handler(job: ClaimedJob) -> Outcome:
        if job.id == storing:
            # As the ingest pipeline's store does: the job row locked while the chunks go in
            # (seconds for a large document), and the job completed in the same transaction.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("select 1 from docpipe.jobs where id = $1 for update", job.id)
                locked.set()
                await asyncio.sleep(3.0)
                assert await queue.complete(conn, [job.lease]) == {job.id}
            return Outcome.COMPLETED
        await locked.wait()
        await asyncio.sleep(3.0)
        return Outcome.ACK

    cfg = config(lease_s=1.0, heartbeat_s=0.25, rescue_interval_s=0.2, revision="locked-row")
    async with running(Consumer(pool, handler, cfg)):
        await wait_until(all_finished(pool), 15)
    rows = await pool.fetch("select id, status, attempts, last_error from docpipe.jobs")
    assert {r["id"]: (r["status"], r["attempts"]) for r in rows} == {
        storing: ("succeeded", 1),
        waiting: ("succeeded", 1),
    }, [dict(r) for r in rows]
    assert lost_count("locked-row") == 0
