-- Keyword search's candidates in one statement (issue 19).
--
-- The search finds the chunks holding any of a query's rarer terms through the GIN index on
-- search_text, then scores each by testing every term of the query against its tsvector.
-- Postgres underestimates what a sequential scan testing every chunk's tsvector costs and
-- overestimates the index scan: on 6,000 chunks it chose the scan, at 10 ms against 3 ms. The
-- search used to set enable_seqscan off in a transaction of its own: three round trips (begin,
-- set, commit) around the one statement. A function's SET clause scopes the setting to the
-- function instead, so the search is one statement.
--
-- The tsvector comes back as a plain copy (`|| ''`): a tsvector stored compressed or out of line
-- would otherwise be decompressed again by each of the caller's term tests (about 30 % of the
-- statement's time on the bench corpus).
--
-- Not `c.pipeline = p and c.owner = o`: the planner would read the owner's chunks through
-- chunks_owner and test every one rather than take the few matches from the GIN index.
--
-- Upgrade-safe: a new function that previous releases do not call.
create function docpipe.keyword_candidates(query tsquery, p text, o text)
returns table (id bigint, document_id uuid, search_text tsvector)
language plpgsql stable
set enable_seqscan = off
as $$
begin
    return query
        select c.id, c.document_id, c.search_text || ''::tsvector
        from docpipe.chunks c
        where c.search_text @@ query and c.pipeline || '' = p and c.owner || '' = o;
end;
$$;
