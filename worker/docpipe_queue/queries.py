"""The SQL of the job queue, one constant per query shape (snapshot-tested in tests/unit).

Every statement that inserts, updates or deletes jobs lives here, also those that other modules
run as part of their own work (the ingest pipeline's store, cancelling a document's jobs):
tests/unit/test_job_statements.py fails on one anywhere else.

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
    (pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id,
     owner, trace_context)
select j.pipeline, j.kind, j.document_id, j.payload, j.priority, j.max_attempts,
       coalesce(j.run_after, now()), j.correlation_id, j.owner, j.trace_context
from unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[], $9::text[], $10::text[])
    as j(pipeline, kind, document_id, payload, priority, max_attempts, run_after, correlation_id,
         owner, trace_context)
returning id
"""

# The canary's share (migration 0011, docpipe_queue.shares): {buckets} is the claiming worker's
# share in buckets when it is a canary (DOCPIPE_CANARY_WEIGHT), else null. A canary claims the
# jobs of its share that no canary handed back; a stable worker claims the others, and those of
# the share that a canary handed back or that waited longer than the canary's hold. With no live
# canary row the stable worker's test is `bucket >= 0`: true at once, for every job. The two
# scalar subqueries run once per claim (InitPlans), an index probe of a table of a few rows.
SHARE_FILTER = """
and case when {buckets}::int is not null
         then ((id % 10000) * 6181) % 10000 < {buckets}::int and handed_back_by is null
         else ((id % 10000) * 6181) % 10000 >= coalesce(
                  (select max(s.buckets) from docpipe.canary_shares s
                   where s.pipeline = $1 and s.expires_at > now()), 0)
              or handed_back_by is not null
              or run_after <= now() - make_interval(secs => (
                  select max(s.hold_s) from docpipe.canary_shares s
                  where s.pipeline = $1 and s.expires_at > now()))
     end
""".strip()

# The fair claim (ADR 0006): owners take turns within a pipeline; priority, then age, orders the
# jobs of one owner. $6 is the rotation's cursor: the owner served last by the previous claim.
# * round: the owners with queued jobs, in owner order starting after the cursor and wrapping,
#   at most $2 of them, found by a loose index scan of jobs_ready_owner (one probe per owner);
# * offered: each owner of the round offers up to ceil($2 / owners) of its ready jobs, locked
#   with SKIP LOCKED so that concurrent claimers pass each other's rows;
# * picked: the offers in turns (every owner's first job, then every owner's second, ...),
#   the first $2 of them; the owner of the last turn becomes the next cursor;
# * rest: slots the round left free (owners with fewer ready jobs than their share) go to the
#   pipeline's other ready jobs in the plain order, so a claim never stops short of work.
# Returned in turn order, each job with the next cursor.
CLAIM = """
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
          {share}
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
      {share}
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
order by next.turn
""".replace("{share}", SHARE_FILTER.replace("{buckets}", "$7"))

# The order before fair claims (DOCPIPE_FAIR_CLAIMS=false): priority first, then how long the job
# has been ready, whatever its owner. SKIP LOCKED lets concurrent claimers pass each other's rows
# instead of queueing on them.
CLAIM_IN_ORDER = """
with next as (
    select id from docpipe.jobs
    where status = 'queued' and pipeline = $1 and run_after <= now()
      {share}
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
          j.owner, j.trace_context
""".replace("{share}", SHARE_FILTER.replace("{buckets}", "$6"))

COMPLETE = """
update docpipe.jobs j
set status = 'succeeded', finished_at = now(), lease_token = null, lease_expires_at = null
from unnest($1::bigint[], $2::uuid[]) as l(id, token)
where j.id = l.id and j.lease_token = l.token
returning j.id
"""

# One statement decides retry or dead, so the decision and the write cannot disagree. A failure
# that does not count ($6 false: a canary's) hands the attempt back and never makes a job dead,
# and records the canary's revision ($7) in handed_back_by: the stable workers retry the job.
FAIL = """
update docpipe.jobs j
set status = case when $6 and ($4 or j.attempts >= j.max_attempts) then 'dead' else 'queued' end,
    attempts = case when $6 then j.attempts else greatest(j.attempts - 1, 0) end,
    run_after = case when $6 and ($4 or j.attempts >= j.max_attempts) then j.run_after
                     else now() + make_interval(secs => $5) end,
    finished_at = case when $6 and ($4 or j.attempts >= j.max_attempts) then now() end,
    last_error = $3, lease_token = null, lease_expires_at = null, worker = null,
    handed_back_by = case when $6 then j.handed_back_by else $7::text end
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

# Rows locked by a transaction in flight (a job's store holds its row for as long as it inserts
# the chunks, seconds for a large document) are skipped, not waited for: waiting would stall the
# renewal of every other lease of the batch until that store commits, and they would expire on a
# live worker. A skipped row still under the lease counts as held (its store is running) and is
# renewed by the next heartbeat.
HEARTBEAT = """
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
where j.id not in (select id from renewable)
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

