"""The bodies the intake API reads and writes. The OpenAPI document's schemas are generated from
these models, and the handlers validate and serialize with them, so the two cannot drift."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DocumentStatus = Literal["pending", "processing", "processed", "failed"]
JobStatus = Literal["queued", "running", "succeeded", "dead", "cancelled"]

MAX_QUERY_CHARS = 4000
MAX_TOP_K = 50
MAX_DOCUMENT_FILTER = 100


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


class SearchRequest(BaseModel):
    """A question to find the closest chunks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    document_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=MAX_DOCUMENT_FILTER,
        description="search only these documents (of the caller's)",
    )

    @field_validator("query")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some text, not only whitespace")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class SearchHit(_Response):
    """A chunk and how close it is to the query (cosine similarity, 1 is identical)."""

    score: float
    document_id: uuid.UUID
    filename: str
    chunk_id: int
    ordinal: int = Field(description="the chunk's position in its document, from 0")
    heading: str | None
    char_start: int = Field(description="where the chunk starts in the parsed document's text")
    char_end: int
    content: str


class SearchResult(_Response):
    hits: list[SearchHit]


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
