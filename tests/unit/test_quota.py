"""The quota budget's pure core and its local shell, on a simulated clock (ADR 0005)."""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docpipe_providers.quota import (
    Amount,
    Budget,
    BudgetConfig,
    BudgetState,
    LocalBudget,
    QuotaKey,
    QuotaLimits,
    back_off,
    capacity,
    hash_api_key,
    initial_state,
    refill_rate,
    release,
    reserve,
    settle,
)

CONFIG = BudgetConfig(window_seconds=60.0, slice_seconds=1.0)
T = TypeVar("T")


# ------------------------------------------------------------------ a fleet on a simulated clock


@dataclass
class SimProcess:
    slice_id: str | None = None
    requests: float = 0.0
    tokens: float = 0.0
    deadline: float = -math.inf
    cap: Amount = field(default_factory=Amount)


@dataclass
class Fleet:
    limits: QuotaLimits
    config: BudgetConfig
    state: BudgetState
    processes: list[SimProcess]
    spends: list[tuple[float, float, float]] = field(default_factory=list)
    next_id: int = 0

    def spend(self, p: SimProcess, now: float, requests: float, tokens: float, ask: float) -> bool:
        """One request of process `p`: from its slice, or from a new one. False: must wait."""
        if p.slice_id is not None and now < p.deadline:
            need_r, need_t = min(requests, p.cap.requests), min(tokens, p.cap.tokens)
            if p.requests >= need_r and p.tokens >= need_t:
                p.requests -= need_r
                p.tokens -= need_t
                self.spends.append((now, need_r, need_t))
                return True
        if p.slice_id is not None:
            self.state = release(
                self.state,
                now,
                p.slice_id,
                Amount(_finite(p.requests), _finite(p.tokens)),
                self.limits,
                self.config,
            )
            p.slice_id = None
        self.next_id += 1
        self.state, grant = reserve(
            self.state,
            now,
            need=Amount(requests, tokens),
            ask=Amount(requests * ask, tokens * ask),
            limits=self.limits,
            config=self.config,
            reservation_id=str(self.next_id),
        )
        if grant.reservation is None:
            assert grant.wait > 0
            return False
        r = grant.reservation
        p.slice_id, p.cap = r.id, grant.capacity
        # An unlimited dimension is not counted: the slice has no end of it.
        p.requests = math.inf if math.isinf(grant.capacity.requests) else r.requests
        p.tokens = math.inf if math.isinf(grant.capacity.tokens) else r.tokens
        p.deadline = now + (r.expires_at - grant.at) * 0.95
        assert self.spend(p, now, requests, tokens, ask), "a new slice covers its need"
        return True

    def crash(self, p: SimProcess) -> None:
        p.slice_id = None  # its slice is never handed back


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def max_window(spends: list[tuple[float, float, float]], window: float, index: int) -> float:
    """The most spent in any window [t, t + window) (it suffices to start windows at spends)."""
    times = [s[0] for s in spends]
    worst = 0.0
    j = 0
    total = 0.0
    for i in range(len(spends)):
        while j < len(spends) and times[j] < times[i] + window:
            total += spends[j][index]
            j += 1
        worst = max(worst, total)
        total -= spends[i][index]
    return worst


event = st.tuples(
    st.floats(0.0, 0.8),  # time to the next event
    st.integers(0, 3),  # which process
    st.sampled_from(["spend", "spend", "spend", "crash", "idle"]),
    st.integers(1, 3),  # requests
    st.integers(0, 400),  # tokens
    st.sampled_from([1.0, 2.0, 8.0]),  # how many requests' worth the slice asks for
)


@settings(max_examples=150, deadline=None)
@given(
    rpm=st.integers(5, 300),
    tpm=st.one_of(st.none(), st.integers(2_000, 40_000)),
    slice_seconds=st.sampled_from([0.2, 1.0, 3.0]),
    events=st.lists(event, min_size=50, max_size=600),
)
def test_no_window_is_ever_above_the_limit(
    rpm: int,
    tpm: int | None,
    slice_seconds: float,
    events: list[tuple[float, int, str, int, int, float]],
) -> None:
    limits = QuotaLimits(rpm, tpm)
    config = BudgetConfig(window_seconds=60.0, slice_seconds=slice_seconds)
    fleet = Fleet(
        limits, config, initial_state(0.0, limits, config), [SimProcess() for _ in "abcd"]
    )
    now = 0.0
    for dt, who, action, requests, tokens, ask in events:
        now += dt
        p = fleet.processes[who]
        if action == "crash":
            fleet.crash(p)
        elif action == "spend":
            fleet.spend(p, now, requests, tokens, ask)
        # Greedy processes spend again at once, as a busy fleet does.
        for q in fleet.processes:
            fleet.spend(q, now, 1, tokens, ask)
    assert max_window(fleet.spends, 60.0, 1) <= rpm + 1e-6
    if tpm is not None:
        assert max_window(fleet.spends, 60.0, 2) <= tpm + 1e-6


