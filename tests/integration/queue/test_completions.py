"""Batched completions against real Postgres: a batch being written when the consumer stops
still lands."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import pytest

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import config


async def test_stopping_while_completions_are_in_flight_loses_none(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack loop may be mid-statement when the consumer stops: that batch must still land."""
    await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(5)])
    real_complete = queue.complete
    completing = asyncio.Event()

    async def slow_complete(executor: queue.Executor, leases: Iterable[queue.Lease]) -> set[int]:
        completing.set()
        await asyncio.sleep(0.3)
        return await real_complete(executor, leases)

    monkeypatch.setattr(queue, "complete", slow_complete)

    async def handler(job: ClaimedJob) -> None:
        return None

    consumer = Consumer(pool, handler, config(ack_interval_s=0.0))
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(completing.wait(), 5)
    consumer.stop()
    await asyncio.wait_for(task, 5)
    rows = await pool.fetch("select status from docpipe.jobs")
    assert [r[0] for r in rows] == ["succeeded"] * 5
