-- Large documents in parts (issue 15): a document above DOCPIPE_LARGE_DOCUMENT_BYTES is parsed
-- and stored in parts, and what is done is kept, so that a crash resumes where it stopped.
--
-- * jobs.progress: where the job stands (phase, parts parsed, chunks stored, of how many), for
--   `docpipe jobs show` and for the attempt that resumes it. Null for jobs processed whole.
-- * job_parts: the parsed text of each part, kept until the job completes (then deleted in the
--   completion's statement), and deleted with the job.
--
-- Upgrade-safe: a nullable column without a default is a metadata-only change, and the new
-- table is new; previous releases neither read nor write either.
alter table docpipe.jobs add column progress jsonb;

create table docpipe.job_parts (
    job_id bigint not null references docpipe.jobs (id) on delete cascade,
    part integer not null,
    content text not null,
    primary key (job_id, part)
);
