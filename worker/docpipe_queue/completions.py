"""Completions waiting to be written: the leases of jobs whose handler finished, completed
together in one statement when `batch` of them are waiting or `interval_s` after the first."""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import Counter

from docpipe_queue import jobs
from docpipe_queue.connectivity import Connectivity
from docpipe_queue.jobs import Lease


class Completions:
    """Run `run()` as a task; `add()` a lease per finished job; `flush()` on the way out."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connectivity: Connectivity,
        *,
        batch: int,
        interval_s: float,
        succeeded: Counter,
        lease_lost: Counter,
    ) -> None:
        self._pool = pool
        self._connectivity = connectivity
        self._batch = batch
        self._interval_s = interval_s
        self._succeeded = succeeded
        self._lease_lost = lease_lost
        self._leases: list[Lease] = []
        # One flush at a time: the final flush of a stopping consumer waits for the loop's.
        self._flush_lock = asyncio.Lock()
        self._ready = asyncio.Event()

    @property
    def pending(self) -> list[Lease]:
        """The leases not completed yet: they still need their heartbeat."""
        return list(self._leases)

    def add(self, lease: Lease) -> None:
        self._leases.append(lease)
        if len(self._leases) >= self._batch or len(self._leases) == 1:
            self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            if len(self._leases) < self._batch:
                # Let completions that finish together share one statement.
                await asyncio.sleep(self._interval_s)
            self._ready.clear()
            await self.flush()
            if self._leases:
                self._ready.set()

    async def flush(self) -> None:
        """Complete every waiting lease; on a database error keep them and return."""
        async with self._flush_lock:
            while self._leases:
                batch = self._leases[: self._batch]
                del self._leases[: len(batch)]
                try:
                    done = await jobs.complete(self._pool, batch)
                except BaseException as exc:
                    # Keep them (completed work is not thrown away), also when cancelled mid-way:
                    # a completion that did reach the server makes the retry a no-op.
                    self._leases[:0] = batch
                    if not isinstance(exc, Exception):
                        raise
                    await self._connectivity.lost("complete", exc)
                    return
                self._connectivity.reached()
                self._succeeded.inc(len(done))
                if len(done) < len(batch):
                    self._lease_lost.inc(len(batch) - len(done))
