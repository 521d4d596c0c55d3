"""A provider quota's budget shared by the fleet through Postgres (ADR 0005).

The thin shell around `docpipe_providers.quota`: each exchange locks the quota's row
(`docpipe.quota_budgets`, migration 0003), runs the pure functions on its state at the server's
clock, and writes the state back, in one short transaction per slice (a slice is about a second
of budget, many requests' worth). If the database cannot be reached, the budget falls back to a
conservative local share of the limits (`fallback_share`) and says so in the log, and goes back
to the shared state when the database answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from docpipe_providers.quota import (
    Amount,
    Budget,
    BudgetConfig,
    BudgetState,
    Grant,
    QuotaKey,
    QuotaLimits,
    Reservation,
    SlicedBudget,
    back_off,
    initial_state,
    new_reservation_id,
    release,
    reserve,
    settle,
)

log = logging.getLogger(__name__)

_SELECT = """
select requests_level, tokens_level,
       extract(epoch from at)::float8 as at,
       extract(epoch from blocked_until)::float8 as blocked_until,
       largest_requests, largest_tokens, reservations::text as reservations,
       extract(epoch from clock_timestamp())::float8 as now
from docpipe.quota_budgets
where provider = $1 and key_hash = $2 and model = $3
for update
"""

_INSERT = """
insert into docpipe.quota_budgets
    (provider, key_hash, model, requests_level, tokens_level, at,
     requests_per_minute, tokens_per_minute)
values ($1, $2, $3, $4, $5, clock_timestamp(), $6, $7)
on conflict (provider, key_hash, model) do nothing
"""

_UPDATE = """
update docpipe.quota_budgets
set requests_level = $4, tokens_level = $5, at = to_timestamp($6),
    blocked_until = to_timestamp($7), largest_requests = $8, largest_tokens = $9,
    reservations = $10::text::jsonb, requests_per_minute = $11, tokens_per_minute = $12
