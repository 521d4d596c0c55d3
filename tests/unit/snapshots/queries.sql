-- CANCEL
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where id = $1 and status in ('queued', 'running')
returning id;

-- CANCEL_DOCUMENT_JOBS
update docpipe.jobs set status = 'cancelled', finished_at = now(),
    lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running');

-- CANCEL_ORIGINAL_DELETION
delete from docpipe.original_deletions where content_key = $1 returning purged_at;

-- CANCEL_OWNED_DOCUMENT_JOBS
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running')
  and exists (select 1 from docpipe.documents where id = $1 and owner = $2);

-- CLAIM
with recursive after_cursor(owner, n) as (
    select (select owner from docpipe.jobs
            where status = 'queued' and pipeline = $1 and owner > $6
            order by owner limit 1), 1
    union all
    select (select j.owner from docpipe.jobs j
            where j.status = 'queued' and j.pipeline = $1 and j.owner > a.owner
            order by j.owner limit 1), a.n + 1
    from after_cursor a
    where a.owner is not null and a.n < $2
),
up_to_cursor(owner, n) as (
    select (select owner from docpipe.jobs
            where status = 'queued' and pipeline = $1 and owner <= $6
            order by owner limit 1), 1
    union all
    select (select j.owner from docpipe.jobs j
            where j.status = 'queued' and j.pipeline = $1 and j.owner > u.owner and j.owner <= $6
            order by j.owner limit 1), u.n + 1
    from up_to_cursor u
    where u.owner is not null and u.n < $2
),
round as (
    select owner, row_number() over (order by owner <= $6, owner) as pos
    from (select owner from after_cursor where owner is not null
          union all
          select owner from up_to_cursor where owner is not null) o
    order by owner <= $6, owner
    limit $2
),
offered as (
    select r.owner, r.pos, c.id, c.priority, c.run_after
    from round r
    cross join lateral (
        select id, priority, run_after from docpipe.jobs
        where status = 'queued' and pipeline = $1 and owner = r.owner and run_after <= now()
          and case when $7::int is not null
         then ((id % 10000) * 6181) % 10000 < $7::int and handed_back_by is null
         else ((id % 10000) * 6181) % 10000 >= coalesce(
                  (select max(s.buckets) from docpipe.canary_shares s
                   where s.pipeline = $1 and s.expires_at > now()), 0)
              or handed_back_by is not null
              or run_after <= now() - make_interval(secs => (
                  select max(s.hold_s) from docpipe.canary_shares s
                  where s.pipeline = $1 and s.expires_at > now()))
     end
        order by priority desc, run_after, id
        limit (select ceil($2::numeric / count(*))::int from round)
        for update skip locked
    ) c
),
picked as (
    -- One owner (a backlog alone in its pipeline): its offer, in its order, is the claim.
    select id, owner, row_number() over () as turn
    from offered where (select count(*) from round) = 1
    union all
    (select id, owner, row_number() over (order by rank, pos) as turn
     from (select id, owner, pos, row_number() over (
               partition by owner order by priority desc, run_after, id) as rank
           from offered where (select count(*) from round) > 1) o
     order by turn
     limit $2)
),
rest as (
    select id, priority, run_after from docpipe.jobs
    where status = 'queued' and pipeline = $1 and run_after <= now()
      and id not in (select id from picked)
      and case when $7::int is not null
         then ((id % 10000) * 6181) % 10000 < $7::int and handed_back_by is null
         else ((id % 10000) * 6181) % 10000 >= coalesce(
                  (select max(s.buckets) from docpipe.canary_shares s
                   where s.pipeline = $1 and s.expires_at > now()), 0)
              or handed_back_by is not null
              or run_after <= now() - make_interval(secs => (
                  select max(s.hold_s) from docpipe.canary_shares s
                  where s.pipeline = $1 and s.expires_at > now()))
     end
    order by priority desc, run_after, id
    limit $2 - (select count(*) from picked)
    for update skip locked
),
next as (
    select id, turn from picked
    union all
    select id, (select count(*) from picked)
               + row_number() over (order by priority desc, run_after, id)
    from rest
),
-- By primary key: joined with `next` instead, the planner's estimate of the rows to come
-- (the unknown number `rest` adds) makes it hash the whole table.
claimed as (
    update docpipe.jobs j
    set status = 'running', attempts = j.attempts + 1, lease_token = $3,
        lease_expires_at = now() + make_interval(secs => $4), worker = $5
    where j.id = any(array(select id from next))
    returning j.id, j.kind, j.document_id, j.payload, j.attempts, j.max_attempts,
              j.correlation_id, j.owner, j.trace_context
)
select c.id, c.kind, c.document_id, c.payload, c.attempts, c.max_attempts, c.correlation_id,
       c.owner, next.turn, (select owner from picked order by turn desc limit 1) as cursor,
       c.trace_context
