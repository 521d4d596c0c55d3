-- An exact canary share (issue 18): a canary worker claims only the jobs of its share, so the
-- weight the operator gives it (DOCPIPE_CANARY_WEIGHT) is the share of the jobs it gets, however
-- fast it fails or succeeds. docpipe_queue.shares holds the rule; queries.CLAIM applies it.
--
-- * canary_shares: one row per live canary worker, upserted when it starts and renewed with its
--   heartbeat, deleted when it stops; a row whose expires_at passed (a canary that crashed) no
--   longer counts. buckets is the share of the bucket space (0..9999) the canary claims: a job is
--   in it when its bucket, ((id % 10000) * 6181) % 10000, is below it. hold_s: how long a ready
--   job of the share waits for the canary before the stable workers take it too.
-- * jobs.handed_back_by: the revision of the canary whose failure last handed the job's attempt
--   back (DOCPIPE_CANARY); such a job goes to the stable workers, so a failing canary never
--   retries its own failures. Null for every other job.
--
-- Upgrade-safe: the table is new and the column is nullable without a default (a metadata-only
-- change); previous releases neither read nor write either, and with no canary row the claim takes
-- every job as before.
create table docpipe.canary_shares (
    pipeline text not null,
    worker text not null,
    revision text not null,
    buckets integer not null check (buckets between 1 and 10000),
    hold_s double precision not null check (hold_s >= 0),
    renewed_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (pipeline, worker)
);

alter table docpipe.jobs add column handed_back_by text;
