"""Rescue of expired leases against real Postgres: the jobs of a consumer killed mid-batch come
back and complete exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from pathlib import Path

import asyncpg

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import all_finished, config, running, wait_until


async def test_jobs_of_a_sigkilled_consumer_come_back_and_complete_once(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await pool.execute("create table test_runs (job_id bigint, worker text)")
    ids = await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(60)])
    script = Path(__file__).with_name("consumer_process.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    victim = await asyncio.create_subprocess_exec(
        sys.executable, str(script), database_url, "victim", "30", env=env
    )
    try:

        async def victim_is_mid_batch() -> bool:
            n = await pool.fetchval("select count(*) from test_runs where worker = 'victim'")
            return bool(n >= 20)

        await wait_until(victim_is_mid_batch, timeout_s=30)
    finally:
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    stranded = {
        r[0] for r in await pool.fetch("select job_id from test_runs where worker = 'victim'")
    }
    completed: collections.Counter[int] = collections.Counter()

    async def handler(job: ClaimedJob) -> None:
        completed[job.id] += 1

    async with running(Consumer(pool, handler, config(rescue_interval_s=0.2))):
        await wait_until(all_finished(pool), timeout_s=30)
    assert set(completed) == set(ids)
    assert set(completed.values()) == {1}
    assert stranded <= set(completed)
    rows = await pool.fetch("select status, count(*) from docpipe.jobs group by status")
    assert {r[0]: r[1] for r in rows} == {"succeeded": 60}
    retried = await pool.fetchval(
        "select count(*) from docpipe.jobs where id = any($1) and attempts = 2", list(stranded)
    )
    assert retried == len(stranded)
