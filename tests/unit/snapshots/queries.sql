-- CANCEL
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where id = $1 and status in ('queued', 'running')
returning id;

-- CLAIM
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
returning j.id, j.kind, j.document_id, j.payload, j.attempts, j.max_attempts, j.correlation_id;

-- COMPLETE
update docpipe.jobs j
set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id;

-- ENQUEUE
insert into docpipe.jobs
    (pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id)
select j.pipeline, j.kind, j.document_id, j.payload, j.priority, j.max_attempts,
       coalesce(j.run_after, now()), j.correlation_id
from unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[])
    as j(pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id)
returning id;

-- FAIL
update docpipe.jobs j
set status = case when $6 and ($4 or j.attempts >= j.max_attempts) then 'dead' else 'queued' end,
    attempts = case when $6 then j.attempts else greatest(j.attempts - 1, 0) end,
    run_after = case when $6 and ($4 or j.attempts >= j.max_attempts) then j.run_after
                     else now() + make_interval(secs => $5) end,
    finished_at = case when $6 and ($4 or j.attempts >= j.max_attempts) then now() end,
    last_error = $3, lease_token = null, lease_expires_at = null, worker = null
where j.id = $1 and j.lease_token = $2
returning j.status, j.run_after;

-- GET
select id, pipeline, kind, document_id, payload, priority, status, attempts, max_attempts,
       run_after, lease_expires_at, worker, last_error, correlation_id, created_at, finished_at
from docpipe.jobs where id = $1;

-- HEARTBEAT
update docpipe.jobs j
set lease_expires_at = now() + make_interval(secs => $3)
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id;

-- ID_RANGE
select min(id), max(id) from docpipe.jobs;

-- NEXT_RUN_AFTER
select min(run_after) from docpipe.jobs where status = 'queued' and pipeline = $1;

-- PURGE_RANGE
delete from docpipe.jobs
where id >= $1 and id < $2 and status = any($3::text[])
  and finished_at < now() - make_interval(secs => $4);

-- RELEASE
with released as (
    update docpipe.jobs j
    set status = 'queued', attempts = greatest(j.attempts - 1, 0), run_after = now(),
        lease_token = null, lease_expires_at = null, worker = null
    from unnest($1::bigint[], $2::uuid[]) as l(id, token)
    where j.id = l.id and j.lease_token = l.token
    returning j.id, j.pipeline
)
select id, pg_notify('docpipe_jobs', pipeline) from released;

-- RESCUE
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
       pg_notify('docpipe_jobs', pipeline) as notified
from rescued
group by pipeline;

-- RETRY
with retried as (
    update docpipe.jobs
    set status = 'queued', attempts = 0, run_after = now(), finished_at = null
    where id = $1 and status in ('dead', 'cancelled')
    returning id, pipeline
)
select id, pg_notify('docpipe_jobs', pipeline) from retried;

-- STATS
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
order by 1;
