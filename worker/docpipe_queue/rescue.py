"""The rescue of expired leases: jobs whose worker stopped renewing them (crashed, partitioned,
frozen) go back to the queue, or die when they had used their last attempt. Every worker runs
it; the statement skips rows another worker is rescuing."""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg

from docpipe_queue import jobs
from docpipe_queue.connectivity import Connectivity

log = logging.getLogger(__name__)


async def run(pool: asyncpg.Pool, connectivity: Connectivity, *, interval_s: float) -> None:
    """Rescue expired leases about every `interval_s`. Runs until cancelled."""
    while True:
        # Jitter keeps a fleet of workers from rescuing in lock step.
        await asyncio.sleep(interval_s * random.uniform(0.5, 1.5))
        try:
            result = await jobs.rescue_expired(pool)
        except Exception as exc:
            await connectivity.lost("rescue", exc)
            continue
        if result.total:
            log.warning(
                "rescued jobs with expired leases",
                extra={"requeued": result.requeued, "dead": result.dead},
            )