where provider = $1 and key_hash = $2 and model = $3
"""

_LOCAL_PREFIX = "local:"

# What the database failing looks like to asyncpg users.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _state_of(row: asyncpg.Record) -> BudgetState:
    return BudgetState(
        requests=row["requests_level"],
        tokens=row["tokens_level"],
        at=row["at"],
        blocked_until=row["blocked_until"],
        largest_requests=row["largest_requests"],
        largest_tokens=row["largest_tokens"],
        reservations=tuple(
            Reservation(str(r[0]), float(r[1]), float(r[2]), float(r[3]))
            for r in json.loads(row["reservations"])
        ),
    )


def _reservations_json(state: BudgetState) -> str:
    return json.dumps([[r.id, r.requests, r.tokens, r.expires_at] for r in state.reservations])


class SharedBudget(SlicedBudget, Budget):
    """One quota's budget, shared with every process that uses the same database and key."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        key: QuotaKey,
        limits: QuotaLimits,
        *,
        config: BudgetConfig | None = None,
        fallback_share: float = 0.1,
        timeout_seconds: float = 2.0,
        retry_database_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(limits, config=config, clock=clock, sleep=sleep)
        self.pool = pool
        self.key = key
        self._fallback_share = fallback_share
        self._timeout = timeout_seconds
        self._retry_after = retry_database_after
        self._degraded_until: float | None = None  # local clock: use the fallback until then
        self._fallback: BudgetState | None = None
        self.fallback_grants = 0  # slices granted locally while the database was unreachable

    @property
    def degraded(self) -> bool:
        return self._degraded_until is not None

    # -- the shared state

    async def _exchange(
        self, need: Amount | None, ask: Amount | None, give_back: tuple[str, Amount] | None
    ) -> Grant:
        if give_back is not None and give_back[0].startswith(_LOCAL_PREFIX):
            self._local_exchange(None, None, give_back)
            give_back = None
        if self._degraded_until is not None and self._clock() < self._degraded_until:
            return self._local_exchange(need, ask, give_back)
        try:
            async with asyncio.timeout(self._timeout):
                grant = await self._database_exchange(need, ask, give_back)
        except _UNAVAILABLE as exc:
            if self._degraded_until is None:
                log.warning(
                    "quota %s/%s: the shared budget is unreachable (%s: %s); spending a local "
                    "share of %.0f%% of the limits until it answers",
                    self.key.provider,
                    self.key.model,
                    type(exc).__name__,
                    exc,
                    self._fallback_share * 100,
                )
            self._degraded_until = self._clock() + self._retry_after
            return self._local_exchange(need, ask, give_back)
        if self._degraded_until is not None:
            log.warning(
                "quota %s/%s: the shared budget answers again", self.key.provider, self.key.model
            )
            self._degraded_until = None
        return grant

    async def _database_exchange(
        self, need: Amount | None, ask: Amount | None, give_back: tuple[str, Amount] | None
    ) -> Grant:
        limits = self.limits
        key = (self.key.provider, self.key.key_hash, self.key.model)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT, *key)
            if row is None:
                fresh = initial_state(0.0, limits, self.config)
                await conn.execute(
                    _INSERT,
                    *key,
                    fresh.requests,
                    fresh.tokens,
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                )
                row = await conn.fetchrow(_SELECT, *key)
                assert row is not None
            state = _state_of(row)
            now: float = row["now"]
            if give_back is not None:
                state = release(state, now, give_back[0], give_back[1], limits, self.config)
            if need is None or ask is None:
                state = settle(state, now, limits, self.config)
                grant = Grant(None, 0.0, Amount(), state.at)
            else:
                state, grant = reserve(
                    state,
                    now,
                    need=need,
                    ask=ask,
                    limits=limits,
                    config=self.config,
                    reservation_id=new_reservation_id(),
                )
            await self._write(conn, key, state, limits)
        return grant

    @staticmethod
    async def _write(
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        key: tuple[str, str, str],
        state: BudgetState,
        limits: QuotaLimits,
    ) -> None:
        await conn.execute(
            _UPDATE,
            *key,
            state.requests,
            state.tokens,
            state.at,
            state.blocked_until,
            state.largest_requests,
            state.largest_tokens,
            _reservations_json(state),
            limits.requests_per_minute,
            limits.tokens_per_minute,
        )

    async def _push_back_off(self, seconds: float) -> None:
        """Tell the fleet: a 429 empties the shared buckets and stops grants for `seconds`."""
        limits = self.limits
        key = (self.key.provider, self.key.key_hash, self.key.model)
        try:
            async with (
                asyncio.timeout(self._timeout),
                self.pool.acquire() as conn,
                conn.transaction(),
            ):
                row = await conn.fetchrow(_SELECT, *key)
                if row is None:
                    return
                state = back_off(_state_of(row), row["now"], seconds, limits, self.config)
                await self._write(conn, key, state, limits)
        except _UNAVAILABLE as exc:
            log.warning("quota %s/%s: could not share a back-off: %s", *key[::2], exc)

    # -- the fallback: a local share of the limits

    def _fallback_limits(self) -> QuotaLimits:
        def share(limit: int | None) -> int | None:
            return None if limit is None else max(1, int(limit * self._fallback_share))

        limits = self.limits
        return QuotaLimits(share(limits.requests_per_minute), share(limits.tokens_per_minute))

    def _local_exchange(
        self, need: Amount | None, ask: Amount | None, give_back: tuple[str, Amount] | None
    ) -> Grant:
        now = self._clock()
        limits = self._fallback_limits()
        if self._fallback is None:
            # Starts empty: a process that falls back has just spent from the shared bucket.
            self._fallback = settle(
                BudgetState(requests=0.0, tokens=0.0, at=now), now, limits, self.config
            )
        state = self._fallback
        if give_back is not None:
            state = release(state, now, give_back[0], give_back[1], limits, self.config)
        if need is None or ask is None:
            self._fallback = settle(state, now, limits, self.config)
            return Grant(None, 0.0, Amount(), now)
        self._fallback, grant = reserve(
            state,
            now,
            need=need,
            ask=ask,
            limits=limits,
            config=self.config,
            reservation_id=_LOCAL_PREFIX + new_reservation_id(),
        )
        if grant.reservation is not None:
            self.fallback_grants += 1
        return grant
