"""The canary's exact share (migration 0011) against real Postgres with real consumers: the claim
statement agrees with the pure rule (docpipe_queue.shares); a canary at weight 0.2 gets 0.2 ± 20 %
of the jobs' first claims whether it fails every job at once or works five times slower than the
stable workers; no job is lost or done twice; a canary's share goes back to the stable workers when
it stops (at once), when its row expires, and after the hold when it is stuck."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from docpipe_contracts.errors import TransientError
from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.jobs import ClaimedJob, NewJob
from docpipe_queue.retry import RetryPolicy
from docpipe_queue.shares import buckets_for, in_share
from tests.integration.queue.consuming import all_finished, config, running, wait_until

WEIGHT = 0.2
TOLERANCE = 0.2  # relative: the share is within WEIGHT * (1 ± TOLERANCE)
STABLE_JOB_S = 0.02
ARRIVAL_BATCH = 20
ARRIVAL_EVERY_S = 0.1
JOBS = 600
FAST_RETRY = RetryPolicy(base_s=0.01, cap_s=0.02)


async def _share(pool: asyncpg.Pool, *, lease_s: float = 30.0, hold_s: float = 30.0) -> int:
    buckets = buckets_for(WEIGHT)
    await queue.register_canary(
        pool,
        "p",
        worker="canary-0",
        revision="new",
        buckets=buckets,
        hold_s=hold_s,
        lease_s=lease_s,
    )
    return buckets


@pytest.mark.parametrize("fair", [True, False])
async def test_the_claim_statement_splits_jobs_as_the_pure_rule_does(
    pool: asyncpg.Pool, fair: bool
) -> None:
    ids = await queue.enqueue(pool, [NewJob(pipeline="p", owner=f"o{i % 3}") for i in range(400)])
    buckets = await _share(pool)
    canary = await queue.claim(
        pool, "p", 1000, lease_s=30, worker="c", fair=fair, canary_buckets=buckets
    )
    assert {j.id for j in canary} == {i for i in ids if in_share(i, buckets)}
    stable = await queue.claim(pool, "p", 1000, lease_s=30, worker="s", fair=fair)
    assert {j.id for j in stable} == {i for i in ids if not in_share(i, buckets)}


async def test_a_job_a_canary_failed_goes_to_the_stable_workers(pool: asyncpg.Pool) -> None:
    ids = await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(50)])
    buckets = await _share(pool)
    claimed = await queue.claim(pool, "p", 1, lease_s=30, worker="c", canary_buckets=buckets)
    (job,) = claimed
    await queue.fail(pool, job.lease, "broken", delay_s=0, counted=False, revision="new")
    row = await queue.get(pool, job.id)
    assert row is not None
    assert row["status"] == "queued"
    assert await pool.fetchval("select handed_back_by from docpipe.jobs where id = $1", job.id) == (
        "new"
    )
    again = await queue.claim(pool, "p", 100, lease_s=30, worker="c", canary_buckets=buckets)
    assert job.id not in {j.id for j in again}
    stable = await queue.claim(pool, "p", 100, lease_s=30, worker="s")
    assert job.id in {j.id for j in stable}
    assert len(again) + len(stable) == len(ids)


async def _first_claims(pool: asyncpg.Pool, canary_slow: bool) -> tuple[float, Counter[int]]:
    """Jobs arrive steadily; two stable consumers and a canary at WEIGHT drain them. Returns the
    canary's share of the jobs' first claims and how often each job succeeded."""
    first: dict[int, str] = {}
    succeeded: Counter[int] = Counter()

    async def stable(job: ClaimedJob) -> None:
        first.setdefault(job.id, "stable")
        await asyncio.sleep(STABLE_JOB_S)
        succeeded[job.id] += 1

    async def canary(job: ClaimedJob) -> None:
        first.setdefault(job.id, "canary")
        if not canary_slow:
            raise TransientError("the new revision fails every job at once")
        await asyncio.sleep(5 * STABLE_JOB_S)
        succeeded[job.id] += 1

    stables = [
        Consumer(pool, stable, config(worker_id=f"s{i}", retry_policy=FAST_RETRY)) for i in range(2)
    ]
    canary_consumer = Consumer(
        pool,
        canary,
        config(
            worker_id="canary",
            revision="new",
            canary_weight=WEIGHT,
            count_failures=False,
            retry_policy=FAST_RETRY,
        ),
    )
    async with running(canary_consumer), running(stables[0]), running(stables[1]):
        # Jobs queued before the canary registered are the stable workers': not what is measured.
        await wait_until(_registered(pool, 1), timeout_s=5)
        for _ in range(JOBS // ARRIVAL_BATCH):
            await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(ARRIVAL_BATCH)])
            await asyncio.sleep(ARRIVAL_EVERY_S)
        await wait_until(all_finished(pool), timeout_s=30)
    assert len(first) == JOBS
    share = sum(1 for who in first.values() if who == "canary") / JOBS
    return share, succeeded


@pytest.mark.parametrize("canary_slow", [False, True], ids=["fails-fast", "five-times-slower"])
async def test_a_canary_gets_its_weight_of_the_first_claims_whatever_its_speed(
    pool: asyncpg.Pool, canary_slow: bool
) -> None:
    share, succeeded = await _first_claims(pool, canary_slow)
    assert abs(share - WEIGHT) <= TOLERANCE * WEIGHT, share
    assert len(succeeded) == JOBS, "every job done"
    assert set(succeeded.values()) == {1}, "no job done twice"
    statuses = await pool.fetch("select status, count(*) from docpipe.jobs group by status")
    assert {r[0]: r[1] for r in statuses} == {"succeeded": JOBS}


async def test_a_stopped_canary_hands_its_share_to_the_stable_workers_at_once(
    pool: asyncpg.Pool,
) -> None:
    canary = Consumer(pool, _noop, config(worker_id="canary", canary_weight=WEIGHT))
    async with running(canary):
        await wait_until(_registered(pool, 1), timeout_s=5)
    await wait_until(_registered(pool, 0), timeout_s=5)
    await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(100)])
    stable = Consumer(pool, _noop, config(worker_id="s"))  # lease 5 s: the hold would be 5 s
    started = time.monotonic()
    async with running(stable):
        await wait_until(all_finished(pool), timeout_s=10)
    assert time.monotonic() - started < config().lease_s, "the share was held back"


async def test_a_crashed_canarys_share_goes_to_the_stable_workers_when_its_row_expires(
    pool: asyncpg.Pool,
) -> None:
    await _share(pool, lease_s=0.5, hold_s=3600)  # registered, then never renewed
    await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(100)])
    await asyncio.sleep(0.6)
    claimed = await queue.claim(pool, "p", 1000, lease_s=30, worker="s")
    assert len(claimed) == 100


async def test_a_stuck_canarys_share_goes_to_the_stable_workers_after_the_hold(
    pool: asyncpg.Pool,
) -> None:
    hold_s = 2.0
    buckets = await _share(pool, lease_s=60, hold_s=hold_s)  # alive, but claims nothing
    ids = await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(100)])
    done_at: dict[int, float] = {}

    async def handler(job: ClaimedJob) -> None:
        done_at[job.id] = time.monotonic()

    enqueued = time.monotonic()
    async with running(Consumer(pool, handler, config(worker_id="s"))):
        await wait_until(all_finished(pool), timeout_s=10)
    share = [i for i in ids if in_share(i, buckets)]
    others = [i for i in ids if not in_share(i, buckets)]
    assert share
    assert others
    # The others at once; the share only once it had waited the hold.
    assert max(done_at[i] for i in others) - enqueued < hold_s
    assert min(done_at[i] for i in share) - enqueued >= hold_s * 0.9


async def _noop(job: ClaimedJob) -> None:
    return None


def _registered(pool: asyncpg.Pool, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        n = await pool.fetchval("select count(*) from docpipe.canary_shares")
        return bool(n == count)

    return check


async def test_workers_wait_for_the_jobs_they_may_claim_not_for_the_others(
    pool: asyncpg.Pool,
) -> None:
    # Without it a stable worker facing only the canary's jobs (or a canary facing only the
    # stable's) would find ready jobs, claim none and claim again at once, in a loop.
    hold_s = 60.0
    buckets = await _share(pool, hold_s=hold_s)
    ids = await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(30)])
    share = [i for i in ids if in_share(i, buckets)]
    await pool.execute(
        "delete from docpipe.jobs where not (id = any($1::bigint[]))", share
    )  # only the canary's jobs are queued
    ready = await pool.fetchval("select min(run_after) from docpipe.jobs")
    stable_next = await queue.next_run_after(pool, "p")
    canary_next = await queue.next_run_after(pool, "p", canary_buckets=buckets)
    assert stable_next is not None
    assert canary_next == ready
    assert (stable_next - ready).total_seconds() == hold_s
    await pool.execute("delete from docpipe.jobs")
    await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(30)])
    await pool.execute(
        "delete from docpipe.jobs where ((id % 10000) * 6181) % 10000 < $1", buckets
    )  # only the stable's jobs are queued
    assert await queue.next_run_after(pool, "p", canary_buckets=buckets) is None