# The active jobs of a document, superseded when it is reprocessed (docpipe_queue.documents).
# Locks are taken jobs first, then the document: the order of the worker's store (its job, then
# the document's chunks and row), of the job triggers and of deleting a document. Reprocessing
# the other way round (document, then jobs) deadlocked with a worker storing the same document.
CANCEL_DOCUMENT_JOBS = """
update docpipe.jobs set status = 'cancelled', finished_at = now(),
    lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running')
"""

# The active jobs of the owner's document, before the intake API deletes it. Jobs are taken
# first, then the document: the same order as the worker's store, which locks its job and then
# writes the document's chunks, so the two cannot deadlock. Cancelling clears the lease, so a
# worker still processing the document drops its result. The delete cascades to the chunks and
# the jobs.
CANCEL_OWNED_DOCUMENT_JOBS = """
update docpipe.jobs
set status = 'cancelled', finished_at = now(), lease_token = null, lease_expires_at = null
where document_id = $1 and status in ('queued', 'running')
  and exists (select 1 from docpipe.documents where id = $1 and owner = $2)
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

# After a restore (docpipe backup/restore): the jobs that were running when the backup was taken
# have no worker any more. They go back to the queue at once, not after their lease expires, and
# the interrupted attempt is given back (it did not fail; the worker's result was lost with the
# old database), so they are redone rather than lost or buried. Returns each requeued job's id.
REQUEUE_RESTORED = """
with requeued as (
    update docpipe.jobs
    set status = 'queued', run_after = now(), attempts = greatest(attempts - 1, 0),
        last_error = 'requeued by docpipe restore: running when the backup was taken',
        lease_token = null, lease_expires_at = null, worker = null
    where status = 'running'
    returning id, pipeline
)
select id, pipeline, pg_notify('{channel}', pipeline) as notified from requeued
""".replace("{channel}", NOTIFY_CHANNEL)

# The ingest pipeline's last stage, one statement, so one round trip and atomic by itself: it
# takes the job row under the worker's lease (a cancel or rescue that got there first wins; one
# that comes later waits), replaces the document's chunks, marks the document processed and
# completes the job. It returns the number of chunks stored, or no row when the lease was lost.
# Each chunk records its provenance (migration 0010): the worker's revision ($12) and the digest
# of the settings that produced it ($13).
# The insert reads the delete's output, which makes Postgres finish the delete first: the new
# chunks never meet the old ones in the unique index.
STORE_AND_COMPLETE = """
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
select (select count(*) from inserted) from held
"""

GET = """
select id, pipeline, kind, document_id, payload, priority, status, attempts, max_attempts,
       run_after, lease_expires_at, worker, last_error, correlation_id, created_at, finished_at,
       progress, trace_context
from docpipe.jobs where id = $1
"""

# Why the heartbeat no longer renews leases: the jobs' state now (succeeded by this worker:
# nothing was lost; cancelled; or rescued from under it and maybe claimed again).
LEASE_STATES = """
select id, status, worker, lease_token from docpipe.jobs where id = any($1::bigint[])
"""

# A lease lost on a live worker (its renewals did not reach the database in time): the rescue
# wrote 'crashed or unreachable', the worker corrects it to what happened, only while that
# rescue's message for this worker is still the job's last error.
RECORD_LEASE_LOST = """
update docpipe.jobs
set last_error = $3
where id = $1 and lease_token is distinct from $2
  and last_error = 'lease expired: worker ' || $4::text
                   || ' stopped renewing it (crashed or unreachable)'
