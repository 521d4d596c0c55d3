"""Wake-ups by LISTEN/NOTIFY: a connection held for LISTEN on the queue's channel sets an event
when a job of the pipeline becomes ready, so an idle consumer claims it without waiting for its
next poll (polling stays the fallback). The connection is replaced when it dies."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue import queries
from docpipe_queue.connectivity import Connectivity


class Notifications:
    """Run `run()` as a task; it sets `wake` on each notification for `pipeline`, and after a
    reconnection (jobs may have arrived while nobody listened). `close()` on the way out."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connectivity: Connectivity,
        *,
        pipeline: str,
        wake: asyncio.Event,
    ) -> None:
        self._pool = pool
        self._connectivity = connectivity
        self._pipeline = pipeline
        self._wake = wake
        self._listener: PoolConnectionProxy | None = None

    async def run(self) -> None:
        while True:
            try:
                conn: PoolConnectionProxy = await self._pool.acquire()
            except Exception as exc:
                await self._connectivity.lost("listen", exc)
                continue
            self._listener = conn
            lost = asyncio.Event()

            def on_terminated(_conn: object, lost: asyncio.Event = lost) -> None:
                lost.set()

            try:
                await conn.add_listener(queries.NOTIFY_CHANNEL, self._on_notify)
                conn.add_termination_listener(on_terminated)
                while not conn.is_closed() and not lost.is_set():
                    # Polling `is_closed` catches a dead socket the termination callback missed.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
            except Exception as exc:
                await self._connectivity.lost("listen", exc)
            finally:
                await self.close()
            # Jobs may have arrived while nobody listened.
            self._wake.set()

    async def close(self) -> None:
        """Stop listening and give the connection back to the pool."""
        conn, self._listener = self._listener, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.remove_listener(queries.NOTIFY_CHANNEL, self._on_notify)
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self._pipeline:
            self._wake.set()
