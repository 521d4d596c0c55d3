-- Cost accounting (issue 13): what each document cost at the providers, as the providers reported
-- it: embedding tokens and the model that counted them, pages parsed, provider requests. The
-- worker writes the row in the transaction that stores the document's chunks and completes its
-- job; `docpipe usage` sums the rows per owner or pipeline, the intake API shows a document's.
--
-- A table of its own, keyed by document, rather than columns on docpipe.documents:
-- * a reprocessed document replaces its row (insert ... on conflict (document_id) do update): the
--   figures are those of the document's latest successful processing, never a sum over runs;
-- * no foreign key: deleting a document keeps its row, because the money was spent; the owner and
--   pipeline are copied here so that the reports need no join with documents;
-- * upgrade-safe: a new, empty table and an index on it. Nothing locks or rewrites the existing
--   tables, and workers of the previous release, which do not write usage, run on unharmed
--   during a rolling upgrade (documents they process simply have no row).
create table docpipe.document_usage (
    document_id uuid primary key,
    pipeline text not null,
    owner text not null,
    embedding_model text,
    embedding_tokens bigint not null default 0 check (embedding_tokens >= 0),
    parsed_pages integer not null default 0 check (parsed_pages >= 0),
    provider_requests integer not null default 0 check (provider_requests >= 0),
    recorded_at timestamptz not null default now()
);
-- `docpipe usage --since ...` reads the rows recorded since a time.
create index document_usage_recorded on docpipe.document_usage (recorded_at);