from claimed c join next on next.id = c.id
order by next.turn;

-- CLAIM_IN_ORDER
with next as (
    select id from docpipe.jobs
    where status = 'queued' and pipeline = $1 and run_after <= now()
      and case when $6::int is not null
         then ((id % 10000) * 6181) % 10000 < $6::int and handed_back_by is null
         else ((id % 10000) * 6181) % 10000 >= coalesce(
                  (select max(s.buckets) from docpipe.canary_shares s
                   where s.pipeline = $1 and s.expires_at > now()), 0)
              or handed_back_by is not null
              or run_after <= now() - make_interval(secs => (
                  select max(s.hold_s) from docpipe.canary_shares s
                  where s.pipeline = $1 and s.expires_at > now()))
     end
    order by priority desc, run_after, id
    limit $2
    for update skip locked
)
update docpipe.jobs j
set status = 'running', attempts = j.attempts + 1, lease_token = $3,
    lease_expires_at = now() + make_interval(secs => $4), worker = $5
from next
where j.id = next.id
returning j.id, j.kind, j.document_id, j.payload, j.attempts, j.max_attempts, j.correlation_id,
          j.owner, j.trace_context;

-- COMPLETE
update docpipe.jobs j
set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id;

-- COMPLETE_PARTS
with held as (
    select id from docpipe.jobs
    where id = $1 and lease_token = $2 and status = 'running'
    for update
),
removed as (
    delete from docpipe.chunks
    where document_id = $3 and ordinal >= $4 and exists (select 1 from held)
),
document as (
    update docpipe.documents
    set status = 'processed', chunk_count = $4, error = null, processed_at = now(),
        updated_at = now()
    where id = $3 and exists (select 1 from held)
),
parts as (
    delete from docpipe.job_parts where job_id in (select id from held)
),
completed as (
    update docpipe.jobs
    set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null,
        progress = $5::jsonb
    where id in (select id from held)
)
select id from held;

-- DUE_ORIGINAL_DELETIONS
select content_key from docpipe.original_deletions
where purged_at is null and next_attempt_at <= now() and starts_with(content_key, $1)
order by next_attempt_at
limit $2;

-- ENQUEUE
insert into docpipe.jobs
    (pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id,
     owner, trace_context)
select j.pipeline, j.kind, j.document_id, j.payload, j.priority, j.max_attempts,
       coalesce(j.run_after, now()), j.correlation_id, j.owner, j.trace_context
from unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[], $9::text[], $10::text[])
    as j(pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id,
         owner, trace_context)
returning id;

-- FAIL
update docpipe.jobs j
set status = case when $6 and ($4 or j.attempts >= j.max_attempts) then 'dead' else 'queued' end,
    attempts = case when $6 then j.attempts else greatest(j.attempts - 1, 0) end,
    run_after = case when $6 and ($4 or j.attempts >= j.max_attempts) then j.run_after
                     else now() + make_interval(secs => $5) end,
    finished_at = case when $6 and ($4 or j.attempts >= j.max_attempts) then now() end,
    last_error = $3, lease_token = null, lease_expires_at = null, worker = null,
    handed_back_by = case when $6 then j.handed_back_by else $7::text end
where j.id = $1 and j.lease_token = $2
returning j.status, j.run_after;

-- FORGET_ORIGINAL_DELETION
delete from docpipe.original_deletions where content_key = $1;

-- FORGET_PURGED_ORIGINALS
delete from docpipe.original_deletions
where purged_at < now() - make_interval(secs => $1);

-- GET
select id, pipeline, kind, document_id, payload, priority, status, attempts, max_attempts,
       run_after, lease_expires_at, worker, last_error, correlation_id, created_at, finished_at,
       progress, trace_context
from docpipe.jobs where id = $1;

-- HAND_BACK
with handed as (
    update docpipe.jobs j
    set status = 'queued', attempts = greatest(j.attempts - 1, 0), run_after = now(),
        lease_token = null, lease_expires_at = null, worker = null, progress = $3::jsonb
    where j.id = $1 and j.lease_token = $2 and j.status = 'running'
    returning j.id, j.pipeline
)
select id, pg_notify('docpipe_jobs', pipeline) as notified from handed;

