"""The heartbeat: renews the leases a worker holds, and reports the ones it no longer holds (the
job was cancelled, or rescued from under a worker that went quiet) so their handlers stop. A
lease that is gone because the worker's own completion got there first is not reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from docpipe_queue import jobs
from docpipe_queue.connectivity import Connectivity
from docpipe_queue.jobs import Lease, LeaseState


async def run(
    pool: asyncpg.Pool,
    connectivity: Connectivity,
    *,
    interval_s: float,
    lease_s: float,
    held: Callable[[], list[Lease]],
    lost: Callable[[Lease, LeaseState, float], None],
    worker: str,
) -> None:
    """Every `interval_s`, extend the `held()` leases to `lease_s` from now; call `lost` with
    each one that the database no longer recognises (and was not completed by `worker`), its
    job's state and the seconds since its last renewal. Runs until cancelled."""
    renewed: dict[int, float] = {}
    while True:
        await asyncio.sleep(interval_s)
        leases = held()
        now = time.monotonic()
        # Leases met for the first time were renewed by their claim, just now or nearly.
        renewed = {lease.job_id: renewed.get(lease.job_id, now) for lease in leases}
        if not leases:
            continue
        try:
            alive = await jobs.heartbeat(pool, leases, lease_s=lease_s)
            missing = [lease for lease in leases if lease.job_id not in alive]
            states = await jobs.lease_states(pool, missing) if missing else {}
        except Exception as exc:
            await connectivity.lost("heartbeat", exc)
            continue
        connectivity.reached()
        for job_id in alive:
            renewed[job_id] = now
        for lease in missing:
            state = states[lease.job_id]
            if state.completed_by(worker):
                continue  # the handler's own completion (or the batch's) got there first
            lost(lease, state, now - renewed.get(lease.job_id, now))
