-- Distributed tracing (issue 21): a job carries the W3C `traceparent` of the request that queued
-- it (the intake API's upload span), so that the worker's job span continues the same trace.
-- Null when tracing was off where the job was queued (no OTLP endpoint set), for jobs queued by
-- the CLI, and for jobs of previous releases: the worker then starts a trace of its own.
--
-- Upgrade-safe: a nullable column without a default is a metadata-only change (no table
-- rewrite); previous releases neither read nor write it, and a job they enqueue during a rolling
-- upgrade simply has none.
alter table docpipe.jobs add column trace_context text;
