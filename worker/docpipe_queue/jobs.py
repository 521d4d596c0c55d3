"""The Postgres job queue: enqueue, claim under a lease, complete, fail, release, rescue, cancel.

Thin: each method runs one statement from `docpipe_queue.queries`; the retry schedule is decided
by `docpipe_queue.retry`, the consuming loop lives in `docpipe_queue.consumer`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue import queries

# asyncpg accepts a pool or a connection wherever a query runs.
Executor = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue."""

    pipeline: str
    kind: str = "ingest"
    document_id: uuid.UUID | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 5
    run_after: datetime | None = None
    correlation_id: str | None = None
    # Whose work it is: fair claims take turns between owners (ADR 0006). A document's job
    # carries the document's owner; '' is one more owner (jobs of no one in particular).
    owner: str = ""
    # The W3C traceparent of the span that queued it (docpipe_contracts.tracing): the worker's
    # job span continues that trace. None when tracing is off.
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to finish one claimed job: valid while the job's lease token is still this one."""

    job_id: int
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker holds under `lease`; `attempt` counts this run (1 for the first)."""

    lease: Lease
    pipeline: str
    kind: str
    document_id: uuid.UUID | None
    payload: Mapping[str, Any]
    attempt: int
    max_attempts: int
    correlation_id: str | None
    owner: str = ""
    # The traceparent stored with the job (NewJob.trace_context), for the job span's parent.
    trace_context: str | None = None

    @property
    def id(self) -> int:
        return self.lease.job_id


@dataclass(frozen=True, slots=True)
class FailOutcome:
    """What a failure did: 'queued' (retry at `run_after`), 'dead', or None (lease lost)."""

    status: str | None
    run_after: datetime | None


@dataclass(frozen=True, slots=True)
class RescueResult:
    requeued: dict[str, int]
    dead: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.requeued.values()) + sum(self.dead.values())


def _lease_arrays(leases: Iterable[Lease]) -> tuple[list[int], list[uuid.UUID]]:
    ids: list[int] = []
    tokens: list[uuid.UUID] = []
    for lease in leases:
        ids.append(lease.job_id)
        tokens.append(lease.token)
    return ids, tokens


async def enqueue(conn: Executor, jobs: Sequence[NewJob]) -> list[int]:
    """Insert `jobs` in one statement, in the caller's transaction when `conn` is in one."""
    if not jobs:
        return []
    rows = await conn.fetch(
        queries.ENQUEUE,
        [j.pipeline for j in jobs],
        [j.kind for j in jobs],
        [j.document_id for j in jobs],
        [dict(j.payload) for j in jobs],
        [j.priority for j in jobs],
        [j.max_attempts for j in jobs],
        [j.run_after for j in jobs],
        [j.correlation_id for j in jobs],
        [j.owner for j in jobs],
        [j.trace_context for j in jobs],
    )
    return [r[0] for r in rows]


# Where each pipeline's rotation of owners stands in this process: the owner served last by the
# previous fair claim (the next claim starts after it). Every claimer of the process shares it;
# processes rotate independently, each one fairly.
_rotation: dict[str, str] = {}


