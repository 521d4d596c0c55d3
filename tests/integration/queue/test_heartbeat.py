"""Lease heartbeats against real Postgres: a renewed lease outlives the rescuer, and a lease
the heartbeat finds gone (the job was cancelled) stops its handler."""

from __future__ import annotations

import asyncio

import asyncpg

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import all_finished, config, running, wait_until


async def test_heartbeat_keeps_a_long_job_from_being_rescued(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    starts: list[int] = []

    async def slow(job: ClaimedJob) -> None:
        starts.append(job.attempt)
        await asyncio.sleep(2.0)

    cfg = config(lease_s=0.6, heartbeat_s=0.15, rescue_interval_s=0.1)
    async with running(Consumer(pool, slow, cfg)):
        await wait_until(all_finished(pool), timeout_s=10)
    assert starts == [1]
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("succeeded", 1)


async def test_cancelling_a_running_job_stops_its_handler(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def long(job: ClaimedJob) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    async with running(Consumer(pool, long, config(heartbeat_s=0.1))):
        await asyncio.wait_for(started.wait(), 5)
        assert await queue.cancel(pool, job_id)
        await asyncio.wait_for(stopped.wait(), 2)
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["status"] == "cancelled"
