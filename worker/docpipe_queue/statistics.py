"""Read-only statistics of the queue: what the operator, the worker's queue gauges and
`docpipe jobs stats` read. It imports nothing else of the queue, so the operator can read the
queue's load without the code that changes jobs (the operator's layer contract, .importlinter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Executor = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy

# Each half reads one partial index (an `in (...)` over both would not use them): the cost
# follows the number of live jobs, never the number of finished ones.
STATS = """
with queued as (
    select pipeline,
           count(*) filter (where run_after <= now()) as ready,
           count(*) filter (where run_after > now()) as scheduled,
           min(run_after) filter (where run_after <= now()) as oldest_ready
    from docpipe.jobs
    where status = 'queued' and ($1::text[] is null or pipeline = any($1))
    group by pipeline
),
running as (
    select pipeline, count(*) as in_flight
    from docpipe.jobs
    where status = 'running' and ($1::text[] is null or pipeline = any($1))
    group by pipeline
)
select coalesce(q.pipeline, r.pipeline) as pipeline,
       coalesce(q.ready, 0) as ready,
       coalesce(q.scheduled, 0) as scheduled,
       coalesce(r.in_flight, 0) as in_flight,
       coalesce(extract(epoch from now() - q.oldest_ready), 0)::float8 as oldest_ready_age_s
from queued q full join running r on q.pipeline = r.pipeline
order by 1
"""


@dataclass(frozen=True, slots=True)
class PipelineStats:
    pipeline: str
    ready: int
    scheduled: int
    in_flight: int
    oldest_ready_age_s: float


async def stats(conn: Executor, pipelines: Sequence[str] | None = None) -> list[PipelineStats]:
    """Ready, scheduled and running jobs and the oldest ready job's age, per pipeline."""
    rows = await conn.fetch(STATS, list(pipelines) if pipelines is not None else None)
    return [PipelineStats(r[0], r[1], r[2], r[3], r[4]) for r in rows]