async def claim(
    conn: Executor,
    pipeline: str,
    limit: int,
    *,
    lease_s: float,
    worker: str,
    fair: bool = True,
    after_owner: str | None = None,
    canary_buckets: int | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` ready jobs of `pipeline` under one new lease, in claim order.

    Fair (the default, ADR 0006): owners take turns, each owner's jobs by priority then age; the
    rotation starts after `after_owner`, by default after the owner this process served last.
    Not fair: by priority then age, whoever the owner.
    `canary_buckets`: the worker is a canary and claims only its share of the jobs
    (`docpipe_queue.shares`); None: a stable worker, which leaves a live canary's share to it.
    """
    token = uuid.uuid4()
    if not fair:
        rows = await conn.fetch(
            queries.CLAIM_IN_ORDER, pipeline, limit, token, float(lease_s), worker, canary_buckets
        )
    else:
        cursor = _rotation.get(pipeline, "") if after_owner is None else after_owner
        rows = await conn.fetch(
            queries.CLAIM,
            pipeline,
            limit,
            token,
            float(lease_s),
            worker,
            cursor,
            canary_buckets,
        )
        if rows and rows[0]["cursor"] is not None:
            _rotation[pipeline] = rows[0]["cursor"]
    return [
        ClaimedJob(
            lease=Lease(r[0], token),
            pipeline=pipeline,
            kind=r[1],
            document_id=r[2],
            payload=r[3],
            attempt=r[4],
            max_attempts=r[5],
            correlation_id=r[6],
            owner=r[7],
            trace_context=r["trace_context"],
        )
        for r in rows
    ]


async def complete(conn: Executor, leases: Iterable[Lease]) -> set[int]:
    """Mark the jobs succeeded; return the ids completed (the others' leases were lost)."""
    ids, tokens = _lease_arrays(leases)
    if not ids:
        return set()
    rows = await conn.fetch(queries.COMPLETE, ids, tokens)
    return {r[0] for r in rows}


async def fail(
    conn: Executor,
    lease: Lease,
    error: str,
    *,
    delay_s: float,
    permanent: bool = False,
    counted: bool = True,
    revision: str | None = None,
) -> FailOutcome:
    """Record a failed attempt: back to the queue after `delay_s`, or dead when permanent or
    out of attempts. An uncounted failure (a canary's) gives the attempt back and never kills;
    the job records the canary's `revision` as the one that handed it back."""
    row = await conn.fetchrow(
        queries.FAIL, lease.job_id, lease.token, error, permanent, float(delay_s), counted, revision
    )
    if row is None:
        return FailOutcome(None, None)
    return FailOutcome(row[0], row[1])


async def release(conn: Executor, leases: Iterable[Lease]) -> set[int]:
    """Give jobs back to the queue at once, without counting the attempt; return those released."""
    ids, tokens = _lease_arrays(leases)
    if not ids:
        return set()
    rows = await conn.fetch(queries.RELEASE, ids, tokens)
    return {r[0] for r in rows}


async def hand_back(conn: Executor, lease: Lease, *, progress: Mapping[str, Any]) -> bool:
    """Give an unfinished job back to the queue between parts, behind the jobs already ready,
    with its `progress`: not a failed attempt, no backoff. False when the lease was lost (the job
    was cancelled, deleted or rescued first)."""
    row = await conn.fetchval(queries.HAND_BACK, lease.job_id, lease.token, dict(progress))
    return row is not None


async def heartbeat(conn: Executor, leases: Iterable[Lease], *, lease_s: float) -> set[int]:
    """Extend the leases; return the ids still held (a missing id was cancelled or rescued)."""
    ids, tokens = _lease_arrays(leases)
    if not ids:
        return set()
    rows = await conn.fetch(queries.HEARTBEAT, ids, tokens, float(lease_s))
    return {r[0] for r in rows}


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What became of a job whose lease a heartbeat could not renew."""

    job_id: int
    status: str | None  # None: the job is gone (its document was deleted)
    worker: str | None
    lease_token: uuid.UUID | None

    def completed_by(self, worker: str) -> bool:
        """The job succeeded under this worker: its own completion, not a lost lease."""
        return self.status == "succeeded" and self.worker == worker


async def lease_states(conn: Executor, leases: Iterable[Lease]) -> dict[int, LeaseState]:
    """The current state of the leases' jobs, by job id."""
    ids = [lease.job_id for lease in leases]
    rows = await conn.fetch(queries.LEASE_STATES, ids)
    found = {r[0]: LeaseState(r[0], r[1], r[2], r[3]) for r in rows}
    return {i: found.get(i, LeaseState(i, None, None, None)) for i in ids}


async def record_lease_lost(conn: Executor, lease: Lease, *, worker: str, error: str) -> bool:
    """Replace the rescue's 'crashed or unreachable' by what happened to a live worker."""
    row = await conn.fetchval(queries.RECORD_LEASE_LOST, lease.job_id, lease.token, error, worker)
    return row is not None


async def rescue_expired(conn: Executor, *, limit: int = 1000) -> RescueResult:
    """Requeue (or bury, when out of attempts) jobs whose lease expired."""
    rows = await conn.fetch(queries.RESCUE, limit)
    return RescueResult(
        requeued={r["pipeline"]: r["requeued"] for r in rows if r["requeued"]},
        dead={r["pipeline"]: r["dead"] for r in rows if r["dead"]},
    )


async def cancel(conn: Executor, job_id: int) -> bool:
    """Cancel a queued or running job; False when it had already finished or does not exist."""
    return await conn.fetchval(queries.CANCEL, job_id) is not None


async def retry(conn: Executor, job_id: int) -> bool:
    """Put a dead or cancelled job back in the queue with fresh attempts; False otherwise."""
    return await conn.fetchval(queries.RETRY, job_id) is not None


async def get(conn: Executor, job_id: int) -> asyncpg.Record | None:
    """The job's row, or None."""
    return await conn.fetchrow(queries.GET, job_id)


async def next_run_after(
    conn: Executor, pipeline: str, *, canary_buckets: int | None = None
) -> datetime | None:
    """When the earliest queued job of the pipeline that this worker may claim becomes
    claimable (None: nothing queued); `canary_buckets` as in `claim`."""
    value: datetime | None = await conn.fetchval(queries.NEXT_RUN_AFTER, pipeline, canary_buckets)
    return value


FINISHED_STATUSES = ("succeeded", "cancelled")


async def purge(
    conn: Executor,
    *,
    older_than_s: float,
    include_dead: bool = False,
    ids_per_batch: int = 50_000,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete jobs that finished more than `older_than_s` ago (succeeded and cancelled; dead too
    with `include_dead`); return how many. `on_progress(done_ids, total_ids)` follows the scan."""
    if older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
    if ids_per_batch < 1:
        raise ValueError(f"ids_per_batch must be >= 1, got {ids_per_batch}")
    statuses = [*FINISHED_STATUSES, "dead"] if include_dead else list(FINISHED_STATUSES)
    low, high = await conn.fetchrow(queries.ID_RANGE) or (None, None)
    if low is None or high is None:
        return 0
    deleted = 0
    total = high - low + 1
    for start in range(low, high + 1, ids_per_batch):
        status = await conn.execute(
            queries.PURGE_RANGE, start, start + ids_per_batch, statuses, float(older_than_s)
        )
        deleted += int(status.split()[-1])
        if on_progress is not None:
            on_progress(min(start + ids_per_batch, high + 1) - low, total)
    return deleted


async def register_canary(
    conn: Executor,
    pipeline: str,
    *,
    worker: str,
    revision: str,
    buckets: int,
    hold_s: float,
    lease_s: float,
) -> None:
    """Register (or renew) a canary worker's share of `pipeline` for `lease_s` from now."""
    await conn.execute(
        queries.REGISTER_CANARY,
        pipeline,
        worker,
        revision,
        buckets,
        float(hold_s),
        float(lease_s),
    )


async def withdraw_canary(conn: Executor, pipeline: str, *, worker: str) -> None:
    """Remove a canary worker's share: the stable workers take its jobs from their next claim."""
    await conn.execute(queries.WITHDRAW_CANARY, pipeline, worker)
