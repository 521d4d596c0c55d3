"""The heartbeat: renews the leases a worker holds, and reports the ones it no longer holds (the
job was cancelled, or rescued from under a worker that went quiet) so their handlers stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from docpipe_queue import jobs
from docpipe_queue.connectivity import Connectivity
from docpipe_queue.jobs import Lease


async def run(
    pool: asyncpg.Pool,
    connectivity: Connectivity,
    *,
    interval_s: float,
    lease_s: float,
    held: Callable[[], list[Lease]],
    lost: Callable[[Lease], None],
) -> None:
    """Every `interval_s`, extend the `held()` leases to `lease_s` from now; call `lost` with
    each one that the database no longer recognises. Runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        leases = held()
        if not leases:
            continue
        try:
            alive = await jobs.heartbeat(pool, leases, lease_s=lease_s)
        except Exception as exc:
            await connectivity.lost("heartbeat", exc)
            continue
        connectivity.reached()
        for lease in leases:
            if lease.job_id not in alive:
                lost(lease)
