"""Provider quotas: one budget per quota, spent in slices (ADR 0005).

A quota is what a provider limits together: a provider, an API key and a model, with a limit of
requests and one of tokens per minute. Every process that spends the quota draws from one token
bucket per limit. The bucket's state may live in this process (`LocalBudget`) or in Postgres,
shared by the fleet (`docpipe_providers.shared_budget.SharedBudget`); both run the same pure
functions below on it.

A process does not go to the shared state per request: it reserves a *slice* (about one second's
worth, or what its waiters need), spends it locally, and hands back what it did not spend when
the slice expires. The state keeps every slice it granted with an expiry, so a process that dies
holding a slice costs the fleet at most that slice: once expired it stops counting.

The guarantee, for any window of `window_seconds` (60 in production) and each limit L:
what is spent across all processes in the window never exceeds L. The reasoning:

- The bucket holds a level `x`; the slices granted and not yet released or expired hold `U`.
  Refill stops at the capacity `C`: `x + U <= C` always (refill, returns and clamps keep it).
- A token spent in a window [a, b] was held at `a` (part of `U(a)`) or reserved during the
  window (taken out of `x`). Reservations during the window, net of returns, equal
  `x(a) - x(b) + refill(a, b)`. So the spending is at most `U(a) + x(a) - x(b) + refill`,
  and with `x(b) >= 0`, `x(a) + U(a) <= C` and refill at rate `r`: at most `C + r * (b - a)`.
- Hence the refill rate is `r = (L - C) / window` rather than `L / window`: any window then
  sees at most `C + (L - C) = L`. The capacity is one second's worth (`L / 60`), so the steady
  rate is 59/60 of the limit; it grows to the largest single request seen (a request must fit in
  the bucket), at most half the limit.
- A slice is spent only before its local deadline, which is earlier than its expiry on the
  server clock; an expired slice leaves `U` without any credit (its holder may have spent it),
  a released one gives back only what its holder did not spend and will not spend.

Waiters of one process are served in arrival order (`asyncio.Lock` is FIFO).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
_EPSILON = 1e-9  # float dust: a level this close to a need covers it
_MIN_WAIT = 0.001  # never ask a waiter to come back sooner than this


# ----------------------------------------------------------------------------- the interface


@dataclass(frozen=True)
class QuotaKey:
    """What a provider limits together. `key_hash` is `hash_api_key(api_key)`, never the key."""

    provider: str
    key_hash: str
    model: str


def hash_api_key(api_key: str | None) -> str:
    """A short, stable, non-reversible name of an API key (the quota's owner at the provider)."""
    if not api_key:
        return "none"
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QuotaLimits:
    """Per-minute limits of a quota; None means unlimited or unknown."""

    requests_per_minute: int | None
    tokens_per_minute: int | None

    @staticmethod
    def unlimited() -> QuotaLimits:
        return QuotaLimits(None, None)

    def tightest(self, other: QuotaLimits) -> QuotaLimits:
        """The lower of the two limits for each of requests and tokens (None: no limit)."""
        return QuotaLimits(
            _min_limit(self.requests_per_minute, other.requests_per_minute),
            _min_limit(self.tokens_per_minute, other.tokens_per_minute),
        )

    @property
    def bounded(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


def _min_limit(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@runtime_checkable
class Budget(Protocol):
    """What a provider client spends before each request."""

    async def acquire(self, *, requests: int = 1, tokens: int = 0) -> float:
        """Wait for budget for one request; return the seconds waited. Cancellable."""
        ...

    def learn(self, limits: QuotaLimits) -> None:
        """Limits read from the provider's headers: the budget uses min(configured, learned)."""
        ...

    def back_off(self, seconds: float) -> None:
        """A 429 said retry after `seconds`: grant nothing until then."""
        ...

    @property
    def limits(self) -> QuotaLimits:
        """The limits in force: min(configured, learned)."""
        ...


# ----------------------------------------------------------------------------- the pure core


@dataclass(frozen=True)
class BudgetConfig:
    """How a bucket is sized. Tests shorten the window; production keeps 60 s."""

    window_seconds: float = WINDOW_SECONDS
    # The capacity: this share of the window's limit (1/60: one second's worth per minute).
    burst_fraction: float = 1.0 / 60.0
    # How long a slice may be spent after it was granted.
    slice_seconds: float = 1.0
    # Never more than this share of the limit as capacity (a request larger than that is granted
    # when the bucket is full, as a full bucket: see `capacity`).
    max_capacity_fraction: float = 0.5


@dataclass(frozen=True)
class Amount:
    requests: float = 0.0
    tokens: float = 0.0


@dataclass(frozen=True)
class Reservation:
    """A slice granted and not yet released: it counts against refill until released or expired."""

    id: str
    requests: float
    tokens: float
    expires_at: float


@dataclass(frozen=True)
class BudgetState:
    """The shared state of one quota, at time `at` (seconds, on the state's clock)."""

    requests: float  # the bucket's level
    tokens: float
    at: float
    blocked_until: float = 0.0
    largest_requests: float = 0.0  # the largest single need seen: the capacity covers it
    largest_tokens: float = 0.0
    reservations: tuple[Reservation, ...] = ()

    @property
    def held(self) -> Amount:
        return Amount(
            sum(r.requests for r in self.reservations), sum(r.tokens for r in self.reservations)
        )


@dataclass(frozen=True)
class Grant:
    """The answer to a reservation: a slice (`reservation`), or how long to wait (`wait`)."""

    reservation: Reservation | None
    wait: float
    # The capacities when granted: a need above them is served by a full bucket.
    capacity: Amount
    at: float  # the state's clock when decided


def capacity(limit: int | None, largest: float, config: BudgetConfig) -> float:
    """The bucket's capacity for `limit` per window: one second's worth, or the largest request."""
    if limit is None:
        return math.inf
    base = max(limit * config.burst_fraction, 1.0)
    return min(max(base, largest), max(limit * config.max_capacity_fraction, 1.0))


def refill_rate(limit: int | None, cap: float, config: BudgetConfig) -> float:
    """Per second: (L - C) / window, so that C + rate * window never exceeds L."""
    if limit is None:
        return math.inf
    return max(limit - cap, 0.0) / config.window_seconds


def initial_state(now: float, limits: QuotaLimits, config: BudgetConfig) -> BudgetState:
    """A new quota's state: a full bucket."""
    caps = _caps(limits, 0.0, 0.0, config)
    return BudgetState(requests=_finite(caps.requests), tokens=_finite(caps.tokens), at=now)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _caps(limits: QuotaLimits, largest_r: float, largest_t: float, c: BudgetConfig) -> Amount:
    return Amount(
        capacity(limits.requests_per_minute, largest_r, c),
        capacity(limits.tokens_per_minute, largest_t, c),
    )


def settle(
    state: BudgetState, now: float, limits: QuotaLimits, config: BudgetConfig
) -> BudgetState:
    """The state at `now`: the bucket refilled, expired slices dropped (without credit).

    Refill stops at the capacity less the live slices, so it is computed piece by piece: up to
    each expiry with that slice still held, then without it.
    """
    now = max(now, state.at)  # a clock that went back refills nothing
    caps = _caps(limits, state.largest_requests, state.largest_tokens, config)
    rate = Amount(
        refill_rate(limits.requests_per_minute, caps.requests, config),
        refill_rate(limits.tokens_per_minute, caps.tokens, config),
    )
    held = state.held
    level = Amount(state.requests, state.tokens)
    t = state.at
    expiring = sorted((r for r in state.reservations if r.expires_at <= now), key=_expiry)
    for r in expiring:
        level = _refill(level, max(r.expires_at - t, 0.0), rate, caps, held, limits)
        held = Amount(held.requests - r.requests, held.tokens - r.tokens)
        t = max(t, r.expires_at)
    level = _refill(level, now - t, rate, caps, held, limits)
    live = tuple(r for r in state.reservations if r.expires_at > now)
    return replace(state, requests=level.requests, tokens=level.tokens, at=now, reservations=live)


def _expiry(r: Reservation) -> float:
    return r.expires_at


def _refill(
    level: Amount, elapsed: float, rate: Amount, caps: Amount, held: Amount, limits: QuotaLimits
) -> Amount:
    def one(level: float, rate: float, cap: float, held: float, limit: int | None) -> float:
        if limit is None:
            return 0.0
        ceiling = cap - held
        # Refill stops at the ceiling; a level above it (the limit fell) is brought down to it.
        return min(level + rate * elapsed, ceiling) if level <= ceiling else ceiling

    return Amount(
        one(
            level.requests, rate.requests, caps.requests, held.requests, limits.requests_per_minute
        ),
        one(level.tokens, rate.tokens, caps.tokens, held.tokens, limits.tokens_per_minute),
    )


def release(
    state: BudgetState,
    now: float,
    reservation_id: str,
    unused: Amount,
    limits: QuotaLimits,
    config: BudgetConfig,
) -> BudgetState:
    """A slice handed back with `unused` not spent (and never to be): credited if still live."""
    state = settle(state, now, limits, config)
    found = next((r for r in state.reservations if r.id == reservation_id), None)
    if found is None:
        return state  # expired already: counted as spent
    rest = tuple(r for r in state.reservations if r.id != reservation_id)
    state = replace(
        state,
        requests=state.requests + min(max(unused.requests, 0.0), found.requests),
        tokens=state.tokens + min(max(unused.tokens, 0.0), found.tokens),
        reservations=rest,
    )
    return _clamp(state, limits, config)


def _clamp(state: BudgetState, limits: QuotaLimits, config: BudgetConfig) -> BudgetState:
    caps = _caps(limits, state.largest_requests, state.largest_tokens, config)
    held = state.held
    return replace(
        state,
        requests=min(state.requests, caps.requests - held.requests)
        if limits.requests_per_minute is not None
        else 0.0,
        tokens=min(state.tokens, caps.tokens - held.tokens)
        if limits.tokens_per_minute is not None
        else 0.0,
    )


def reserve(
    state: BudgetState,
    now: float,
    *,
    need: Amount,
    ask: Amount,
    limits: QuotaLimits,
    config: BudgetConfig,
    reservation_id: str,
) -> tuple[BudgetState, Grant]:
    """Grant a slice of at least `need` and at most `ask` (per limit), or say how long to wait.

    A need above the capacity (more than half the limit) is served by a full bucket.
    """
    state = settle(state, now, limits, config)
    state = replace(
        state,
        largest_requests=max(state.largest_requests, need.requests),
        largest_tokens=max(state.largest_tokens, need.tokens),
    )
    caps = _caps(limits, state.largest_requests, state.largest_tokens, config)
    if state.at < state.blocked_until:
        return state, Grant(None, state.blocked_until - state.at, caps, state.at)
    held = state.held
    wait = 0.0
    grants: list[float] = []
    for level, cap, limit, held_d, need_d, ask_d in (
        (state.requests, caps.requests, limits.requests_per_minute, held.requests,
         need.requests, ask.requests),
        (state.tokens, caps.tokens, limits.tokens_per_minute, held.tokens,
         need.tokens, ask.tokens),
    ):  # fmt: skip
        if limit is None:
            grants.append(math.inf)
            continue
        need_d = min(need_d, cap)
        if level < need_d - _EPSILON:
            rate = refill_rate(limit, cap, config)
            # Refill may also wait for held slices to come back; the estimate is a lower bound.
            shortfall = need_d - level
            wait = max(wait, shortfall / rate if rate > 0 else config.slice_seconds)
            if held_d > cap - need_d:
                wait = max(wait, min(config.slice_seconds, 0.05))
            grants.append(0.0)
        else:
            grants.append(max(min(ask_d, level), need_d))
    if wait > 0:
        return state, Grant(None, max(wait, _MIN_WAIT), caps, state.at)
    reservation = Reservation(
        reservation_id,
        requests=0.0 if math.isinf(grants[0]) else grants[0],
        tokens=0.0 if math.isinf(grants[1]) else grants[1],
        expires_at=state.at + config.slice_seconds,
    )
    state = replace(
        state,
        requests=state.requests - reservation.requests,
        tokens=state.tokens - reservation.tokens,
        reservations=(*state.reservations, reservation),
    )
    return state, Grant(reservation, 0.0, caps, state.at)


def back_off(
    state: BudgetState, now: float, seconds: float, limits: QuotaLimits, config: BudgetConfig
) -> BudgetState:
    """A 429: nothing granted for `seconds`, and the bucket is empty (the provider says so)."""
    state = settle(state, now, limits, config)
    return replace(
        state,
        blocked_until=max(state.blocked_until, state.at + max(seconds, 0.0)),
        requests=min(state.requests, 0.0),
        tokens=min(state.tokens, 0.0),
    )


# ----------------------------------------------------------------------------- the local shell


class BudgetUnavailableError(Exception):
    """The budget's shared state could not be reached (the caller falls back)."""


@dataclass
class _Slice:
    id: str
    requests: float
    tokens: float
    capacity: Amount
    deadline: float  # on the local monotonic clock
    spent: Amount = field(default_factory=Amount)

    def need_of(self, requests: float, tokens: float) -> Amount:
        return Amount(min(requests, self.capacity.requests), min(tokens, self.capacity.tokens))

    def covers(self, requests: float, tokens: float, now: float) -> bool:
        if now >= self.deadline:
            return False
        need = self.need_of(requests, tokens)
        return self.requests >= need.requests - 1e-9 and self.tokens >= need.tokens - 1e-9

    def spend(self, requests: float, tokens: float) -> None:
        need = self.need_of(requests, tokens)
        self.requests = max(self.requests - need.requests, 0.0)
        self.tokens = max(self.tokens - need.tokens, 0.0)

    @property
    def unused(self) -> Amount:
        return Amount(self.requests, self.tokens)


def _finite_amount(a: Amount) -> Amount:
    return Amount(_finite(a.requests), _finite(a.tokens))


class SlicedBudget:
    """The local half of a budget: FIFO waiters, spending from the current slice, fetching the
    next slice when it runs out, and handing back an unspent slice when it expires.

    Subclasses say where the shared state is (`_exchange`, `_push_back_off`).
    """

    def __init__(
        self,
        limits: QuotaLimits,
        *,
        config: BudgetConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_poll_seconds: float = 0.5,
    ) -> None:
        self._configured = limits
        self._learned = QuotaLimits.unlimited()
        self.config = config or BudgetConfig()
        self._clock = clock
        self._sleep = sleep
        self._max_poll = max_poll_seconds
        self._lock = asyncio.Lock()  # FIFO: waiters are served in the order they came
        self._slice: _Slice | None = None
        self._blocked_until = 0.0
        self._pending = Amount()
        self._spends: deque[tuple[float, float, float]] = deque()  # to size the next slice
        self._expiry_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.granted = Amount()  # counters, for metrics
        self.waited_seconds = 0.0

    # -- the Budget interface

    @property
    def limits(self) -> QuotaLimits:
        return self._configured.tightest(self._learned)

    def learn(self, limits: QuotaLimits) -> None:
        self._learned = limits

    def back_off(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)
        with contextlib.suppress(RuntimeError):  # no running loop: the local gate still holds
            self._spawn(self._push_back_off(seconds))

    async def acquire(self, *, requests: int = 1, tokens: int = 0) -> float:
        start = self._clock()
        if not self.limits.bounded and self._clock() >= self._blocked_until:
            return 0.0
        self._pending = Amount(self._pending.requests + requests, self._pending.tokens + tokens)
        try:
            async with self._lock:
                await self._wait_for(requests, tokens)
        finally:
            self._pending = Amount(self._pending.requests - requests, self._pending.tokens - tokens)
        waited = self._clock() - start
        self.granted = Amount(self.granted.requests + requests, self.granted.tokens + tokens)
        self.waited_seconds += waited
        return waited

    async def aclose(self) -> None:
        """Hand back the current slice's unspent part (a clean shutdown)."""
        for task in list(self._background):
            task.cancel()
        current, self._slice = self._slice, None
        if current is not None and (current.requests > 0 or current.tokens > 0):
            try:
                await self._exchange(None, None, (current.id, _finite_amount(current.unused)))
            except BudgetUnavailableError:
                log.warning("could not hand back the quota slice at shutdown")

    # -- the slice logic

    async def _wait_for(self, requests: float, tokens: float) -> None:
        while True:
            now = self._clock()
            if now < self._blocked_until:
                await self._sleep(self._blocked_until - now)
                continue
            if not self.limits.bounded:
                return
            current = self._slice
            if current is not None and current.covers(requests, tokens, now):
                current.spend(requests, tokens)
                self._spends.append((now, requests, tokens))
                return
            wait = await self._refresh(requests, tokens)
            if wait > 0:
                await self._sleep(min(wait, self._max_poll))

    def _ask(self, requests: float, tokens: float) -> tuple[Amount, Amount]:
        need = Amount(requests, tokens)
        # What the waiters here need now, or what one slice's lifetime spent lately (whichever
        # is more), so a busy process comes back about once per slice and an idle one takes little.
        horizon = self._clock() - self.config.slice_seconds
        while self._spends and self._spends[0][0] < horizon:
            self._spends.popleft()
        recent = Amount(sum(s[1] for s in self._spends), sum(s[2] for s in self._spends))
        ask = Amount(
            max(self._pending.requests, need.requests + recent.requests),
            max(self._pending.tokens, need.tokens + recent.tokens),
        )
        return need, ask

    async def _refresh(self, requests: float, tokens: float) -> float:
        """Hand back the current slice and take the next one; return the seconds to wait."""
        need, ask = self._ask(requests, tokens)
        old = self._slice
        give_back = (old.id, _finite_amount(old.unused)) if old is not None else None
        sent = self._clock()
        # Shielded: a waiter cancelled mid-exchange must not lose a slice the state granted.
        task = asyncio.ensure_future(self._exchange(need, ask, give_back))
        try:
            grant = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._adopt(t, old, sent))
            raise
        self._install(grant, old, sent)
        return grant.wait if grant.reservation is None else 0.0

    def _adopt(self, task: asyncio.Task[Grant], old: _Slice | None, sent: float) -> None:
        if not task.cancelled() and task.exception() is None:
            self._install(task.result(), old, sent)

    def _install(self, grant: Grant, old: _Slice | None, sent: float) -> None:
        if old is not None and self._slice is old:
            self._slice = None
        if grant.reservation is not None:
            r = grant.reservation
            # The local deadline is measured from when the request was sent: never later than
            # the expiry the state recorded on its own clock.
            lifetime = max(r.expires_at - grant.at, 0.0) * 0.95
            self._slice = _Slice(
                r.id,
                math.inf if math.isinf(grant.capacity.requests) else r.requests,
                math.inf if math.isinf(grant.capacity.tokens) else r.tokens,
                grant.capacity,
                deadline=sent + lifetime,
            )
            if self._expiry_task is None or self._expiry_task.done():
                with contextlib.suppress(RuntimeError):
                    self._expiry_task = self._spawn(self._expire())

    async def _expire(self) -> None:
        """At each slice's deadline, hand back what was not spent (and free its hold)."""
        while (current := self._slice) is not None:
            await self._sleep(max(current.deadline - self._clock(), 0.0))
            if self._slice is not current:
                continue
            if self._lock.locked():
                # A waiter will refresh it (handing it back in the same exchange).
                await self._sleep(min(self.config.slice_seconds, 0.05))
                continue
            async with self._lock:
                if self._slice is not current:
                    continue
                self._slice = None
                try:
                    await self._exchange(None, None, (current.id, _finite_amount(current.unused)))
                except BudgetUnavailableError:
                    log.warning("could not hand back an expired quota slice; it expires unused")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- where the state is

    async def _exchange(
        self, need: Amount | None, ask: Amount | None, give_back: tuple[str, Amount] | None
    ) -> Grant:
        raise NotImplementedError

    async def _push_back_off(self, seconds: float) -> None:
        return None


def new_reservation_id() -> str:
    return uuid.uuid4().hex


class LocalBudget(SlicedBudget, Budget):
    """A budget whose state lives in this process: a single process, tests, or no database."""

    def __init__(
        self,
        limits: QuotaLimits,
        *,
        config: BudgetConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(limits, config=config, clock=clock, sleep=sleep)
        self._state = initial_state(clock(), self.limits, self.config)

    async def _exchange(
        self, need: Amount | None, ask: Amount | None, give_back: tuple[str, Amount] | None
    ) -> Grant:
        now = self._clock()
        limits = self.limits
        state = self._state
        if give_back is not None:
            state = release(state, now, give_back[0], give_back[1], limits, self.config)
        if need is None or ask is None:
            self._state = settle(state, now, limits, self.config)
            caps = _caps(limits, state.largest_requests, state.largest_tokens, self.config)
            return Grant(None, 0.0, caps, now)
        self._state, grant = reserve(
            state,
            now,
            need=need,
            ask=ask,
            limits=limits,
            config=self.config,
            reservation_id=new_reservation_id(),
        )
        return grant

    def back_off(self, seconds: float) -> None:
        if seconds > 0:
            self._state = back_off(self._state, self._clock(), seconds, self.limits, self.config)
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)
