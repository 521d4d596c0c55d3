"""A consumer in its own process, for tests that kill it: `python consumer_process.py URL WORKER`.

Each job it runs is recorded in `test_runs` before the handler sleeps, so the test can see which
worker started which job.
"""

from __future__ import annotations

import asyncio
import sys

from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.database import create_pool
from docpipe_queue.jobs import ClaimedJob


async def main(url: str, worker: str, sleep_s: float) -> None:
    pool = await create_pool(url, min_size=2, max_size=4)

    async def handler(job: ClaimedJob) -> None:
        await pool.execute("insert into test_runs (job_id, worker) values ($1, $2)", job.id, worker)
        await asyncio.sleep(sleep_s)

    config = ConsumerConfig(
        pipeline="p",
        concurrency=20,
        batch_size=20,
        lease_s=1.0,
        heartbeat_s=0.3,
        rescue_interval_s=0.3,
        worker_id=worker,
    )
    await Consumer(pool, handler, config).run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