-- HEARTBEAT
with leases as (
    select l.id, l.token from unnest($1::bigint[], $2::uuid[]) as l(id, token)
),
renewable as (
    select j.id from docpipe.jobs j join leases l on j.id = l.id and j.lease_token = l.token
    for update of j skip locked
),
renewed as (
    update docpipe.jobs j
    set lease_expires_at = now() + make_interval(secs => $3)
    from renewable r
    where j.id = r.id
    returning j.id
)
select id from renewed
union all
select j.id from docpipe.jobs j join leases l on j.id = l.id and j.lease_token = l.token
where j.id not in (select id from renewable);

-- ID_RANGE
select min(id), max(id) from docpipe.jobs;

-- LEASE_STATES
select id, status, worker, lease_token from docpipe.jobs where id = any($1::bigint[]);

-- LOCK_DOCUMENTS_FOR_REPROCESSING
select count(pg_advisory_xact_lock($1, k)::text)
from (select hashtext(d::text) as k from unnest($2::uuid[]) as d order by 1) ordered;

-- LOCK_DUE_ORIGINAL_DELETION
select attempts from docpipe.original_deletions
where content_key = $1 and purged_at is null and next_attempt_at <= now()
for update skip locked;

-- MARK_ORIGINAL_PURGED
update docpipe.original_deletions set purged_at = now(), last_error = null
where content_key = $1;

-- NEXT_RUN_AFTER
with share as (
    select coalesce(max(buckets), 0) as buckets, coalesce(max(hold_s), 0) as hold_s
    from docpipe.canary_shares where pipeline = $1 and expires_at > now()
)
select case
    when $2::int is null and share.buckets = 0
    then (select min(run_after) from docpipe.jobs where status = 'queued' and pipeline = $1)
    else (select min(case when $2::int is null and ((id % 10000) * 6181) % 10000 < share.buckets
                               and handed_back_by is null
                          then run_after + make_interval(secs => share.hold_s)
                          else run_after end)
          from docpipe.jobs
          where status = 'queued' and pipeline = $1
            and ($2::int is null
                 or (((id % 10000) * 6181) % 10000 < $2::int and handed_back_by is null)))
    end
from share;

-- ORIGINAL_IN_USE
select exists (select 1 from docpipe.documents where content_key = $1);

-- PARSED_PARTS
select part, content from docpipe.job_parts where job_id = $1 order by part;

-- PENDING_ORIGINAL_DELETIONS
select count(*) from docpipe.original_deletions
where purged_at is null and starts_with(content_key, $1);

-- PROGRESS
select progress from docpipe.jobs where id = $1;

-- PURGE_RANGE
delete from docpipe.jobs
where id >= $1 and id < $2 and status = any($3::text[])
  and finished_at < now() - make_interval(secs => $4);

-- RECORD_LEASE_LOST
update docpipe.jobs
set last_error = $3
where id = $1 and lease_token is distinct from $2
  and last_error = 'lease expired: worker ' || $4::text
                   || ' stopped renewing it (crashed or unreachable)'
returning id;

-- RECORD_ORIGINAL_DELETION_FAILURE
update docpipe.original_deletions
set attempts = attempts + 1, last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
where content_key = $1;

-- REGISTER_CANARY
with pruned as (
    delete from docpipe.canary_shares
    where pipeline = $1 and worker <> $2 and expires_at < now() - interval '1 hour'
)
insert into docpipe.canary_shares
    (pipeline, worker, revision, buckets, hold_s, renewed_at, expires_at)
values ($1, $2, $3, $4, $5, now(), now() + make_interval(secs => $6))
on conflict (pipeline, worker) do update
set revision = excluded.revision, buckets = excluded.buckets, hold_s = excluded.hold_s,
    renewed_at = excluded.renewed_at, expires_at = excluded.expires_at;

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

-- REPROCESS_DOCUMENTS
with idle as (
    select d.id, d.pipeline, d.owner from docpipe.documents d
    where d.id = any($1::uuid[])
      and not exists (select 1 from docpipe.jobs j
                      where j.document_id = d.id and j.status in ('queued', 'running'))
),
enqueued as (
    insert into docpipe.jobs
        (pipeline, kind, document_id, priority, max_attempts, correlation_id, owner)
    select pipeline, 'ingest', id, $2, $3, $4, owner from idle
    returning id, pipeline, document_id, owner
),
pending as (
    update docpipe.documents d
    set status = 'pending', error = null, updated_at = now()
    from enqueued e
    where d.id = e.document_id
),
audited as (
    insert into docpipe.audit_events
        (subject, owner, request_id, action, pipeline, document_id, job_id, outcome, status)
    select $5, owner, $4, 'reprocess', pipeline, document_id, id, 'ok', 200 from enqueued
)
select count(*) from enqueued;

