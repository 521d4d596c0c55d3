-- Hybrid search and document metadata (issue 19).
--
-- * Documents carry metadata given at upload: tags, a source URL and a JSON object. Columns with
--   constant defaults: a metadata-only change (no table rewrite); previous releases, which never
--   name them, keep inserting documents with the defaults during a rolling upgrade.
-- * Chunks carry a tsvector of their heading (weight A) and text (weight B) for keyword search,
--   with a GIN index. A BEFORE INSERT trigger computes it, not a generated column, because the
--   text-search configuration is per pipeline (docpipe.pipeline_text_search; 'english' when a
--   pipeline has no row) and a generated column cannot look it up. The trigger also serves the
--   workers of the previous release, whose chunk insert does not name the column.
-- * The backfill rewrites every chunk row once, and the index build reads the table once; both
--   block chunk writes (workers completing jobs) meanwhile: about a minute per million chunks.
alter table docpipe.documents
    add column tags text[] not null default '{}',
    add column source_url text,
    add column metadata jsonb not null default '{}';
-- Search filters on tags (`tags @> ...`) and metadata (`metadata @> ...`) within an owner's
-- documents; the owner's documents are found through documents_owner_listing first.
create index documents_tags on docpipe.documents using gin (tags) where tags <> '{}';

create table docpipe.pipeline_text_search (
    pipeline text primary key,
    config regconfig not null
);

-- The configuration a pipeline's chunks are indexed with, and its queries parsed with.
create function docpipe.text_search_config(p text) returns regconfig
language sql stable parallel safe as $$
    select coalesce(
        (select config from docpipe.pipeline_text_search where pipeline = p),
        'english'::regconfig
    )
$$;

alter table docpipe.chunks add column search_text tsvector;

create function docpipe.chunk_search_text() returns trigger language plpgsql as $$
declare
    config regconfig := docpipe.text_search_config(new.pipeline);
begin
    new.search_text := setweight(to_tsvector(config, coalesce(new.heading, '')), 'A')
        || setweight(to_tsvector(config, new.content), 'B');
    return new;
end;
$$;

create trigger chunks_search_text before insert or update of content, heading
    on docpipe.chunks
    for each row execute function docpipe.chunk_search_text();

update docpipe.chunks set content = content;  -- fires the trigger: the backfill

create index chunks_search_text on docpipe.chunks using gin (search_text);
