-- Provenance of the output (issue 18): each chunk records what produced it, so that the output of
-- a worker revision can be found, judged and redone (`docpipe documents reprocess --revision`).
--
-- * revision: the worker's revision (DOCPIPE_REVISION) that stored the chunk;
-- * settings_digest: 16 hex characters of the sha256 of the parser, chunker and embedder settings
--   that produced it (docpipe_ingest.provenance.settings_digest; docs/operations.md says which).
--
-- Chunks stored before this migration keep both null: their provenance is unknown.
--
-- Upgrade-safe: nullable columns without a default are a metadata-only change, and a previous
-- release's workers, which do not name them, store chunks with both null during a rolling upgrade.
-- The index is built in the migration's transaction: it reads the table once and blocks chunk
-- writes meanwhile (seconds per million chunks). It leads with the revision and holds the document
-- too, so the documents of one revision are read from it in document order without the table.
alter table docpipe.chunks add column revision text;
alter table docpipe.chunks add column settings_digest text;

create index chunks_revision on docpipe.chunks (revision, document_id);