returning id
"""

# Large documents in parts (migration 0008). Each statement takes the job row under the worker's
# lease first, like STORE_AND_COMPLETE, so a cancel or rescue that got there first wins.
# The parsed text of part $3, and the job's progress.
SAVE_PARSED_PART = """
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
returning j.id
"""

# One part's chunks, from ordinal $6 on: the document's chunks at and after it are replaced (the
# first part, $6 = 0, replaces a previous version's), those before it were stored by earlier
# parts and stay. Returns the chunks stored, or no row when the lease was lost.
# Provenance as in STORE_AND_COMPLETE: revision $14, settings digest $15.
STORE_PART = """
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
select (select count(*) from inserted) from held
"""

# The last step of a document in parts: the document is processed with $4 chunks (any beyond,
# from a longer previous version, go), its parsed parts are dropped and the job completes.
COMPLETE_PARTS = """
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
select id from held
"""

# Where a job in parts stands, and the text of the parts it has parsed.
PROGRESS = """
select progress from docpipe.jobs where id = $1
"""

PARSED_PARTS = """
select part, content from docpipe.job_parts where job_id = $1 order by part
"""

# A job in parts hands its slot back between parts (docpipe_ingest.parts, DOCPIPE_PART_SLICE_
# SECONDS): back to the queue under the lease it holds, with its progress $3 and its kept parts,
# not as a failed attempt (the claim's attempt is given back, as RELEASE does, and no backoff),
# the same priority and owner, and `run_after = now()`: behind the jobs already ready, so a
# document queued after it is not stuck behind it. Its canary hand-back mark and last error stay.
# The lease is cleared, so the worker's heartbeat no longer renews it; a cancel or delete that
# took the row first wins (no row: the lease was lost), one that comes later cancels it queued.
HAND_BACK = """
with handed as (
    update docpipe.jobs j
    set status = 'queued', attempts = greatest(j.attempts - 1, 0), run_after = now(),
        lease_token = null, lease_expires_at = null, worker = null, progress = $3::jsonb
    where j.id = $1 and j.lease_token = $2 and j.status = 'running'
    returning j.id, j.pipeline
)
select id, pg_notify('{channel}', pipeline) as notified from handed
""".replace("{channel}", NOTIFY_CHANNEL)

# When the next job this worker may claim becomes claimable ($2: its canary buckets, as in
# SHARE_FILTER). For a stable worker a job of a live canary's share (not handed back) counts from
# the end of its hold; a canary counts only the jobs of its share. Without it a worker that found
# ready jobs it may not claim would claim again at once, in a loop.
NEXT_RUN_AFTER = """
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
from share
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

# A canary worker's share (migration 0011): registered when it starts, renewed with its heartbeat
# (each renewal moves expires_at one lease ahead), withdrawn when it stops. The rows of canaries
# that stopped without withdrawing (crashed) stop counting when they expire; the pipeline's older
# than an hour go with the next registration, so the table stays a few rows.
REGISTER_CANARY = """
with pruned as (
    delete from docpipe.canary_shares
    where pipeline = $1 and worker <> $2 and expires_at < now() - interval '1 hour'
)
insert into docpipe.canary_shares
    (pipeline, worker, revision, buckets, hold_s, renewed_at, expires_at)
values ($1, $2, $3, $4, $5, now(), now() + make_interval(secs => $6))
on conflict (pipeline, worker) do update
set revision = excluded.revision, buckets = excluded.buckets, hold_s = excluded.hold_s,
    renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
"""

# A canary that stops withdraws its share: the stable workers, woken by the notification, take
# its jobs from their next claim on instead of after the hold.
WITHDRAW_CANARY = """
with withdrawn as (
    delete from docpipe.canary_shares where pipeline = $1 and worker = $2 returning pipeline
)
select pg_notify('{channel}', pipeline) from withdrawn
""".replace("{channel}", NOTIFY_CHANNEL)

# Reprocessing the output of a worker revision (docpipe_queue.reprocessing): a batch at a time,
# each in its own transaction.
# The next documents, in id order after $3, with a chunk stored by revision $1, in pipeline $2
# (any when null), at most $4: read from the chunks_revision index (migration 0010).
REVISION_DOCUMENTS = """
select distinct document_id from docpipe.chunks
where revision = $1 and document_id > $3 and ($2::text is null or pipeline = $2)
order by document_id
limit $4
"""

# The advisory lock class on a document that serialises its reprocessing requests (the intake
# API's, docpipe_queue.documents, and a revision's): each request sees the job the one before it
# queued.
REPROCESSING_LOCK_CLASS = 0x6470  # "dp"

# The batch's documents' reprocessing locks ($1: REPROCESSING_LOCK_CLASS), taken in the order of
# their keys so that two batches locking overlapping documents cannot deadlock.
LOCK_DOCUMENTS_FOR_REPROCESSING = """
select count(pg_advisory_xact_lock($1, k)::text)
from (select hashtext(d::text) as k from unnest($2::uuid[]) as d order by 1) ordered
"""

# Under those locks, with a fresh snapshot: one ingest job for each document of $1 that has no
# queued or running job (those will store their chunks anyway), at priority $2, with $3 attempts
# and correlation id $4; the document goes back to pending, and each job is recorded in the audit
# trail as a `reprocess` by subject $5 (the statement of docpipe_queue.audit.INSERT_EVENT, set
# based). Returns the jobs enqueued.
REPROCESS_DOCUMENTS = """
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
select count(*) from enqueued
"""
