# ruff: noqa: ASYNC109  (the timeout parameters are asyncpg.Pool's, which this overrides)
"""A connection pool that hands out its connections in the order they were asked for.

asyncpg's pool keeps its free connections in an asyncio queue. When a connection comes back, the
queue wakes the caller that has waited longest, but a caller that asks before the woken one runs
takes the connection instead, and the woken caller goes back to the end of the line. Under load,
a request that needs the pool several times (a hybrid search: its keyword ranking, its vector
ranking, its hits) is overtaken again and again: at 50 concurrent searches on the API's pool of
20, hybrid searches' p95 was about twice their median, and a pool of 40 (never exhausted) cut it
by about 40 % (docs/benchmarks.md, issue 19).

FairPool puts a first-come, first-served semaphore of the pool's size in front of it: a caller
waits its turn there, and the queue behind it always has a connection when its turn comes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy


class FairPool(asyncpg.Pool):
    """asyncpg.Pool, first come first served (see the module's docstring). Built like
    asyncpg.Pool (keyword arguments, as asyncpg.create_pool passes them), then awaited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # asyncio.Semaphore queues a caller behind the ones already waiting (Python >= 3.11.1).
        self._turns = asyncio.Semaphore(kwargs["max_size"])

    # The signatures are asyncpg's: Pool.acquire's context and Pool.fetch & co. go through
    # _acquire and release.
    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy:
        if timeout is None:
            await self._turns.acquire()
        else:  # the wait for a turn counts against the caller's timeout
            deadline = asyncio.get_running_loop().time() + timeout
            async with asyncio.timeout_at(deadline):
                await self._turns.acquire()
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            proxy: PoolConnectionProxy = await super()._acquire(timeout)  # type: ignore[misc]
            return proxy
        except BaseException:
            self._turns.release()
            raise

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        try:
            await super().release(connection, timeout=timeout)
        finally:
            self._turns.release()
