"""The consumer's view of its database: which errors mean an outage, whether the last statement
got through, and the pause before a loop tries again."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import asyncpg

log = logging.getLogger(__name__)

# What a database outage looks like from asyncpg: the loops wait and try again on these.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    # Seen when the server goes away while a pooled connection is being reset.
    asyncpg.InternalClientError,
    asyncio.TimeoutError,
)


class Connectivity:
    """Shared by a consumer's loops: each reports how its last statement went."""

    def __init__(self) -> None:
        self.ok = False
        self.last_contact = 0.0

    def reached(self) -> None:
        """A statement got through."""
        self.ok = True
        self.last_contact = time.monotonic()

    async def lost(self, what: str, exc: BaseException) -> None:
        """A statement failed: note it (logged once per outage) and wait before the next try."""
        if self.ok:
            log.warning("database unavailable during %s: %s", what, exc)
        self.ok = False
        await asyncio.sleep(random.uniform(0.5, 1.5))
