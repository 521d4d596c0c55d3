"""The intake API's reads and writes of documents, jobs and chunks. Every statement is scoped to
the calling owner: another owner's rows are indistinguishable from rows that do not exist."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pgvector import Vector

from docpipe_api import metrics
from docpipe_api.models import ChunkProvenance, Document, DocumentDetail, DocumentUsage
from docpipe_api.ranking import TermPlan, tsquery_literal
from docpipe_queue import audit, original_deletions, queries
from docpipe_queue import jobs as queue
from docpipe_queue.document_usage import Prices
from docpipe_queue.jobs import Executor

T = TypeVar("T")

DOCUMENT_COLUMNS = (
    "id, pipeline, filename, content_type, size_bytes, sha256, status, error, chunk_count,"
    " created_at, updated_at, processed_at, tags, source_url, metadata"
)

GET_DOCUMENT = f"select {DOCUMENT_COLUMNS} from docpipe.documents where id = $1 and owner = $2"

# The document detail: the document and its provider usage (docpipe.document_usage, keyed by
# document; no row until the document is processed).
GET_DOCUMENT_DETAIL = f"""
select {", ".join("d." + c.strip() for c in DOCUMENT_COLUMNS.split(","))},
       u.document_id is not null as has_usage, u.embedding_tokens, u.parsed_pages,
       u.provider_requests, u.embedding_model
from docpipe.documents d left join docpipe.document_usage u on u.document_id = d.id
where d.id = $1 and d.owner = $2
"""

# Who produced the document's chunks (migration 0010): one row per revision and settings.
DOCUMENT_PROVENANCE = """
select revision, settings_digest, count(*) as chunks from docpipe.chunks
where document_id = $1 and owner = $2
group by revision, settings_digest
order by chunks desc, revision nulls last, settings_digest nulls last
"""

# Newest first; the cursor is the last row's (created_at, id). The index documents_owner_listing
# is ordered (created_at desc, id), so the tie-break on id runs ascending to match it.
LIST_DOCUMENTS = f"""
select {DOCUMENT_COLUMNS} from docpipe.documents
where owner = $1 and pipeline = $2
  and ($3::timestamptz is null or created_at < $3 or (created_at = $3 and id > $4))
order by created_at desc, id
limit $5
"""

DELETE_DOCUMENT = (
    "delete from docpipe.documents where id = $1 and owner = $2 returning id, content_key"
)

# What an owner stores, across pipelines (an index-only scan of documents_owner_usage), and what
# the providers counted for its documents (docpipe.document_usage, kept after a delete).
OWNER_STORAGE = """
select count(*) as documents, coalesce(sum(size_bytes), 0)::bigint as bytes
from docpipe.documents where owner = $1
"""
OWNER_PROVIDER_USAGE = """
select coalesce(sum(embedding_tokens), 0)::bigint as embedding_tokens,
       coalesce(sum(parsed_pages), 0)::bigint as parsed_pages,
       coalesce(sum(provider_requests), 0)::bigint as provider_requests