@settings(max_examples=15, deadline=None)
@given(rpm=st.integers(60, 3_000), processes=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_a_busy_fleet_spends_nearly_all_of_the_limit(rpm: int, processes: int, seed: int) -> None:
    """Greedy processes on a 50 ms tick for 5 windows: at least 95% of the limit is spent."""
    limits = QuotaLimits(rpm, None)
    fleet = Fleet(limits, CONFIG, initial_state(0.0, limits, CONFIG), [SimProcess()] * 0)
    fleet.processes = [SimProcess() for _ in range(processes)]
    tick = 0.05
    for step in range(int(300 / tick)):
        now = step * tick
        for i in range(processes):
            p = fleet.processes[(i + seed + step) % processes]
            while fleet.spend(p, now, 1, 0, 4.0):
                pass
    spent_last_window = sum(s[1] for s in fleet.spends if s[0] >= 240.0)
    assert spent_last_window <= rpm
    assert spent_last_window >= 0.95 * rpm
    assert max_window(fleet.spends, 60.0, 1) <= rpm + 1e-6


# ------------------------------------------------------------------ slices handed back or expired


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(60, 6_000),
    used=st.floats(0.0, 1.0),
    after=st.floats(0.0, 0.99),
)
def test_a_released_slice_gives_back_what_was_not_spent(
    rpm: int, used: float, after: float
) -> None:
    limits = QuotaLimits(rpm, None)
    state = initial_state(0.0, limits, CONFIG)
    state, grant = reserve(
        state,
        0.0,
        need=Amount(1, 0),
        ask=Amount(rpm, 0),
        limits=limits,
        config=CONFIG,
        reservation_id="a",
    )
    assert grant.reservation is not None
    size = grant.reservation.requests
    assert size == pytest.approx(capacity(rpm, 0.0, CONFIG))  # a full bucket: all of it
    unused = size * (1 - used)
    released = release(state, after, "a", Amount(unused, 0), limits, CONFIG)
    assert released.reservations == ()
    # While it was held the bucket could not refill above the capacity less the slice.
    assert released.requests == pytest.approx(min(unused, capacity(rpm, 0.0, CONFIG)))


@settings(max_examples=200, deadline=None)
@given(rpm=st.integers(60, 6_000), slice_seconds=st.sampled_from([0.5, 1.0, 2.0]))
def test_an_abandoned_slice_expires_and_refill_resumes(rpm: int, slice_seconds: float) -> None:
    config = BudgetConfig(slice_seconds=slice_seconds)
    limits = QuotaLimits(rpm, None)
    cap = capacity(rpm, 0.0, config)
    state, grant = reserve(
        initial_state(0.0, limits, config),
        0.0,
        need=Amount(1, 0),
        ask=Amount(rpm, 0),
        limits=limits,
        config=config,
        reservation_id="crashed",
    )
    assert grant.reservation is not None
    # Held: counted against refill, nothing comes back.
    held = settle(state, slice_seconds * 0.99, limits, config)
    assert held.reservations != ()
    assert held.requests <= cap - grant.reservation.requests + 1e-9
    # Expired: dropped without credit, and refill resumes at once.
    later = settle(state, slice_seconds + 1.0, limits, config)
    assert later.reservations == ()
    assert later.requests == pytest.approx(min(cap, refill_rate(rpm, cap, config) * 1.0))
    # A late hand-back of an expired slice gives nothing back (its holder may have spent it).
    assert release(later, slice_seconds + 1.0, "crashed", Amount(cap, 0), limits, config) == later


def test_the_rate_and_capacity_keep_every_window_within_the_limit() -> None:
    for limit in (1, 10, 600, 1_000_000):
        cap = capacity(limit, 0.0, CONFIG)
        assert cap + refill_rate(limit, cap, CONFIG) * 60.0 == pytest.approx(limit)
    # A request larger than a second's worth grows the capacity (and slows the refill).
    cap = capacity(60_000, 8_000, CONFIG)
    assert cap == 8_000
    assert cap + refill_rate(60_000, cap, CONFIG) * 60.0 == pytest.approx(60_000)
    assert capacity(60_000, 100_000, CONFIG) == 30_000  # at most half the limit


