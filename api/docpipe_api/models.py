"""The bodies the intake API reads and writes. The OpenAPI document's schemas are generated from
these models, and the handlers validate and serialize with them, so the two cannot drift."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

DocumentStatus = Literal["pending", "processing", "processed", "failed"]
JobStatus = Literal["queued", "running", "succeeded", "dead", "cancelled"]

MAX_QUERY_CHARS = 4000
MAX_TOP_K = 50
MAX_DOCUMENT_FILTER = 100
# Document metadata given at upload: bounded so that a document row stays small.
MAX_TAGS = 32
MAX_TAG_CHARS = 100
MAX_SOURCE_URL_CHARS = 2048
MAX_METADATA_BYTES = 8192
MAX_FILTER_VALUES = 32

SearchMode = Literal["vector", "keyword", "hybrid"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class Document(_Response):
    """A stored document and where its processing stands."""

    id: uuid.UUID
    pipeline: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    status: DocumentStatus
    error: str | None = Field(description="why processing failed, when it did")
    chunk_count: int | None = Field(description="chunks stored, once processed")
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    tags: list[str] = Field(default_factory=list, description="tags given at upload")
    source_url: str | None = Field(None, description="where the document came from")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="the JSON object given at upload"
    )


def _check_tag(tag: str) -> str:
    if not tag.strip() or len(tag) > MAX_TAG_CHARS or _CONTROL.search(tag):
        raise ValueError(
            f"each tag must be 1 to {MAX_TAG_CHARS} characters without control characters"
        )
    return tag


class DocumentMetadata(BaseModel):
    """What an upload may say about its document besides its bytes (multipart parts `tags`,
    `source_url` and `metadata`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    source_url: str | None = Field(None, max_length=MAX_SOURCE_URL_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return sorted({_check_tag(tag) for tag in value})

    @field_validator("source_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            scheme = urlsplit(value).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https", "ftp", "file") or _CONTROL.search(value):
            raise ValueError("must be an http, https, ftp or file URL")
        return value

    @field_validator("metadata")
    @classmethod
    def _size(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise ValueError("must hold only finite numbers") from None
        size = len(text.encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(
                f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} bytes are allowed"
            )
        if "\\u0000" in json.dumps(value):
            raise ValueError("must not contain NUL characters")
        return value


class DocumentUsage(_Response):
    """What the document's latest processing cost at the providers, as they reported it."""

    tokens: int = Field(ge=0, description="embedding tokens the embeddings provider reported")
    pages: int = Field(ge=0, description="pages the parsing provider (LlamaParse) parsed")
    requests: int = Field(ge=0, description="provider requests that returned a result")
    model: str | None = Field(description="the embedding model that counted the tokens")
    cost: float | None = Field(
        ge=0,
        description="tokens and pages at the prices the API is configured with "
        "(DOCPIPE_PRICE_PER_MILLION_TOKENS, DOCPIPE_PRICE_PER_THOUSAND_PAGES); null when no "
        "price is configured",
    )


class ChunkProvenance(_Response):
    """Which worker revision, with which settings, stored some of a document's chunks."""

    revision: str | None = Field(
        description="the worker revision (DOCPIPE_REVISION) that stored them; null for chunks "
        "stored before docpipe recorded it"
    )
    settings_digest: str | None = Field(
        description="16 hex characters identifying the parser, chunker and embedder settings "
        "that produced them (docs/operations.md); null when unknown"
    )
    chunks: int = Field(ge=1, description="how many of the document's chunks")


class DocumentDetail(Document):
    """A stored document, where its processing stands, what processing it cost, and what
    produced its chunks."""

    usage: DocumentUsage | None = Field(
        description="null until the document is processed (and for documents processed by a "
        "docpipe without cost accounting); a reprocessed document shows its latest processing"
    )
    provenance: list[ChunkProvenance] = Field(
        default_factory=list,
        description="the chunks stored now, grouped by the revision and settings that produced "
        "them, most chunks first; empty until the document is processed",
    )


class UploadResult(_Response):
    """The document an upload created or found (the same content from the same owner)."""

    document: Document
    created: bool = Field(description="false when this content was already stored")
    job_id: int | None = Field(
        description="the ingest job started by this upload; null when the document was already "
        "stored and no reprocessing was asked for"
    )


class DocumentPage(_Response):
    """One page of the caller's documents, newest first."""

    items: list[Document]
    next_cursor: str | None = Field(
        description="pass as `cursor` to get the next page; null on the last page"
    )


class Job(_Response):
    """An ingest job: its state in the queue and its last error."""

    id: int
    pipeline: str
    kind: str
    document_id: uuid.UUID | None
    status: JobStatus
    attempts: int
    max_attempts: int
    run_after: datetime
    last_error: str | None
    correlation_id: str | None = Field(description="the X-Request-ID of the request that made it")
    created_at: datetime
    finished_at: datetime | None


class SearchWeights(BaseModel):
    """How hybrid search fuses its two rankings (reciprocal rank fusion): a chunk scores
    `vector / (rrf_k + its vector rank) + keyword / (rrf_k + its keyword rank)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vector: float = Field(1.0, ge=0, le=100, description="weight of the vector ranking")
    keyword: float = Field(1.0, ge=0, le=100, description="weight of the keyword ranking")
    rrf_k: int = Field(60, ge=1, le=1000, description="damps the difference between ranks")


class SearchFilter(BaseModel):
    """Search only the caller's documents that match all of these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: list[str] | None = Field(
        None, max_length=MAX_FILTER_VALUES, description="documents with every one of these tags"
    )
    metadata: dict[str, Any] | None = Field(
        None,
        description="documents whose metadata contains this object: each key equals the "
        "value given (JSON containment, `@>`)",
    )
    filename: str | None = Field(
        None,
        max_length=255,
        description="documents whose file name matches this pattern: `*` any characters, "
        "`?` one character; case-insensitive",
    )
    content_types: list[str] | None = Field(
        None, max_length=MAX_FILTER_VALUES, description="documents of one of these types"
    )
    uploaded_after: datetime | None = Field(None, description="uploaded at or after this time")
    uploaded_before: datetime | None = Field(None, description="uploaded before this time")

    @field_validator("metadata")
    @classmethod
    def _size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @field_validator("uploaded_after", "uploaded_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must have a time zone (e.g. 2024-05-01T00:00:00Z)")
        return value


class SearchRequest(BaseModel):
    """A question to find the best-matching chunks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    mode: SearchMode = Field(
        "hybrid",
        description="vector: cosine similarity of embeddings; keyword: Postgres full-text "
        "search; hybrid: both, fused by reciprocal rank fusion",
    )
    weights: SearchWeights = SearchWeights(vector=1.0, keyword=1.0, rrf_k=60)
    document_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=MAX_DOCUMENT_FILTER,
        description="search only these documents (of the caller's)",
    )
    filter: SearchFilter | None = None

    @field_validator("query")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some text, not only whitespace")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Highlight(_Response):
    """Where a query term matched in the chunk's `content` (offsets in Unicode characters)."""

    start: int
    end: int


class SearchHit(_Response):
    """A chunk, how well it matches the query, and its document's metadata."""

    score: float = Field(
        description="the ranking score of the mode: cosine similarity (vector), full-text rank "
        "(keyword), reciprocal rank fusion score (hybrid); higher is better"
    )
    vector_score: float | None = Field(
        None, description="cosine similarity to the query, when vector search found the chunk"
    )
    keyword_score: float | None = Field(
        None, description="full-text rank, when keyword search found the chunk"
    )
    document_id: uuid.UUID
    filename: str
    chunk_id: int
    ordinal: int = Field(description="the chunk's position in its document, from 0")
    heading: str | None
    char_start: int = Field(description="where the chunk starts in the parsed document's text")
    char_end: int
    content: str
    highlights: list[Highlight] = Field(
        default_factory=list, description="the query's terms in `content` (full-text matches)"
    )
    content_type: str
    tags: list[str]
    source_url: str | None
    metadata: dict[str, Any]
    uploaded_at: datetime


class SearchResult(_Response):
    hits: list[SearchHit]


class UsageLimits(_Response):
    """The caller's limits (DOCPIPE_API_OWNER_*, or its override); null: no limit."""

    max_documents: int | None
    max_bytes: int | None
    uploads_per_minute: float | None


class Usage(_Response):
    """What the caller stores, across pipelines, what its processing cost, and its limits."""

    owner: str = Field(description="the token's subject")
    documents: int = Field(description="documents stored")
    bytes: int = Field(description="bytes of the documents stored")
    embedding_tokens: int = Field(
        description="embedding tokens of the documents processed (their latest processing; "
        "deleted documents included: the tokens were spent)"
    )
    parsed_pages: int
    provider_requests: int
    limits: UsageLimits


AuditAction = Literal["upload", "reprocess", "delete", "retry"]
AuditOutcome = Literal["ok", "refused", "failed"]


class AuditEvent(_Response):
    """One state-changing request: who made it, what it asked for, on what, and how it ended."""

    id: int
    at: datetime = Field(description="when it took effect (or was refused)")
    subject: str = Field(description="the token's `sub`")
    owner: str = Field(description="the owner whose documents it acted on")
    request_id: str | None = Field(description="the request's X-Request-ID")
    action: AuditAction = Field(description="`reprocess`: an upload with ?reprocess=true")
    pipeline: str | None
    document_id: uuid.UUID | None = Field(description="the document acted on, when known")
    job_id: int | None = Field(description="the job retried, or queued by an upload")
    outcome: AuditOutcome = Field(
        description="ok: it took effect (recorded in its transaction); refused: a 4xx, nothing "
        "changed; failed: a 5xx, nothing changed"
    )
    status: int = Field(description="the HTTP status answered")
    error: str | None = Field(description="the error code answered (`error.code`), unless ok")


class AuditPage(_Response):
    """One page of the audit trail, newest first."""

    items: list[AuditEvent]
    next_cursor: str | None = Field(
        description="pass as `cursor` (with the same filters) to get the next page; null on "
        "the last page"
    )


class ErrorDetail(_Response):
    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="for people: what was wrong and what is allowed")
    field: str | None = Field(None, description="the parameter or body field at fault")


class ErrorResponse(_Response):
    error: ErrorDetail
    request_id: str


class Health(_Response):
    status: str
    reason: str | None = None