-- REQUEST_ORIGINAL_DELETION
insert into docpipe.original_deletions (content_key) values ($1)
on conflict (content_key) do update
set requested_at = now(), attempts = 0, last_error = null, next_attempt_at = now(),
    purged_at = null;

-- REQUEUE_RESTORED
with requeued as (
    update docpipe.jobs
    set status = 'queued', run_after = now(), attempts = greatest(attempts - 1, 0),
        last_error = 'requeued by docpipe restore: running when the backup was taken',
        lease_token = null, lease_expires_at = null, worker = null
    where status = 'running'
    returning id, pipeline
)
select id, pipeline, pg_notify('docpipe_jobs', pipeline) as notified from requeued;

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

-- REVISION_DOCUMENTS
select distinct document_id from docpipe.chunks
where revision = $1 and document_id > $3 and ($2::text is null or pipeline = $2)
order by document_id
limit $4;

-- SAVE_PARSED_PART
with held as (
    select id from docpipe.jobs
    where id = $1 and lease_token = $2 and status = 'running'
    for update
),
saved as (
    insert into docpipe.job_parts (job_id, part, content)
    select id, $3, $4 from held
    on conflict (job_id, part) do update set content = excluded.content
    returning 1
)
update docpipe.jobs j
set progress = $5::jsonb
from held
where j.id = held.id and (select count(*) from saved) >= 0
returning j.id;

-- SHARE_FILTER
and case when {buckets}::int is not null
         then ((id % 10000) * 6181) % 10000 < {buckets}::int and handed_back_by is null
         else ((id % 10000) * 6181) % 10000 >= coalesce(
                  (select max(s.buckets) from docpipe.canary_shares s
                   where s.pipeline = $1 and s.expires_at > now()), 0)
              or handed_back_by is not null
              or run_after <= now() - make_interval(secs => (
                  select max(s.hold_s) from docpipe.canary_shares s
                  where s.pipeline = $1 and s.expires_at > now()))
     end;

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

-- STORE_AND_COMPLETE
with held as (
    select id from docpipe.jobs
    where id = $1 and lease_token = $2 and status = 'running'
    for update
),
removed as (
    delete from docpipe.chunks
    where document_id = $3 and exists (select 1 from held)
    returning 1
),
inserted as (
    insert into docpipe.chunks
        (document_id, pipeline, owner, ordinal, content, heading, char_start, char_end, embedding,
         revision, settings_digest)
    select $3, $4, $5, c.ordinal, c.content, c.heading, c.char_start, c.char_end, c.embedding,
           $12, $13
    from unnest($6::int[], $7::text[], $8::text[], $9::int[], $10::int[], $11::vector[])
        as c(ordinal, content, heading, char_start, char_end, embedding)
    where exists (select 1 from held) and (select count(*) from removed) >= 0
    returning 1
),
document as (
    update docpipe.documents
    set status = 'processed', chunk_count = (select count(*) from inserted), error = null,
        processed_at = now(), updated_at = now()
    where id = $3 and exists (select 1 from held)
),
completed as (
    update docpipe.jobs
    set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null
    where id in (select id from held)
)
select (select count(*) from inserted) from held;

-- STORE_PART
with held as (
    select id from docpipe.jobs
    where id = $1 and lease_token = $2 and status = 'running'
    for update
),
removed as (
    delete from docpipe.chunks
    where document_id = $3 and ordinal >= $6 and exists (select 1 from held)
    returning 1
),
inserted as (
    insert into docpipe.chunks
        (document_id, pipeline, owner, ordinal, content, heading, char_start, char_end, embedding,
         revision, settings_digest)
    select $3, $4, $5, c.ordinal, c.content, c.heading, c.char_start, c.char_end, c.embedding,
           $14, $15
    from unnest($7::int[], $8::text[], $9::text[], $10::int[], $11::int[], $12::vector[])
        as c(ordinal, content, heading, char_start, char_end, embedding)
    where exists (select 1 from held) and (select count(*) from removed) >= 0
    returning 1
),
progressed as (
    update docpipe.jobs j
    set progress = $13::jsonb
    from held
    where j.id = held.id and (select count(*) from inserted) >= 0
)
select (select count(*) from inserted) from held;

-- WITHDRAW_CANARY
with withdrawn as (
    delete from docpipe.canary_shares where pipeline = $1 and worker = $2 returning pipeline
)
select pg_notify('docpipe_jobs', pipeline) from withdrawn;
