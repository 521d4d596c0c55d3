"""The queue's statements against real Postgres: enqueue, claim order, leases, failures, cancel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from docpipe_queue import jobs as queue
from docpipe_queue import queries, statistics
from docpipe_queue.jobs import NewJob


async def _status(pool: asyncpg.Pool, job_id: int) -> str:
    status: str = await pool.fetchval("select status from docpipe.jobs where id = $1", job_id)
    return status


async def test_enqueue_is_part_of_the_callers_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        ids = await queue.enqueue(conn, [NewJob(pipeline="p"), NewJob(pipeline="p")])
        assert len(ids) == 2
        await tx.rollback()
    assert await pool.fetchval("select count(*) from docpipe.jobs") == 0


async def test_claim_takes_priority_first_then_oldest(pool: asyncpg.Pool) -> None:
    past = datetime.now(UTC) - timedelta(minutes=5)
    low_old = (await queue.enqueue(pool, [NewJob(pipeline="p", run_after=past)]))[0]
    low_new = (await queue.enqueue(pool, [NewJob(pipeline="p")]))[0]
    high = (await queue.enqueue(pool, [NewJob(pipeline="p", priority=5)]))[0]
    claimed = await queue.claim(pool, "p", 10, lease_s=30, worker="w")
    assert [j.id for j in claimed] == [high, low_old, low_new]


async def test_claim_skips_jobs_scheduled_for_later(pool: asyncpg.Pool) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.enqueue(pool, [NewJob(pipeline="p", run_after=later)])
    assert await queue.claim(pool, "p", 10, lease_s=30, worker="w") == []


async def test_claim_takes_only_its_own_pipelines_jobs(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="a"), NewJob(pipeline="b")])
    claimed = await queue.claim(pool, "a", 10, lease_s=30, worker="w")
    assert [j.pipeline for j in claimed] == ["a"]
    assert await pool.fetchval("select pipeline from docpipe.jobs where status = 'queued'") == "b"


async def test_claim_records_attempt_and_lease(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p", payload={"k": 1}, correlation_id="c-1")])
    (job,) = await queue.claim(pool, "p", 10, lease_s=30, worker="w1")
    assert job.attempt == 1
    assert job.payload == {"k": 1}
    assert job.correlation_id == "c-1"
    row = await queue.get(pool, job.id)
    assert row is not None
    assert row["status"] == "running"
    assert row["worker"] == "w1"
    assert row["lease_expires_at"] > datetime.now(UTC) + timedelta(seconds=25)


async def test_complete_needs_the_current_lease(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    forged = queue.Lease(job_id, uuid.uuid4())
    assert await queue.complete(pool, [forged]) == set()
    assert await _status(pool, job_id) == "running"
    assert await queue.complete(pool, [job.lease]) == {job_id}
    assert await _status(pool, job_id) == "succeeded"


async def test_late_completion_after_the_lease_expired_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (stale,) = await queue.claim(pool, "p", 1, lease_s=0.05, worker="slow")
    await pool.execute("select pg_sleep(0.1)")
    rescued = await queue.rescue_expired(pool)
    assert rescued.requeued == {"p": 1}
    (fresh,) = await queue.claim(pool, "p", 1, lease_s=30, worker="fast")
    assert fresh.attempt == 2
    assert await queue.complete(pool, [stale.lease]) == set()
    assert await _status(pool, job_id) == "running"
    assert await queue.complete(pool, [fresh.lease]) == {job_id}


async def test_heartbeat_extends_held_leases_and_reports_lost_ones(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p"), NewJob(pipeline="p")])
    kept, cancelled = await queue.claim(pool, "p", 2, lease_s=0.5, worker="w")
    assert await queue.cancel(pool, cancelled.id)
    alive = await queue.heartbeat(pool, [kept.lease, cancelled.lease], lease_s=60)
    assert alive == {kept.id}
    await pool.execute("select pg_sleep(0.6)")
    assert (await queue.rescue_expired(pool)).total == 0


async def test_rescue_buries_a_job_that_used_its_last_attempt(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=1)])
    await queue.claim(pool, "p", 1, lease_s=0.01, worker="crashy")
    await pool.execute("select pg_sleep(0.05)")
    result = await queue.rescue_expired(pool)
    assert result.dead == {"p": 1}
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["status"] == "dead"
    assert "lease expired: worker crashy" in row["last_error"]


async def test_transient_failure_requeues_after_the_delay(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    outcome = await queue.fail(pool, job.lease, "503 from openai", delay_s=120)
    assert outcome.status == "queued"
    assert outcome.run_after is not None
    wait = (outcome.run_after - datetime.now(UTC)).total_seconds()
    assert 110 < wait <= 120
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["last_error"] == "503 from openai"
    assert await queue.claim(pool, "p", 1, lease_s=30, worker="w") == []


async def test_permanent_failure_goes_dead_at_once(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=5)])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    outcome = await queue.fail(pool, job.lease, "400: input too long", delay_s=1, permanent=True)
    assert outcome.status == "dead"
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("dead", 1, "400: input too long")


async def test_job_goes_dead_after_max_attempts_with_its_last_error(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=3)])
    statuses = []
    for attempt in range(1, 4):
        (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
        assert job.attempt == attempt
        outcome = await queue.fail(pool, job.lease, f"timeout #{attempt}", delay_s=0)
        statuses.append(outcome.status)
    assert statuses == ["queued", "queued", "dead"]
    row = await queue.get(pool, job_id)
    assert row is not None
    assert row["last_error"] == "timeout #3"
    assert row["finished_at"] is not None


async def test_uncounted_failures_hand_the_attempt_back_and_never_kill(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=2)])
    for permanent in (False, True, True):
        (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="canary")
        assert job.attempt == 1
        outcome = await queue.fail(
            pool, job.lease, "canary broke", delay_s=0, permanent=permanent, counted=False
        )
        assert outcome.status == "queued"
    row = await queue.get(pool, job_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == ("queued", 0, "canary broke")


async def test_dead_job_can_be_retried_by_hand_with_fresh_attempts(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p", max_attempts=1)])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    await queue.fail(pool, job.lease, "boom", delay_s=0)
    assert await queue.retry(pool, job_id)
    (again,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert (again.id, again.attempt) == (job_id, 1)
    assert not await queue.retry(pool, job_id), "a running job is not retried by hand"


async def test_cancel_stops_a_queued_job_and_refuses_a_finished_one(pool: asyncpg.Pool) -> None:
    queued, done = await queue.enqueue(pool, [NewJob(pipeline="p"), NewJob(pipeline="p")])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert job.id == queued
    await queue.enqueue(pool, [])
    assert await queue.cancel(pool, done)
    assert await _status(pool, done) == "cancelled"
    assert await queue.complete(pool, [job.lease]) == {queued}
    assert not await queue.cancel(pool, queued)
    assert not await queue.cancel(pool, 10**9)


async def test_cancelled_running_job_refuses_its_workers_completion(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert await queue.cancel(pool, job_id)
    assert await queue.complete(pool, [job.lease]) == set()
    assert (await queue.fail(pool, job.lease, "x", delay_s=0)).status is None
    assert await _status(pool, job_id) == "cancelled"


async def test_release_returns_jobs_without_spending_an_attempt(pool: asyncpg.Pool) -> None:
    (job_id,) = await queue.enqueue(pool, [NewJob(pipeline="p")])
    (job,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
    assert await queue.release(pool, [job.lease]) == {job_id}
    (again,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w2")
    assert again.attempt == 1


async def test_stats_count_ready_scheduled_and_running_per_pipeline(pool: asyncpg.Pool) -> None:
    old = datetime.now(UTC) - timedelta(seconds=90)
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.enqueue(
        pool,
        [
            NewJob(pipeline="a", run_after=old),
            NewJob(pipeline="a"),
            NewJob(pipeline="a", run_after=later),
            NewJob(pipeline="b"),
        ],
    )
    await queue.claim(pool, "b", 1, lease_s=30, worker="w")
    by_name = {s.pipeline: s for s in await statistics.stats(pool)}
    a, b = by_name["a"], by_name["b"]
    assert (a.ready, a.scheduled, a.in_flight) == (2, 1, 0)
    assert 89 < a.oldest_ready_age_s < 100
    assert (b.ready, b.scheduled, b.in_flight, b.oldest_ready_age_s) == (0, 0, 1, 0.0)
    assert [s.pipeline for s in await statistics.stats(pool, ["b"])] == ["b"]


@pytest.mark.parametrize(
    ("name", "args", "indexes"),
    [
        ("CLAIM", ("p", 10, uuid.uuid4(), 30.0, "w", "", None), ["jobs_ready_owner", "jobs_ready"]),
        ("CLAIM_IN_ORDER", ("p", 10, uuid.uuid4(), 30.0, "w", None), ["jobs_ready"]),
        ("RESCUE", (10,), ["jobs_leased"]),
        ("STATS", (None,), ["jobs_ready", "jobs_leased"]),
        ("NEXT_RUN_AFTER", ("p", None), ["jobs_ready"]),
    ],
)
async def test_hot_queries_read_their_partial_index(
    pool: asyncpg.Pool, name: str, args: tuple[object, ...], indexes: list[str]
) -> None:
    # Finished jobs pile up; the hot queries must reach live jobs through an index, not a scan.
    await pool.execute(
        "insert into docpipe.jobs (pipeline, status, finished_at)"
        " select 'p', 'succeeded', now() from generate_series(1, 5000)"
    )
    await pool.execute("analyze docpipe.jobs")
    async with pool.acquire() as conn:
        await conn.execute("set enable_seqscan = off")
        # STATS is the statistics module's (read-only, what the operator may import).
        statement = getattr(statistics if name == "STATS" else queries, name)
        plan = "\n".join(r[0] for r in await conn.fetch("explain " + statement, *args))
    for index in indexes:
        assert index in plan, plan
    assert "Seq Scan on jobs" not in plan, plan


async def test_purge_deletes_old_finished_jobs_only(pool: asyncpg.Pool) -> None:
    ids = await queue.enqueue(pool, [NewJob(pipeline="p") for _ in range(6)])
    old_done, old_cancelled, old_dead, new_done, running, queued = ids
    for job_id, status in (
        (old_done, "succeeded"),
        (old_cancelled, "cancelled"),
        (old_dead, "dead"),
        (new_done, "succeeded"),
        (running, "running"),
    ):
        await pool.execute(
            "update docpipe.jobs set status = $2, finished_at = case when $2 = 'running'"
            " then null else now() - interval '10 days' end where id = $1",
            job_id,
            status,
        )
    await pool.execute("update docpipe.jobs set finished_at = now() where id = $1", new_done)
    seen: list[tuple[int, int]] = []

    deleted = await queue.purge(
        pool, older_than_s=7 * 86_400, ids_per_batch=2, on_progress=lambda d, t: seen.append((d, t))
    )
    assert deleted == 2
    left = {r[0] for r in await pool.fetch("select id from docpipe.jobs")}
    assert left == {old_dead, new_done, running, queued}
    assert seen == [(2, 6), (4, 6), (6, 6)]

    assert await queue.purge(pool, older_than_s=7 * 86_400, include_dead=True) == 1
    assert await queue.purge(pool, older_than_s=0, include_dead=True) == 1  # new_done
    left = {r[0] for r in await pool.fetch("select id from docpipe.jobs")}
    assert left == {running, queued}


async def test_purge_of_an_empty_queue_deletes_nothing(pool: asyncpg.Pool) -> None:
    assert await queue.purge(pool, older_than_s=0) == 0