def test_back_off_empties_the_bucket_and_blocks_grants() -> None:
    limits = QuotaLimits(600, 60_000)
    state = back_off(initial_state(0.0, limits, CONFIG), 0.0, 5.0, limits, CONFIG)
    state, grant = reserve(
        state,
        1.0,
        need=Amount(1, 10),
        ask=Amount(1, 10),
        limits=limits,
        config=CONFIG,
        reservation_id="x",
    )
    assert grant.reservation is None
    assert grant.wait == pytest.approx(4.0)
    _, grant = reserve(
        state,
        5.2,
        need=Amount(1, 10),
        ask=Amount(1, 10),
        limits=limits,
        config=CONFIG,
        reservation_id="y",
    )
    assert grant.reservation is not None  # refilled from empty since the back-off ended


def test_hash_api_key_is_stable_and_hides_the_key() -> None:
    assert hash_api_key("sk-secret") == hash_api_key("sk-secret")
    assert "secret" not in hash_api_key("sk-secret")
    assert hash_api_key("sk-a") != hash_api_key("sk-b")
    assert hash_api_key(None) == hash_api_key("")
    assert QuotaKey("openai", hash_api_key("k"), "m") == QuotaKey("openai", hash_api_key("k"), "m")


# ------------------------------------------------------------------ the local shell, virtual time


class VirtualClock:
    """Simulated time for asyncio tasks: when every task is waiting, jump to the next wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._seq, future))
        self._seq += 1
        await future

    async def drive(self) -> None:
        while True:
            for _ in range(10):
                await asyncio.sleep(0)  # let every runnable task run until it waits
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                future.set_result(None)


async def _with_clock(clock: VirtualClock, body: Awaitable[T]) -> T:
    driver = asyncio.create_task(clock.drive())
    try:
        return await body
    finally:
        driver.cancel()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 2_000)), min_size=2, max_size=25),
    cancel=st.sets(st.integers(0, 24), max_size=5),
)
def test_waiters_are_served_in_order(sizes: list[tuple[int, int]], cancel: set[int]) -> None:
    async def run(clock: VirtualClock) -> list[int]:
        budget = LocalBudget(QuotaLimits(60, 6_000), config=CONFIG, clock=clock, sleep=clock.sleep)
        served: list[int] = []

        async def waiter(i: int, requests: int, tokens: int) -> None:
            await budget.acquire(requests=requests, tokens=tokens)
            served.append(i)

        tasks = []
        for i, (requests, tokens) in enumerate(sizes):
            tasks.append(asyncio.create_task(waiter(i, requests, tokens)))
            await asyncio.sleep(0)  # each waiter queues before the next one comes
        for i in cancel:
            if i < len(tasks) and i > 0:
                tasks[i].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await budget.aclose()
        return served

    clock = VirtualClock()
    served = asyncio.run(_with_clock(clock, run(clock)))
    assert served == sorted(served)
    assert set(served) >= {i for i in range(len(sizes)) if i not in cancel}


def test_local_budget_paces_a_greedy_caller_at_the_limit() -> None:
    async def run(clock: VirtualClock) -> tuple[list[float], float]:
        budget = LocalBudget(QuotaLimits(600, None), config=CONFIG, clock=clock, sleep=clock.sleep)
        assert isinstance(budget, Budget)
        grants: list[float] = []
        waited = 0.0
        while clock.now < 180.0:
            waited += await budget.acquire()
            grants.append(clock.now)
        await budget.aclose()
        return grants, waited

    clock = VirtualClock()
    grants, waited = asyncio.run(_with_clock(clock, run(clock)))
    spends = [(t, 1.0, 0.0) for t in grants]
    assert max_window(spends, 60.0, 1) <= 600
    assert sum(1 for t in grants if 120.0 <= t < 180.0) >= 0.95 * 600
    assert waited > 0


def test_local_budget_learns_lower_limits_and_backs_off() -> None:
    async def run(clock: VirtualClock) -> None:
        budget = LocalBudget(
            QuotaLimits(None, 100_000), config=CONFIG, clock=clock, sleep=clock.sleep
        )
        budget.learn(QuotaLimits(60, 200_000))
        assert budget.limits == QuotaLimits(60, 100_000)  # never above what either says
        await budget.acquire(tokens=10)
        budget.back_off(10.0)
        assert await budget.acquire(tokens=10) >= 10.0
        unlimited = LocalBudget(QuotaLimits(None, None), clock=clock, sleep=clock.sleep)
        assert await unlimited.acquire(requests=1_000, tokens=10**9) == 0.0

    clock = VirtualClock()
    asyncio.run(_with_clock(clock, run(clock)))