from docpipe.document_usage where owner = $1
"""
# An upload of content the owner already stores in the pipeline adds nothing to its storage.
DOCUMENT_STORED = """
select exists (
    select 1 from docpipe.documents where pipeline = $1 and owner = $2 and sha256 = $3
)
"""

JOB_COLUMNS = (
    "j.id, j.pipeline, j.kind, j.document_id, j.status, j.attempts, j.max_attempts, j.run_after,"
    " j.last_error, j.correlation_id, j.created_at, j.finished_at"
)
# A job belongs to the owner of its document; jobs without a document are nobody's here.
GET_JOB = f"""
select {JOB_COLUMNS} from docpipe.jobs j join docpipe.documents d on d.id = j.document_id
where j.id = $1 and d.owner = $2
"""

# A ranking's columns: the chunk and where it is; the hits' text comes afterwards, for the few
# that make the cut (HIT_ROWS).
_RANKED_COLUMNS = "c.id, c.document_id, c.ordinal"

# Approximate: ordered by the HNSW index (`embedding <=> $1` exactly as the index's operator),
# filtered by owner after the index has produced its candidates (hnsw.ef_search of them).
SEARCH_APPROXIMATE = f"""
with hits as (
    select {_RANKED_COLUMNS}, c.embedding <=> $1 as distance
    from docpipe.chunks c
    where c.pipeline = $2 and c.owner = $3
    order by c.embedding <=> $1
    limit $4
)
select * from hits order by distance, id
"""

# Exact: every candidate chunk's distance. The materialized CTE keeps the planner from ordering
# through the HNSW index, whose post-filtering could return fewer hits than exist.
SEARCH_EXACT = f"""
with candidates as materialized (
    select {_RANKED_COLUMNS}, c.embedding <=> $1 as distance
    from docpipe.chunks c
    where c.pipeline = $2 and c.owner = $3
      and ($5::uuid[] is null or c.document_id = any($5))
)
select * from candidates order by distance, id limit $4
"""


async def get_document(conn: Executor, document_id: uuid.UUID, owner: str) -> asyncpg.Record | None:
    """The owner's document, or None."""
    return await conn.fetchrow(GET_DOCUMENT, document_id, owner)


async def get_document_detail(
    conn: Executor, document_id: uuid.UUID, owner: str, prices: Prices
) -> DocumentDetail | None:
    """The owner's document with its usage, costed at `prices`; or None."""
    row = await conn.fetchrow(GET_DOCUMENT_DETAIL, document_id, owner)
    if row is None:
        return None
    fields: dict[str, object] = {name: row[name] for name in Document.model_fields}
    usage = None
    if row["has_usage"]:
        tokens, pages = row["embedding_tokens"], row["parsed_pages"]
        usage = DocumentUsage(
            tokens=tokens,
            pages=pages,
            requests=row["provider_requests"],
            model=row["embedding_model"],
            cost=prices.cost(tokens, pages),
        )
    provenance = [
        ChunkProvenance(revision=r[0], settings_digest=r[1], chunks=r[2])
        for r in await conn.fetch(DOCUMENT_PROVENANCE, document_id, owner)
    ]
    return DocumentDetail.model_validate({**fields, "usage": usage, "provenance": provenance})


