"""One process of the fleet in the shared-budget tests: acquires from a SharedBudget as fast as
it can until a deadline and appends each grant's wall-clock time to a file (one per line).

    python quota_process.py DATABASE_URL OUT_FILE START_AT STOP_AT LIMIT WINDOW SLICE

Starts spending at the wall-clock time START_AT (so that all processes start together) and
stops at STOP_AT. `time.time()` is the one clock every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import sys
import time

from docpipe_providers.quota import BudgetConfig, QuotaKey, QuotaLimits
from docpipe_providers.shared_budget import SharedBudget
from docpipe_queue.database import create_pool


async def main(argv: list[str]) -> None:
    url, out, start_at, stop_at, limit, window, slice_seconds = argv
    pool = await create_pool(url, min_size=1, max_size=2)
    budget = SharedBudget(
        pool,
        QuotaKey("openai", "fleet-test", "text-embedding-3-small"),
        QuotaLimits(int(limit), None),
        config=BudgetConfig(window_seconds=float(window), slice_seconds=float(slice_seconds)),
    )
    # Line-buffered: a SIGKILL loses no grant written. (A blocking open, once, before the run.)
    f = open(out, "a", buffering=1)  # noqa: ASYNC230, SIM115
    await asyncio.sleep(max(float(start_at) - time.time(), 0.0))
    with f:
        while time.time() < float(stop_at):
            await budget.acquire()
            f.write(f"{time.time():.6f}\n")
    await budget.aclose()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
