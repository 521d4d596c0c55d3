"""LISTEN/NOTIFY wake-ups against real Postgres: an idle consumer picks up a new job long before
its next poll."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import config, running


async def test_notify_wakes_an_idle_consumer_well_before_its_poll(pool: asyncpg.Pool) -> None:
    picked: asyncio.Queue[float] = asyncio.Queue()

    async def handler(job: ClaimedJob) -> None:
        picked.put_nowait(time.monotonic())

    async with running(Consumer(pool, handler, config(poll_interval_s=10.0))):
        await asyncio.sleep(0.5)  # let it find the queue empty and go to sleep
        latencies = []
        for _ in range(5):
            sent = time.monotonic()
            await queue.enqueue(pool, [NewJob(pipeline="p")])
            latencies.append(await asyncio.wait_for(picked.get(), 5) - sent)
            await asyncio.sleep(0.2)
    # The poll is 10 s away: every pick-up must come from the notification. One slow commit
    # on a loaded CI machine may take a few hundred ms, so the bound on the typical case is tight
    # and the bound on the worst is loose.
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies
    assert max(latencies) < 1.0, latencies
