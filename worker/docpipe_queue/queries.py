"""The SQL of the job queue, one constant per query shape (snapshot-tested in tests/unit).

Every statement that changes a running job names the lease it acts under (job id and lease
token) and matches only while that lease is current, so a worker that lost its lease can never
complete, fail or release a job someone else now holds.

A job carries a lease token only while it is running: every statement that moves a job out of
`running` clears the token. So `lease_token = $token` alone proves the job is running, and the
batched statements (COMPLETE, RELEASE, HEARTBEAT) do not repeat `status = 'running'`: with it,
asyncpg's cached statement switches to a generic plan after five runs that scans the
`jobs_leased` partial index instead of probing the primary key, and the drain slowed tenfold.
"""

from __future__ import annotations

NOTIFY_CHANNEL = "docpipe_jobs"

ENQUEUE = """
insert into docpipe.jobs
    (pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id)
select j.pipeline, j.kind, j.document_id, j.payload, j.priority, j.max_attempts,
       coalesce(j.run_after, now()), j.correlation_id
from unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[])
    as j(pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id)
returning id
"""

# Priority first, then how long the job has been ready. SKIP LOCKED lets concurrent claimers pass
# each other's rows instead of queueing on them.
CLAIM = """
with next as (
    select id from docpipe.jobs
    where status = 'queued' and pipeline = $1 and run_after <= now()
    order by priority desc, run_after, id
    limit $2
    for update skip locked
)
update docpipe.jobs j
set status = 'running', attempts = j.attempts + 1, lease_token = $3,
    lease_expires_at = now() + make_interval(secs => $4), worker = $5
from next
where j.id = next.id
returning j.id, j.kind, j.document_id, j.payload, j.attempts, j.max_attempts, j.correlation_id
"""

COMPLETE = """
update docpipe.jobs j
set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id
"""

# One statement decides retry or dead, so the decision and the write cannot disagree. A failure
# that does not count ($6 false: a canary's) hands the attempt back and never makes a job dead.
FAIL = """
update docpipe.jobs j
set status = case when $6 and ($4 or j.attempts >= j.max_attempts) then 'dead' else 'queued' end,
    attempts = case when $6 then j.attempts else greatest(j.attempts - 1, 0) end,
    run_after = case when $6 and ($4 or j.attempts >= j.max_attempts) then j.run_after
                     else now() + make_interval(secs => $5) end,
    finished_at = case when $6 and ($4 or j.attempts >= j.max_attempts) then now() end,
    last_error = $3, lease_token = null, lease_expires_at = null, worker = null
where j.id = $1 and j.lease_token = $2
returning j.status, j.run_after
"""

# Giving a job back (shutdown) is not a failed attempt: the attempt is handed back too.
RELEASE = """
with released as (
    update docpipe.jobs j
    set status = 'queued', attempts = greatest(j.attempts - 1, 0), run_after = now(),
        lease_token = null, lease_expires_at = null, worker = null
    from unnest($1::bigint[], $2::uuid[]) as l(id, token)
    where j.id = l.id and j.lease_token = l.token
    returning j.id, j.pipeline
)
select id, pg_notify('{channel}', pipeline) from released
""".replace("{channel}", NOTIFY_CHANNEL)

HEARTBEAT = """
update docpipe.jobs j
set lease_expires_at = now() + make_interval(secs => $3)
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id
"""

# Jobs whose worker stopped renewing their lease (crashed, partitioned, frozen). A job that had
# used its last attempt goes dead: a job that kills its worker every time must not loop forever.
RESCUE = """
with expired as (
    select id from docpipe.jobs
    where status = 'running' and lease_expires_at < now()
    order by lease_expires_at
    limit $1
    for update skip locked
),
rescued as (
    update docpipe.jobs j
    set status = case when j.attempts >= j.max_attempts then 'dead' else 'queued' end,
        finished_at = case when j.attempts >= j.max_attempts then now() end,
        run_after = now(),
        last_error = 'lease expired: worker ' || coalesce(j.worker, '?')
                     || ' stopped renewing it (crashed or unreachable)',
        lease_token = null, lease_expires_at = null, worker = null
    from expired
    where j.id = expired.id
    returning j.pipeline, j.status
)
select pipeline,
       count(*) filter (where status = 'queued') as requeued,
       count(*) filter (where status = 'dead') as dead,
       pg_notify('{channel}', pipeline) as notified
from rescued
group by pipeline
""".replace("{channel}", NOTIFY_CHANNEL)

CANCEL = """
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where id = $1 and status in ('queued', 'running')
returning id
"""

RETRY = """
with retried as (
    update docpipe.jobs
    set status = 'queued', attempts = 0, run_after = now(), finished_at = null
    where id = $1 and status in ('dead', 'cancelled')
    returning id, pipeline
)
select id, pg_notify('{channel}', pipeline) from retried
""".replace("{channel}", NOTIFY_CHANNEL)

GET = """
select id, pipeline, kind, document_id, payload, priority, status, attempts, max_attempts,
       run_after, lease_expires_at, worker, last_error, correlation_id, created_at, finished_at
from docpipe.jobs where id = $1
"""

NEXT_RUN_AFTER = """
select min(run_after) from docpipe.jobs where status = 'queued' and pipeline = $1
"""

# Retention: finished jobs older than a cutoff, one primary-key range at a time, so each batch is a
# short statement that reads only its own range (finished_at has no index: one would cost every
# completion an index insert). Live jobs are never touched.
PURGE_RANGE = """
delete from docpipe.jobs
where id >= $1 and id < $2 and status = any($3::text[])
  and finished_at < now() - make_interval(secs => $4)
"""

ID_RANGE = "select min(id), max(id) from docpipe.jobs"