async def list_documents(
    conn: Executor,
    owner: str,
    pipeline: str,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """Up to `limit` of the owner's documents in `pipeline`, newest first, after the cursor."""
    created, last_id = after if after is not None else (None, None)
    return list(await conn.fetch(LIST_DOCUMENTS, owner, pipeline, created, last_id, limit))


@dataclass(frozen=True, slots=True)
class DeletedDocument:
    """A document deleted: the key of its original in object storage, when it had one (its
    deletion is asked for in docpipe.original_deletions)."""

    content_key: str | None


async def delete_document(
    pool: asyncpg.Pool,
    document_id: uuid.UUID,
    owner: str,
    *,
    audit_event: audit.Event | None = None,
) -> DeletedDocument | None:
    """Delete the owner's document with its chunks and jobs; None when there is none. When it
    is deleted, `audit_event` is recorded and the deletion of its original in object storage is
    asked for, both in the same transaction."""

    async def attempt() -> DeletedDocument | None:
        async with pool.acquire() as conn, conn.transaction():
            # Jobs first, then the document: see queries.CANCEL_OWNED_DOCUMENT_JOBS.
            await conn.execute(queries.CANCEL_OWNED_DOCUMENT_JOBS, document_id, owner)
            row = await conn.fetchrow(DELETE_DOCUMENT, document_id, owner)
            if row is None:
                return None
            if row["content_key"] is not None:
                await original_deletions.request_deletion(conn, row["content_key"])
            if audit_event is not None:
                await audit.record(conn, audit_event)
            return DeletedDocument(row["content_key"])

    return await retry_deadlocks(attempt)


async def get_job(conn: Executor, job_id: int, owner: str) -> asyncpg.Record | None:
    """The job, when it belongs to one of the owner's documents; else None."""
    return await conn.fetchrow(GET_JOB, job_id, owner)


async def retry_job(
    pool: asyncpg.Pool, job_id: int, owner: str, *, audit_event: audit.Event | None = None
) -> tuple[asyncpg.Record | None, bool]:
    """Requeue the owner's dead or cancelled job: the job afterwards (None: not the owner's)
    and whether it was requeued (False: it was not dead or cancelled). When it is requeued,
    `audit_event` is recorded in the same transaction, with the job's document."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchrow(GET_JOB + " for update of j", job_id, owner)
        if found is None:
            return None, False
        retried = await queue.retry(conn, job_id)
        if retried and audit_event is not None:
            await audit.record(conn, replace(audit_event, document_id=found["document_id"]))
        return await conn.fetchrow(GET_JOB, job_id, owner), retried


async def search_chunks(
    pool: asyncpg.Pool,
    vector: Sequence[float],
    *,
    pipeline: str,
    owner: str,
    top_k: int,
    document_ids: Sequence[uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """The owner's `top_k` chunks closest to `vector` (cosine), closest first."""
    embedding = Vector(list(vector))
    if document_ids is None:
        rows = await pool.fetch(SEARCH_APPROXIMATE, embedding, pipeline, owner, top_k)
        if len(rows) == top_k:
            return list(rows)
        # Fewer than asked: the owner has fewer chunks, or most of the index's candidates were
        # other owners'. The exact search tells which, and is cheap exactly when it is needed
        # (an owner with few chunks).
        metrics.API_SEARCH_EXACT.labels("too_few_hits").inc()
    else:
        metrics.API_SEARCH_EXACT.labels("document_filter").inc()
    return list(
        await pool.fetch(
            SEARCH_EXACT,
            embedding,
            pipeline,
            owner,
            top_k,
            list(document_ids) if document_ids is not None else None,
        )
    )


# -- hybrid search (issue 19) ------------------------------------------------------------------
#
# Every search statement below takes the same first ten parameters: $1 pipeline, $2 owner,
# $3 limit, then the document filter ($4 ids, $5 tags, $6 metadata, $7 filename pattern,
# $8 content types, $9 uploaded at or after, $10 uploaded before; null: no condition).

_DOCUMENT_FILTER = """
c.document_id in (
    select d.id from docpipe.documents d
    where d.owner = $2 and d.pipeline = $1
      and ($4::uuid[] is null or d.id = any($4))
      and ($5::text[] is null or d.tags @> $5)
      and ($6::jsonb is null or d.metadata @> $6)
      and ($7::text is null or d.filename ilike $7)
      and ($8::text[] is null or d.content_type = any($8))
      and ($9::timestamptz is null or d.created_at >= $9)
      and ($10::timestamptz is null or d.created_at < $10)
)
"""

# Exact vector search within the documents the filter keeps (the HNSW index cannot filter: its
# candidates would be mostly other documents').
SEARCH_VECTOR_FILTERED = f"""
with candidates as materialized (
    select c.id, c.embedding <=> $11 as distance
    from docpipe.chunks c
    where c.pipeline = $1 and c.owner = $2 and {_DOCUMENT_FILTER}
)
select id, distance from candidates order by distance, id limit $3
"""

# The query's terms as the pipeline's text-search configuration normalizes them.
QUERY_TERMS = """
select tsvector_to_array(to_tsvector(docpipe.text_search_config($1), $2))
"""

# Keyword search: the chunks holding any of the query's rarer terms (a tsquery found through
# the GIN index), scored by the weights of the terms they hold (a test of each term is a binary
# search in the chunk's tsvector), plus the full-text rank of all the terms together (term
# frequency; a heading counts 2.5 times body text) to order chunks holding the same terms.
MAX_QUERY_TERMS = 16


@lru_cache(maxsize=2 * MAX_QUERY_TERMS)
def keyword_statement(terms: int, *, filtered: bool) -> str:
    """The keyword search for `terms` weighted terms. Parameters after the ten shared ones
    (unfiltered: after $3): the candidates' tsquery, all the terms' tsquery, then each term's
    tsquery and weight. The candidates come from docpipe.keyword_candidates (migration 0015):
    through the GIN index, each with a plain copy of its tsvector to test the terms against."""
    first = 11 if filtered else 4
    score = " + ".join(
        f"(c.search_text @@ ${first + 2 + 2 * i}::tsquery)::int * ${first + 3 + 2 * i}::float8"
        for i in range(terms)
    )
    where = f" where {_DOCUMENT_FILTER}" if filtered else ""
    return f"""
with matched as materialized (
    select c.id, {score} + ts_rank(c.search_text, ${first + 1}::tsquery, 1) as rank
    from docpipe.keyword_candidates(${first}::tsquery, $1, $2) c{where}
)
select id, rank from matched order by rank desc, id limit $3
"""


# The hits' rows, their documents' fields, and their highlights: ts_headline over the whole
# chunk with markers around the words matching a term of the query text ($3; null: none).
HIT_ROWS = """
select c.id, c.document_id, c.ordinal, c.heading, c.char_start, c.char_end, c.content,
       d.filename, d.content_type, d.tags, d.source_url, d.metadata, d.created_at,
       case when $3::text is null then null
            else ts_headline(
                docpipe.text_search_config(c.pipeline), c.content,
                replace(plainto_tsquery(docpipe.text_search_config(c.pipeline), $3)::text,
                        ' & ', ' | ')::tsquery,
                'HighlightAll=true, StartSel=\u27e6, StopSel=\u27e7')
       end as marked
from docpipe.chunks c join docpipe.documents d on d.id = c.document_id
where c.id = any($1::bigint[]) and c.owner = $2 and d.owner = $2
"""

# Term shares from the statistics ANALYZE keeps on the tsvector column (the most common
# lexemes and the fraction of chunks holding each), and the chunks the table holds by the same
# statistics (-1: never analyzed). Collection-wide, like a search engine's shard-level IDF: the
# same for every owner.
TERM_SHARES = """
select t.reltuples as chunks,
       s.most_common_elems::text::text[] as terms, s.most_common_elem_freqs as shares
from pg_class t
left join pg_stats s
    on s.schemaname = 'docpipe' and s.tablename = 'chunks' and s.attname = 'search_text'
where t.oid = 'docpipe.chunks'::regclass
"""
TERM_SHARES_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class DocumentFilter:
    """The documents a search looks in (None: no condition)."""

    document_ids: Sequence[uuid.UUID] | None = None
    tags: Sequence[str] | None = None
    metadata: dict[str, Any] | None = None
    filename_pattern: str | None = None  # an ILIKE pattern
    content_types: Sequence[str] | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__slots__)

    def parameters(self) -> tuple[object, ...]:
        return (
            list(self.document_ids) if self.document_ids is not None else None,
            list(self.tags) if self.tags is not None else None,
            self.metadata,
            self.filename_pattern,
            list(self.content_types) if self.content_types is not None else None,
            self.uploaded_after,
            self.uploaded_before,
        )


