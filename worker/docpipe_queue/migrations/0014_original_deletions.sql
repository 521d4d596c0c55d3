-- Deleting a document deletes its original in object storage (DOCPIPE_ORIGINALS_STORE=s3): an
-- outbox, because the object cannot be deleted in the database's transaction.
--
-- * original_deletions: one row per object key whose document was deleted. The delete adds it in
--   its own transaction; a purge (the API right after the delete, then the workers' sweep) locks
--   the row, deletes the object unless a document names the key again, and sets purged_at. The
--   purged row stays a day as a marker: an upload of the same content that finds it knows the
--   object it had just put may have been deleted, and puts it again before it commits
--   (docpipe_queue.original_deletions). An upload cancels a pending row by deleting it.
--   Pending rows: `select * from docpipe.original_deletions where purged_at is null`.
-- * documents_content_key: the purge's "does a document name this key" probe. Built in the
--   migration's transaction: it reads the documents once and blocks their writes meanwhile
--   (seconds per million documents); only rows with a key are in it.
--
-- Upgrade-safe: a new table previous releases neither read nor write, and an index.
create table docpipe.original_deletions (
    content_key text primary key,
    requested_at timestamptz not null default now(),
    attempts int not null default 0,
    last_error text,
    next_attempt_at timestamptz not null default now(),
    purged_at timestamptz
);

create index original_deletions_due on docpipe.original_deletions (next_attempt_at)
    where purged_at is null;

create index documents_content_key on docpipe.documents (content_key)
    where content_key is not null;
