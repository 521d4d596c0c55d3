"""The consumer loop against real Postgres: exactly-once completion under concurrency, retries
and dead jobs, the concurrency bound, slot refills, canaries and graceful drain."""

from __future__ import annotations

import asyncio
import collections
import time

import asyncpg
import pytest

from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.database import create_pool
from docpipe_queue.jobs import ClaimedJob, NewJob
from docpipe_queue.retry import RetryPolicy
from tests.integration.queue.consuming import all_finished, config, running, wait_until


async def test_four_consumers_complete_5000_jobs_exactly_once(database_url: str) -> None:
    runs: collections.Counter[int] = collections.Counter()

    async def handler(job: ClaimedJob) -> None:
        runs[job.id] += 1
        await asyncio.sleep(0)

    pools = [await create_pool(database_url, min_size=2, max_size=4) for _ in range(4)]
    try:
        ids = await queue.enqueue(pools[0], [NewJob(pipeline="p") for _ in range(5000)])
        consumers = [
            Consumer(p, handler, config(concurrency=50, batch_size=50, worker_id=f"w{i}"))
            for i, p in enumerate(pools)
        ]
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        await wait_until(all_finished(pools[0]), timeout_s=60)
        for c in consumers:
            await c.drain(grace_s=5)
        await asyncio.gather(*tasks)
        assert sorted(runs) == sorted(ids)
        assert set(runs.values()) == {1}
        rows = await pools[0].fetch("select status, count(*) from docpipe.jobs group by status")
        assert {r[0]: r[1] for r in rows} == {"succeeded": 5000}
        workers = await pools[0].fetch("select distinct worker from docpipe.jobs")
        assert len(workers) == 4, "every consumer took a share"
    finally:
        for p in pools:
            await p.close()


async def test_transient_error_retries_after_the_services_retry_after(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    seen: list[float] = []

    async def flaky(job: ClaimedJob) -> None:
        seen.append(time.monotonic())
        if job.attempt == 1:
            raise TransientError("429 from openai", retry_after=0.5)

    policy = RetryPolicy(base_s=0.01, cap_s=0.02)
    async with running(Consumer(pool, flaky, config(retry_policy=policy))):
        await wait_until(all_finished(pool), timeout_s=10)
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.45
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "succeeded",
        2,
        "429 from openai",
    )


async def test_permanent_error_goes_dead_with_its_message(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=5)])
    calls = 0

    async def broken(job: ClaimedJob) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("report.xyz: unsupported content type")

    async with running(Consumer(pool, broken, config())):
        await wait_until(all_finished(pool), timeout_s=10)
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["last_error"], calls) == (
        "dead",
        "report.xyz: unsupported content type",
        1,
    )


async def test_crashing_handler_is_retried_until_dead(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=3)])

    async def crashes(job: ClaimedJob) -> None:
        raise KeyError("missing")

    policy = RetryPolicy(base_s=0.01, cap_s=0.02)
    async with running(Consumer(pool, crashes, config(retry_policy=policy))):
        await wait_until(all_finished(pool), timeout_s=10)
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("dead", 3, "KeyError: 'missing'")


async def test_drain_finishes_short_jobs_and_releases_long_ones_at_once(
    pool: asyncpg.Pool,
) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p", payload={"s": s}) for s in (0.1, 0.1, 30)])
    started = 0

    async def handler(job: ClaimedJob) -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(job.payload["s"])

    consumer = Consumer(pool, handler, config())
    task = asyncio.create_task(consumer.run())
    await wait_until(lambda: asyncio.sleep(0, started == 3), timeout_s=5)
    t0 = time.monotonic()
    await consumer.drain(grace_s=0.5)
    await task
    assert time.monotonic() - t0 < 2
    rows = await pool.fetch("select status, attempts from docpipe.jobs order by id")
    assert [(r[0], r[1]) for r in rows] == [("succeeded", 1), ("succeeded", 1), ("queued", 0)]


async def test_claim_never_exceeds_concurrency(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(40)])
    peak = 0
    current = 0

    async def handler(job: ClaimedJob) -> None:
        nonlocal peak, current
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.02)
        current -= 1

    consumer = Consumer(pool, handler, config(concurrency=3, batch_size=10))
    async with running(consumer):
        await wait_until(all_finished(pool), timeout_s=10)
    assert peak == 3


async def test_a_single_freed_slot_is_refilled_without_waiting_for_others(
    pool: asyncpg.Pool,
) -> None:
    # Seven slow jobs hold seven of eight slots; one quick job frees the eighth, and the job
    # waiting in the queue must take it now, not when the slow ones end.
    durations = [0.05] + [3.0] * 7
    await queue.enqueue(pool, [NewJob(pipeline="p", payload={"s": s}) for s in durations])
    await queue.enqueue(pool, [NewJob(pipeline="p", payload={"s": 0.0, "last": True})])
    started: dict[str, float] = {}

    async def handler(job: ClaimedJob) -> None:
        started.setdefault("first", time.monotonic())
        if job.payload.get("last"):
            started["last"] = time.monotonic()
        await asyncio.sleep(job.payload["s"])

    consumer = Consumer(pool, handler, config(concurrency=8, batch_size=8))
    task = asyncio.create_task(consumer.run())
    await wait_until(lambda: asyncio.sleep(0, "last" in started), timeout_s=5)
    await consumer.drain(grace_s=0)
    await task
    assert started["last"] - started["first"] < 1.0


async def test_a_canary_consumer_never_makes_a_job_dead(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=1)])
    calls = 0

    async def broken(job: ClaimedJob) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("the new revision cannot parse anything")

    policy = RetryPolicy(base_s=0.01, cap_s=0.01)
    canary = Consumer(pool, broken, config(count_failures=False, retry_policy=policy))
    async with running(canary):
        await wait_until(lambda: asyncio.sleep(0, calls >= 3), timeout_s=10)
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("queued", 0)


async def test_drain_while_a_failure_is_being_recorded_still_stops_the_consumer(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recording the failure outlasts drain()'s grace, so drain cancels the job mid-record (what
    # CPU load made happen in CI): the job must still leave the running set, or run() never
    # returns.
    await queue.enqueue(pool, [NewJob(pipeline="p")])
    recording = asyncio.Event()
    real_fail = queue.fail

    async def slow_fail(*args: object, **kwargs: object) -> object:
        recording.set()
        await asyncio.sleep(3600)
        return await real_fail(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(queue, "fail", slow_fail)

    async def failing(job: ClaimedJob) -> None:
        raise TransientError("broken")

    consumer = Consumer(pool, failing, config(concurrency=1, batch_size=1))
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(recording.wait(), 10)
    await consumer.drain(grace_s=0.1)
    await asyncio.wait_for(task, 10)
    assert consumer.in_flight == 0