def glob_to_ilike(pattern: str) -> str:
    """A file-name glob (`*`, `?`) as an ILIKE pattern, with LIKE's own wildcards escaped."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


@dataclass
class TermShares:
    """The cached term shares of the chunks' text index and the chunks they are shares of,
    refreshed every TERM_SHARES_TTL_S."""

    shares: dict[str, float] = field(default_factory=dict)
    chunks: float | None = None  # None: not known yet
    loaded_at: float = -math.inf

    async def get(self, conn: Executor) -> TermShares:
        now = time.monotonic()
        if now - self.loaded_at > TERM_SHARES_TTL_S:
            self.loaded_at = now
            row = await conn.fetchrow(TERM_SHARES)
            if row is not None:
                self.chunks = float(row["chunks"]) if row["chunks"] > 0 else None
                if row["terms"] is not None:
                    self.shares = dict(zip(row["terms"], row["shares"], strict=False))
        return self


async def query_terms(conn: Executor, pipeline: str, query: str) -> list[str]:
    """The query's lexemes under the pipeline's text-search configuration."""
    terms = await conn.fetchval(QUERY_TERMS, pipeline, query)
    return list(terms or [])


async def vector_ranking(
    pool: asyncpg.Pool,
    vector: Sequence[float],
    *,
    pipeline: str,
    owner: str,
    limit: int,
    documents: DocumentFilter,
) -> list[tuple[int, float]]:
    """The owner's `limit` chunks closest to `vector`: (chunk id, cosine distance), closest
    first."""
    if documents.empty:
        rows = await search_chunks(
            pool, vector, pipeline=pipeline, owner=owner, top_k=limit, document_ids=None
        )
    else:
        metrics.API_SEARCH_EXACT.labels("document_filter").inc()
        rows = await pool.fetch(
            SEARCH_VECTOR_FILTERED,
            pipeline,
            owner,
            limit,
            *documents.parameters(),
            Vector(list(vector)),
        )
    return [(row["id"], float(row["distance"])) for row in rows]


async def keyword_ranking(
    conn: asyncpg.Connection | PoolConnectionProxy,
    plan: TermPlan,
    *,
    pipeline: str,
    owner: str,
    limit: int,
    documents: DocumentFilter,
) -> list[tuple[int, float]]:
    """The owner's `limit` chunks that best match the planned terms: (chunk id, rank), best
    first."""
    if not plan.candidates:
        return []
    terms = sorted(plan.weights, key=lambda term: (-plan.weights[term], term))
    terms = terms[:MAX_QUERY_TERMS]
    weighted: list[object] = []
    for term in terms:
        weighted += [tsquery_literal([term]), plan.weights[term]]
    rows = await conn.fetch(
        keyword_statement(len(terms), filtered=not documents.empty),
        pipeline,
        owner,
        limit,
        *(() if documents.empty else documents.parameters()),
        tsquery_literal(plan.candidates, match_all=plan.match_all),
        tsquery_literal(terms),
        *weighted,
    )
    return [(row["id"], float(row["rank"])) for row in rows]


async def hit_rows(
    conn: Executor, chunk_ids: Sequence[int], owner: str, highlight: str | None
) -> dict[int, asyncpg.Record]:
    """The chunks' rows with their documents' fields (and highlights of the terms of
    `highlight`, a query text), by chunk id."""
    rows = await conn.fetch(HIT_ROWS, list(chunk_ids), owner, highlight)
    return {row["id"]: row for row in rows}


async def retry_deadlocks(action: Callable[[], Awaitable[T]], *, attempts: int = 3) -> T:
    """Run a transaction again when Postgres broke a deadlock by aborting it."""
    for attempt in range(attempts):
        try:
            return await action()
        except asyncpg.DeadlockDetectedError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


async def owner_storage(conn: Executor, owner: str) -> tuple[int, int]:
    """The owner's documents and their bytes, across pipelines."""
    row = await conn.fetchrow(OWNER_STORAGE, owner)
    assert row is not None
    return int(row["documents"]), int(row["bytes"])


async def owner_provider_usage(conn: Executor, owner: str) -> asyncpg.Record:
    row = await conn.fetchrow(OWNER_PROVIDER_USAGE, owner)
    assert row is not None
    return row


async def document_stored(conn: Executor, pipeline: str, owner: str, sha256: str) -> bool:
    return bool(await conn.fetchval(DOCUMENT_STORED, pipeline, owner, sha256))
