"""Fair claims against real Postgres (ADR 0006): the statement takes what the rule's model
(tests/support/fair_claims.py) takes, and four consumers serve small owners beside a backlog."""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docpipe_queue import jobs as queue
from docpipe_queue.consumer import Consumer
from docpipe_queue.database import create_pool
from docpipe_queue.jobs import ClaimedJob, NewJob
from tests.integration.queue.consuming import all_finished, config, wait_until
from tests.support.fair_claims import ReadyJob, claim

OWNERS = ["", "a", "b", "c", "d", "e"]
jobs_strategy = st.lists(
    st.tuples(st.sampled_from(OWNERS), st.integers(0, 2), st.integers(0, 5)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    jobs=jobs_strategy,
    limits=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    cursor=st.sampled_from(OWNERS),
)
async def test_the_claim_takes_what_the_rule_says(
    pool: asyncpg.Pool, jobs: list[tuple[str, int, int]], limits: list[int], cursor: str
) -> None:
    await pool.execute("delete from docpipe.jobs")
    start = datetime.now(UTC) - timedelta(hours=1)
    ids = await queue.enqueue(
        pool,
        [
            NewJob(
                pipeline="p", owner=owner, priority=priority, run_after=start + timedelta(seconds=s)
            )
            for owner, priority, s in jobs
        ],
    )
    # Jobs of another pipeline and a job not ready yet never take part.
    await queue.enqueue(
        pool,
        [
            NewJob(pipeline="other", owner="a"),
            NewJob(pipeline="p", owner="f", run_after=datetime.now(UTC) + timedelta(hours=1)),
        ],
    )
    ready = [
        ReadyJob(job_id, owner, priority, s)
        for job_id, (owner, priority, s) in zip(ids, jobs, strict=True)
    ]
    for limit in limits:
        expected = claim(ready, cursor, limit, idle_owners=["f"])
        got = await queue.claim(pool, "p", limit, lease_s=30, worker="w", after_owner=cursor)
        assert [j.id for j in got] == [j.id for j in expected.jobs], (jobs, limit, cursor)
        taken = {j.id for j in got}
        ready = [j for j in ready if j.id not in taken]
        cursor = expected.cursor if got else cursor


async def test_the_rotation_continues_where_the_last_claim_ended(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="rot", owner=o) for o in "xyz" * 4])
    first = await queue.claim(pool, "rot", 2, lease_s=30, worker="w", after_owner="")
    second = await queue.claim(pool, "rot", 2, lease_s=30, worker="w")
    third = await queue.claim(pool, "rot", 2, lease_s=30, worker="w")
    assert [[j.owner for j in c] for c in (first, second, third)] == [
        ["x", "y"],
        ["z", "x"],
        ["y", "z"],
    ]


async def test_unfair_claims_keep_the_order_before_fairness(pool: asyncpg.Pool) -> None:
    await queue.enqueue(pool, [NewJob(pipeline="p", owner="a") for _ in range(5)])
    small = await queue.enqueue(pool, [NewJob(pipeline="p", owner="b")])
    unfair = await queue.claim(pool, "p", 3, lease_s=30, worker="w", fair=False)
    assert {j.owner for j in unfair} == {"a"}
    fair = await queue.claim(pool, "p", 2, lease_s=30, worker="w", after_owner="")
    assert [j.owner for j in fair] == ["a", "b"]
    assert fair[1].id == small[0]


async def test_document_jobs_carry_their_documents_owner(pool: asyncpg.Pool) -> None:
    from docpipe_queue.documents import add_document

    async with pool.acquire() as conn:
        added = await add_document(
            conn,
            pipeline="p",
            owner="alice",
            filename="a.txt",
            content_type="text/plain",
            data=b"hello",
        )
    (job,) = await queue.claim(pool, "p", 5, lease_s=30, worker="w")
    assert (job.id, job.owner) == (added.job_id, "alice")


BACKLOG = 20_000
SMALL_OWNERS = ("B", "C", "D", "E")


async def test_four_consumers_serve_small_owners_while_a_backlog_drains(
    database_url: str,
) -> None:
    runs: collections.Counter[int] = collections.Counter()
    waits: list[float] = []
    backlog_left = BACKLOG
    backlog_done_at: float | None = None

    async def handler(job: ClaimedJob) -> None:
        nonlocal backlog_left, backlog_done_at
        runs[job.id] += 1
        if job.owner == "A":
            backlog_left -= 1
            if backlog_left == 0:
                backlog_done_at = time.monotonic()
        else:
            waits.append(time.monotonic() - enqueued[job.id])
        await asyncio.sleep(0.005)

    enqueued: dict[int, float] = {}
    pools = [await create_pool(database_url, min_size=2, max_size=4) for _ in range(4)]
    try:
        ids = await queue.enqueue(pools[0], [NewJob(pipeline="p", owner="A")] * BACKLOG)
        consumers = [
            Consumer(
                p,
                handler,
                config(concurrency=25, batch_size=25, worker_id=f"w{i}", fair_claims=True),
            )
            for i, p in enumerate(pools)
        ]
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        small: list[int] = []
        # Owners B to E add a job each every 0.2 s while A's backlog drains.
        while backlog_left > 0:
            async with pools[0].acquire() as conn, conn.transaction():
                # Recorded before the commit makes them claimable: the wait is never short.
                now = time.monotonic()
                new = await queue.enqueue(
                    conn, [NewJob(pipeline="p", owner=o) for o in SMALL_OWNERS]
                )
                enqueued.update(dict.fromkeys(new, now))
            small += new
            await asyncio.sleep(0.2)
        await wait_until(all_finished(pools[0]), timeout_s=60)
        for c in consumers:
            await c.drain(grace_s=5)
        await asyncio.gather(*tasks)
        assert sorted(runs) == sorted(ids + small)
        assert set(runs.values()) == {1}, "every job processed exactly once"
        statuses = await pools[0].fetch("select status, count(*) from docpipe.jobs group by status")
        assert {r[0]: r[1] for r in statuses} == {"succeeded": BACKLOG + len(small)}
        assert len(small) >= 8 * len(SMALL_OWNERS), "the backlog drained too fast to tell"
        # Served while A's backlog drained, not after it: their waits stay small.
        waits.sort()
        p95 = waits[int(len(waits) * 0.95) - 1]
        assert p95 < 1.0, f"p95 wait {p95:.2f} s, waits {waits[-5:]}"
        assert backlog_done_at is not None
    finally:
        for p in pools:
            await p.close()
