-- Golden set outputs (issue 18): with spec.rollout.goldenSet, the workers of each revision
-- process the pipeline's sample documents and questions in shadow (never as user documents) at
-- each analysis interval, and keep here what their parser, chunker and embedder made of them; a
-- canary worker compares its revision's latest output with the stable revision's
-- (docpipe_ingest.golden) and exports the comparison for the operator's verdict.
--
-- * golden_runs: one row per pipeline and revision; a worker takes the revision's run when the
--   last one started at least an interval ago (one conditional upsert), so one worker per revision
--   runs the set per interval, whatever the number of replicas.
-- * golden_outputs: the latest run's chunks (kind 'chunk': the document's file name, the chunk's
--   ordinal) and questions (kind 'question': the document it is about, the question's number),
--   each with its text and embedding. float4[], not vector: two revisions may embed in different
--   dimensions, which the comparison reports instead of failing.
--
-- Upgrade-safe: new tables that previous releases neither read nor write.
create table docpipe.golden_runs (
    pipeline text not null,
    revision text not null,
    started_at timestamptz not null,
    finished_at timestamptz,
    primary key (pipeline, revision)
);

create table docpipe.golden_outputs (
    pipeline text not null,
    revision text not null,
    kind text not null check (kind in ('chunk', 'question')),
    document text not null,
    ordinal integer not null,
    text text not null,
    embedding float4[] not null,
    run_at timestamptz not null,
    primary key (pipeline, revision, kind, document, ordinal)
);
