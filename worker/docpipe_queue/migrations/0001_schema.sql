-- docpipe's schema: documents, their chunks with pgvector embeddings, and the job queue.
-- Everything lives in the `docpipe` schema so that docpipe can share a database with other apps.
create extension if not exists vector;
create schema if not exists docpipe;

create table docpipe.documents (
    id uuid primary key default gen_random_uuid(),
    pipeline text not null,
    owner text not null,
    filename text not null,
    content_type text not null,
    size_bytes bigint not null,
    sha256 text not null,
    content bytea not null,
    status text not null default 'pending'
        check (status in ('pending', 'processing', 'processed', 'failed')),
    error text,
    chunk_count integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    processed_at timestamptz
);
-- The same content from the same owner in the same pipeline is one document (idempotent upload).
create unique index documents_identity on docpipe.documents (pipeline, owner, sha256);
create index documents_owner_listing on docpipe.documents (owner, pipeline, created_at desc, id);

-- The embedding dimension is fixed per database because an HNSW index needs a fixed dimension;
-- `docpipe migrate --embedding-dimensions N` chooses it when the database is created (ADR 0002).
create table docpipe.chunks (
    id bigint generated always as identity primary key,
    document_id uuid not null references docpipe.documents (id) on delete cascade,
    pipeline text not null,
    owner text not null,
    ordinal integer not null,
    content text not null,
    heading text,
    char_start integer not null,
    char_end integer not null,
    embedding vector({{embedding_dimensions}}) not null,
    unique (document_id, ordinal)
);
create index chunks_embedding_hnsw on docpipe.chunks using hnsw (embedding vector_cosine_ops);
create index chunks_owner on docpipe.chunks (pipeline, owner);

-- The job queue. Rows stay after they finish (status succeeded, dead or cancelled) so that job
-- status can be read back; the claimable rows are found through a partial index that holds only
-- queued jobs, and the lease rescuer through one that holds only running jobs.
create table docpipe.jobs (
    id bigint generated always as identity primary key,
    pipeline text not null,
    kind text not null default 'ingest',
    document_id uuid references docpipe.documents (id) on delete cascade,
    payload jsonb not null default '{}',
    priority smallint not null default 0,
    status text not null default 'queued'
        check (status in ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts integer not null default 0,
    max_attempts integer not null default 5 check (max_attempts >= 1),
    run_after timestamptz not null default now(),
    lease_token uuid,
    lease_expires_at timestamptz,
    worker text,
    last_error text,
    correlation_id text,
    created_at timestamptz not null default now(),
    finished_at timestamptz
);
create index jobs_ready on docpipe.jobs (pipeline, priority desc, run_after, id)
    where status = 'queued';
create index jobs_leased on docpipe.jobs (lease_expires_at) where status = 'running';
create index jobs_document on docpipe.jobs (document_id) where document_id is not null;

-- Wake consumers at once when jobs are enqueued, by whatever client: one notification per pipeline
-- per statement, so a bulk enqueue of 20,000 jobs sends one notification, not 20,000. The queue's
-- own requeue statements (retry, release, rescue) notify explicitly.
create function docpipe.notify_jobs_ready() returns trigger language plpgsql as $$
declare
    p text;
begin
    for p in select distinct pipeline from new_jobs where status = 'queued' loop
        perform pg_notify('docpipe_jobs', p);
    end loop;
    return null;
end;
$$;
create trigger jobs_notify_insert after insert on docpipe.jobs
    referencing new table as new_jobs
    for each statement execute function docpipe.notify_jobs_ready();
