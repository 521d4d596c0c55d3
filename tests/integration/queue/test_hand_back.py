"""Handing a job back between parts (queries.HAND_BACK, used by large documents in parts): the
job goes back behind the jobs already ready, its attempt, priority, owner and progress kept; a
cancel that got there first wins, one that comes later cancels it; the heartbeat and the rescue
treat the lease it gave up as given up, not lost."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer, Outcome
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import all_finished, config, running, wait_until
from tests.integration.queue.test_lease_outcomes import lost_count


async def test_a_job_handed_back_goes_behind_the_ready_jobs_with_its_attempt_and_progress(
    pool: asyncpg.Pool,
) -> None:
    (whale,) = await queue.enqueue(pool, [NewJob(pipeline="p", owner="o", priority=3)])
    (held,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    # Queued after the whale was claimed, at its priority, and one queued well before (a retry
    # whose backoff ended): both are ready, so both go first.
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    after = await queue.enqueue(
        pool,
        [
            NewJob(pipeline="p", owner="o", priority=3),
            NewJob(pipeline="p", owner="o", priority=3, run_after=earlier),
        ],
    )
    assert await queue.hand_back(pool, held.lease, progress={"chunks_stored": 500})
    row = await queue.get(pool, whale)
    assert row is not None
    assert (row["status"], row["attempts"], row["worker"]) == ("queued", 0, None)
    assert row["lease_expires_at"] is None
    assert row["run_after"] <= await pool.fetchval("select now()"), "no backoff"
    assert row["progress"] == {"chunks_stored": 500}
    claimed = await queue.claim(pool, "p", 3, lease_s=30, worker="w2")
    assert [j.id for j in claimed] == [after[1], after[0], whale]
    resumed = claimed[-1]
    assert (resumed.attempt, resumed.owner) == (1, "o"), "a hand-back is not an attempt"
    assert await pool.fetchval("select priority from docpipe.jobs where id = $1", whale) == 3


async def test_a_hand_back_wakes_the_waiting_workers(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p")])
    (held,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    heard: asyncio.Queue[str] = asyncio.Queue()

    def hear(*args: object) -> None:
        heard.put_nowait(str(args[3]))

    async with pool.acquire() as listener:
        await listener.add_listener("docpipe_jobs", hear)
        try:
            assert await queue.hand_back(pool, held.lease, progress={})
            assert await asyncio.wait_for(heard.get(), 5) == "p"
        finally:
            await listener.remove_listener("docpipe_jobs", hear)


async def test_a_hand_back_after_a_cancel_finds_its_lease_lost_and_the_job_stays_cancelled(
    pool: asyncpg.Pool,
) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (held,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert await queue.cancel(pool, job_id)
    assert not await queue.hand_back(pool, held.lease, progress={"chunks_stored": 1})
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["progress"]) == ("cancelled", None)


async def test_a_cancel_after_a_hand_back_cancels_the_queued_job(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (held,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert await queue.hand_back(pool, held.lease, progress={})
    assert await queue.cancel(pool, job_id)
    assert await queue.claim(pool, "p", 1, lease_s=30, worker="w") == []


async def test_a_hand_back_racing_a_cancel_ends_cancelled_whichever_goes_first(
    pool: asyncpg.Pool,
) -> None:
    for _ in range(20):
        (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
        (held,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
        handed, cancelled = await asyncio.gather(
            queue.hand_back(pool, held.lease, progress={}), queue.cancel(pool, job_id)
        )
        assert cancelled, "a cancel finds the job running or queued, never gone"
        assert await pool.fetchval("select status from docpipe.jobs where id = $1", job_id) == (
            "cancelled"
        ), f"handed back: {handed}"


async def test_a_handed_back_lease_is_neither_renewed_nor_rescued(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (held,) = await queue.claim(pool, "p", 1, lease_s=0.01, worker="w")
    assert await queue.hand_back(pool, held.lease, progress={})
    await asyncio.sleep(0.05)
    assert await queue.heartbeat(pool, [held.lease], lease_s=30) == set()
    assert (await queue.rescue_expired(pool)).total == 0
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("queued", 0, None)


async def test_a_consumer_frees_the_slot_of_a_handed_back_job_and_reports_no_lost_lease(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # One slot, a job handed back many times while heartbeats run every few milliseconds: each
    # hand-back frees the slot for the job queued behind it, and no heartbeat takes the lease the
    # job gave up for a lost one.
    first, second = await queue.enqueue(pool, [NewJob(pipeline="p"), NewJob(pipeline="p")])
    order: list[int] = []

    async def hands_back_ten_times(job: ClaimedJob) -> Outcome:
        order.append(job.id)
        if job.id == first and order.count(first) <= 10:
            await asyncio.sleep(0.02)
            assert await queue.hand_back(pool, job.lease, progress={"slices": order.count(first)})
            return Outcome.HANDED_BACK
        return Outcome.ACK

    caplog.set_level(logging.INFO, logger="docpipe_queue")
    cfg = config(concurrency=1, batch_size=1, heartbeat_s=0.005, revision="hand-back")
    async with running(Consumer(pool, hands_back_ten_times, cfg)):
        await wait_until(all_finished(pool), 10)
    # The job queued behind the first one ran at its first hand-back, not after its eleventh.
    assert order[:3] == [first, second, first]
    assert order.count(first) == 11
    assert not [r for r in caplog.records if "abandoning" in r.getMessage()]
    assert lost_count("hand-back") == 0
    row = await queue.get(pool, first)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("succeeded", 1, None)
    assert row["progress"] == {"slices": 10}
