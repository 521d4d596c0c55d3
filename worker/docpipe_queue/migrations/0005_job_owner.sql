-- Fair claims (issue 20, ADR 0006): a job carries the owner of its document, so that a claim can
-- interleave owners within a pipeline without joining documents on the hot path.
--
-- Upgrade-safe:
-- * `not null default ''` is a metadata-only change (Postgres 11+): no table rewrite. Jobs with no
--   owner ('' : jobs without a document, and jobs that a previous release enqueues during a
--   rolling upgrade) are served as one more owner; previous releases read and write the table
--   as before, since they never name the column.
-- * the backfill touches only live jobs (queued or running), not the finished ones that stay as
--   the audit trail: it is as long as the backlog, not as the history. Previous-release claims
--   skip the rows it holds (SKIP LOCKED) until it commits.
-- * the new partial index, like jobs_ready, holds queued jobs only. Its build reads the table
--   once and blocks job writes meanwhile (seconds per million rows; `docpipe jobs purge` before
--   upgrading keeps it short). jobs_ready stays: previous releases and the unfair order read it.
alter table docpipe.jobs add column owner text not null default '';

update docpipe.jobs j
set owner = d.owner
from docpipe.documents d
where d.id = j.document_id and j.status in ('queued', 'running') and j.owner = '';

-- The fair claim walks the owners with queued jobs in a pipeline through this index (a "loose
-- index scan": one probe per owner), then reads each owner's next jobs from it in the order of
-- jobs_ready: priority, then age.
create index jobs_ready_owner on docpipe.jobs (pipeline, owner, priority desc, run_after, id)
    where status = 'queued';

-- The intake API's per-owner storage limits and GET /v1/usage count an owner's documents and
-- bytes: an index-only scan of this index, not a visit to every document row. Built in the
-- migration's transaction like the one above: it blocks document writes while it reads the table.
create index documents_owner_usage on docpipe.documents (owner) include (size_bytes);
-- GET /v1/usage sums the provider usage of one owner's documents.
create index document_usage_owner on docpipe.document_usage (owner);
