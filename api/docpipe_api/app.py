"""The intake API's aiohttp application: routes, the request middleware (correlation id, errors,
metrics), authorization, and the handlers. Handlers parse, authorize, call `store`, answer."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from aiohttp import BodyPartReader, web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, ValidationError

from docpipe_api import metrics, store
from docpipe_api.auth import REALM, AuthError, Principal, TokenVerifier
from docpipe_api.models import (
    MAX_METADATA_BYTES,
    MAX_SOURCE_URL_CHARS,
    MAX_TAGS,
    AuditEvent,
    AuditPage,
    Document,
    DocumentMetadata,
    DocumentPage,
    ErrorResponse,
    Health,
    Highlight,
    Job,
    SearchHit,
    SearchRequest,
    SearchResult,
    UploadResult,
    Usage,
    UsageLimits,
)
from docpipe_api.problems import (
    ProblemError,
    from_validation_error,
    invalid,
    not_found,
    problem_response,
)
from docpipe_api.ranking import fuse_ranks, highlight_spans, plan_terms
from docpipe_api.ratelimit import OwnerLimits, OwnerQuotas, RateLimiter
from docpipe_contracts import correlation, tracing
from docpipe_contracts.content_types import SUPPORTED_CONTENT_TYPES, content_type_for
from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers import original_purge
from docpipe_providers.embeddings import Embedder
from docpipe_providers.object_storage import ObjectStore
from docpipe_queue import audit
from docpipe_queue.document_usage import Prices
from docpipe_queue.documents import AddedDocument, add_document

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_JSON_BODY_BYTES = 64 * 1024
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_FILENAME_CHARS = 255
_BIGINT_MAX = 2**63 - 1
_READY_CACHE_S = 1.0
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


@dataclass
class ApiContext:
    """What the handlers share: the database, token checks, limits, the query embedder."""

    pool: asyncpg.Pool
    verifier: TokenVerifier
    limiter: RateLimiter
    embedder: Embedder
    pipelines: frozenset[str]
    max_upload_bytes: int
    max_attempts: int = 5
    # Per-owner limits: upload rate and storage (none by default here; settings give defaults).
    quotas: OwnerQuotas = field(default_factory=lambda: OwnerQuotas(OwnerLimits()))
    # The prices the document detail's usage is costed at (none: no cost shown).
    prices: Prices = field(default_factory=Prices)
    openapi_json: bytes = b"{}"
    # The term statistics keyword search weights terms by (cached; see store.TermShares).
    term_shares: store.TermShares = field(default_factory=store.TermShares)
    draining: bool = False
    # DOCPIPE_ORIGINALS_STORE=s3: uploads go to object storage, the database keeps their key.
    originals: ObjectStore | None = None
    _ready_at: float = field(default=-math.inf)
    _ready_problem: str | None = None


CONTEXT = web.AppKey("docpipe_api_context", ApiContext)
_REQUEST_ID = web.RequestKey("docpipe_request_id", str)
# The caller, once its token verified (before its scope and rate limit are checked).
_PRINCIPAL = web.RequestKey("docpipe_principal", Principal)


@dataclass
class AuditNote:
    """What an audited request asks for, filled in by its handler as it learns it. A handler
    whose action succeeds records it in the action's transaction and sets `recorded`; the
    middleware records any other ending (a refusal, a failure) in a transaction of its own."""

    action: str
    pipeline: str | None = None
    document_id: uuid.UUID | None = None
    job_id: int | None = None
    recorded: bool = False


_AUDIT = web.RequestKey("docpipe_audit", AuditNote)
# How long recording a refusal may take before it is given up (and logged).
_AUDIT_REFUSAL_TIMEOUT_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- middleware -------------------------------------------------------------------------------


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Correlation id in and out, every failure as a JSON error, the request metrics, and the
    audit record of a state-changing request that did not succeed (see _audit_ending)."""
    started = time.perf_counter()
    request_id = correlation.accept_correlation_id(request.headers.get(correlation.HEADER))
    request[_REQUEST_ID] = request_id
    action = _AUDITED_ACTIONS.get(request.match_info.handler)
    if action is not None:
        request[_AUDIT] = AuditNote(action)
    token = correlation.CURRENT.set(request_id)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        # The request's server span: a child of the caller's span when it sent a traceparent.
        with tracing.span(
            f"{request.method} {route}",
            kind="server",
            parent=tracing.context_from_traceparent(request.headers.get(tracing.TRACEPARENT)),
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "docpipe.correlation_id": request_id,
            },
        ) as span:
            response = await _answer(request, handler, request_id)
            tracing.record_http_status(span, response.status)
            if action is not None:
                await _audit_ending(request, response)
    finally:
        correlation.CURRENT.reset(token)
    response.headers[correlation.HEADER] = request_id
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    metrics.API_REQUESTS.labels(route, request.method, str(response.status)).inc()
    metrics.API_REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    return response


async def _answer(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as error:
        return problem_response(error, request_id)
    except web.HTTPException as exc:
        # aiohttp's own refusals: no route (404), wrong method (405, with Allow), body too big.
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "http_error"
        )
        message = {
            404: f"no such endpoint: {request.method} {request.path} (see /openapi.json)",
            405: f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}",
        }.get(exc.status, exc.reason)
        return problem_response(
            ProblemError(exc.status, code, message, headers=headers), request_id
        )
    except asyncpg.DeadlockDetectedError:
        log.warning("deadlock persisted through retries", exc_info=True)
        return problem_response(
            ProblemError(
                503, "busy", "the database is busy; try again", headers={"Retry-After": "1"}
            ),
            request_id,
        )
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError):
        log.warning("database unavailable", exc_info=True)
        return problem_response(
            ProblemError(
                503, "unavailable", "the database is unavailable; try again",
                headers={"Retry-After": "5"},
            ),
            request_id,
        )  # fmt: skip
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(
            ProblemError(500, "internal", f"internal error; quote request id {request_id}"),
            request_id,
        )


# -- the audit trail --------------------------------------------------------------------------


def audit_event(request: web.Request, status: int, *, error: str | None = None) -> audit.Event:
    """The audit record of this request (an audited one, by an authenticated caller) ending with
    `status`: the caller acts on its own documents, so it is both subject and owner."""
    principal = request[_PRINCIPAL]
    note = request[_AUDIT]
    return audit.Event(
        subject=principal.subject,
        owner=principal.subject,
        action=note.action,
        status=status,
        request_id=request[_REQUEST_ID],
        pipeline=note.pipeline,
        document_id=note.document_id,
        job_id=note.job_id,
        error=error,
    )


async def _audit_ending(request: web.Request, response: web.StreamResponse) -> None:
    """Record how an audited request ended unless its handler recorded its success. A request
    whose token did not verify is not recorded: there is no caller to name, and recording it
    would let anybody fill the table (the request log has it)."""
    note = request[_AUDIT]
    if note.recorded or _PRINCIPAL not in request:
        return
    if response.status < 400:
        log.error(
            "an audited action succeeded without an audit record",
            extra={"action": note.action, "path": request.path},
        )
        return
    event = audit_event(request, response.status, error=_error_code(response))
    try:
        async with asyncio.timeout(_AUDIT_REFUSAL_TIMEOUT_S):
            await audit.record(request.app[CONTEXT].pool, event)
    except Exception:
        # Nothing changed, so the answer stands; the log keeps what the table could not.
        log.warning(
            "could not record a refused request in the audit trail",
            extra={"action": event.action, "status": event.status, "error": event.error},
            exc_info=True,
        )


def _error_code(response: web.StreamResponse) -> str | None:
    """The `error.code` of an error response (every one is an ErrorResponse: see _answer)."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        return ErrorResponse.model_validate_json(response.body).error.code
    except ValidationError:
        return None


# -- request parsing --------------------------------------------------------------------------


def authorize(request: web.Request, scope: str) -> Principal:
    """The caller, when its token is valid, holds `scope` and is within its rate limit."""
    context = request.app[CONTEXT]
    try:
        principal = context.verifier.verify_header(request.headers.get("Authorization"))
    except AuthError as exc:
        raise ProblemError(
            401, "unauthorized", str(exc), headers={"WWW-Authenticate": exc.challenge()}
        ) from None
    request[_PRINCIPAL] = principal
    if scope not in principal.scopes:
        held = " ".join(sorted(principal.scopes)) or "none"
        raise ProblemError(
            403,
            "insufficient_scope",
            f"this endpoint needs the {scope!r} scope; the token has: {held}",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
                )
            },
        )
    wait = context.limiter.acquire(principal.subject)
    if wait > 0:
        raise ProblemError(
            429,
            "rate_limited",
            f"too many requests: at most {context.limiter.rate:g}/s (bursts of "
            f"{context.limiter.burst}) per subject; retry after {wait:.2f}s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return principal


def pipeline_param(request: web.Request) -> str:
    name = request.match_info["pipeline"]
    if name not in request.app[CONTEXT].pipelines:
        raise ProblemError(404, "not_found", f"no pipeline named {name!r}")
    return name


def uuid_param(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise invalid(name, "must be a UUID") from None


def job_id_param(request: web.Request) -> int:
    raw = request.match_info["job_id"]
    if not raw.isascii() or not raw.isdigit():
        raise invalid("job_id", "must be a positive integer")
    value = int(raw)
    if not 1 <= value <= _BIGINT_MAX:
        raise not_found("job")
    return value


def bool_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise invalid(name, f"must be true or false, got {raw[:40]!r}")


def int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise invalid(name, f"must be an integer from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise invalid(name, f"must be from {low} to {high}, got {value}")
    return value


def encode_cursor(created_at: datetime, document_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(document_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created, document_id = json.loads(raw)
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment, uuid.UUID(document_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "is not a cursor this API returned") from None


async def read_json(request: web.Request, model: type[ModelT]) -> ModelT:
    """The request body as `model`: 415 unless JSON, 413 when too big, 400/422 when invalid."""
    if request.content_type != "application/json":
        raise ProblemError(
            415, "unsupported_media_type", "send the body as application/json", field="body"
        )
    if request.content_length is not None and request.content_length > MAX_JSON_BODY_BYTES:
        raise _too_large("body", MAX_JSON_BODY_BYTES)
    body = bytearray()
    while chunk := await request.content.read(16 * 1024):
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY_BYTES:
            raise _too_large("body", MAX_JSON_BODY_BYTES)
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise ProblemError(
                400, "malformed_json", "the body is not valid JSON", field="body"
            ) from None
        raise from_validation_error(exc) from None


def _too_large(field: str, limit: int) -> ProblemError:
    return ProblemError(
        413, "too_large", f"{field} is larger than the limit of {limit} bytes", field=field
    )


def clean_filename(name: str | None) -> str:
    """A file name safe to store and show: no path, no control characters, bounded length."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _CONTROL_CHARS.sub("", base).strip()
    return base[:MAX_FILENAME_CHARS] or "upload"


def upload_content_type(declared: str | None, filename: str) -> str:
    """The part's declared type (without parameters); guessed from the name when it says none."""
    declared = (declared or "").split(";")[0].strip().lower()
    if declared in ("", "application/octet-stream"):
        declared = content_type_for(filename)
    if declared not in SUPPORTED_CONTENT_TYPES:
        allowed = ", ".join(sorted(SUPPORTED_CONTENT_TYPES))
        raise ProblemError(
            415,
            "unsupported_media_type",
            f"file: content type {declared!r} is not supported; allowed: {allowed}",
            field="file",
        )
    return declared


def _json(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json().encode(),
        content_type="application/json",
        headers=headers,
    )


# -- handlers ---------------------------------------------------------------------------------


async def upload_document(request: web.Request) -> web.Response:
    principal = authorize(request, "write")
    pipeline = pipeline_param(request)
    note = request[_AUDIT]
    note.pipeline = pipeline
    reprocess = bool_query(request, "reprocess")
    if reprocess:
        note.action = "reprocess"
    context = request.app[CONTEXT]
    if request.content_type != "multipart/form-data":
        raise ProblemError(
            415,
            "unsupported_media_type",
            "upload the document as multipart/form-data with a 'file' part",
            field="body",
        )
    # Multipart framing adds a little to the file itself.
    limit = context.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise _too_large("file", limit)
    filename, declared_type, data, details = await _read_upload_parts(request, limit)
    content_type = upload_content_type(declared_type, filename)
    if not data:
        raise invalid("file", "is empty")
    await _check_owner_limits(context, pipeline, principal.subject, data)
    content_key = None
    if context.originals is not None:
        # The object first: a document row never names an object that is not there.
        digest = hashlib.sha256(data).hexdigest()
        content_key = context.originals.key_for(pipeline, principal.subject, digest)
        await context.originals.put(content_key, data)

    # The job's span in the worker continues this request's trace (its server span).
    trace_context = tracing.current_traceparent()

    async def add() -> tuple[AddedDocument, asyncpg.Record | None]:
        # One transaction: the document, its job and the audit record (add_document's own
        # transaction is a savepoint of it).
        async with context.pool.acquire() as conn, conn.transaction():
            with _sql("add document"):
                added = await add_document(
                    conn,
                    trace_context=trace_context,
                    pipeline=pipeline,
                    owner=principal.subject,
                    filename=filename,
                    content_type=content_type,
                    data=data,
                    correlation_id=request[_REQUEST_ID],
                    reprocess=reprocess,
                    max_attempts=context.max_attempts,
                    tags=details.tags if "tags" in details.model_fields_set else None,
                    source_url=details.source_url,
                    metadata=details.metadata if "metadata" in details.model_fields_set else None,
                    content_key=content_key,
                )
            if added.put_original_again and context.originals is not None and content_key:
                # Rare: a deletion of this key (the same content, deleted before) was purged
                # after our PUT above, so the object may be gone. Put it again before the
                # document that names it commits; until then no purge can see the document, and
                # once it is committed, none deletes an object a document names.
                await context.originals.put(content_key, data)
            row = await store.get_document(conn, added.document_id, principal.subject)
            if row is not None:
                note.document_id, note.job_id = added.document_id, added.job_id
                await audit.record(conn, audit_event(request, 201 if added.created else 200))
            return added, row

    added, row = await store.retry_deadlocks(add)
    if row is None:  # deleted by a concurrent request between the two statements
        raise not_found("document")
    note.recorded = True
    result = UploadResult(
        document=Document.model_validate(dict(row)), created=added.created, job_id=added.job_id
    )
    return _json(
        result,
        status=201 if added.created else 200,
        headers={"Location": f"/v1/documents/{added.document_id}"},
    )


async def _check_owner_limits(context: ApiContext, pipeline: str, owner: str, data: bytes) -> None:
    """429 over the owner's upload rate; 403 when the document would take the owner beyond a
    storage limit (content it already stores in the pipeline adds nothing and passes). Checked
    before the upload's transaction: concurrent uploads may overshoot by their number."""
    wait = context.quotas.acquire_upload(owner)
    if wait > 0:
        per_minute = context.quotas.limits(owner).uploads_per_minute
        raise ProblemError(
            429,
            "upload_rate_limited",
            f"too many uploads: at most {per_minute:g} per minute for this owner; "
            f"retry after {wait:.2f}s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    documents, stored = await store.owner_storage(context.pool, owner)
    refusal = context.quotas.storage_refusal(
        owner, documents=documents, stored_bytes=stored, adding_bytes=len(data)
    )
    if refusal is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    if await store.document_stored(context.pool, pipeline, owner, digest):
        return
    what = (
        f"{refusal.used} documents stored, at most {refusal.limit}"
        if refusal.limit_name == "documents"
        else f"{refusal.used} bytes stored, at most {refusal.limit}; this file has {len(data)}"
    )
    raise ProblemError(
        403,
        f"storage_limit_{refusal.limit_name}",
        f"storage limit of this owner reached ({refusal.limit_name}): {what}. Delete "
        "documents, or ask for a higher limit (GET /v1/usage shows the use)",
        field="file",
    )


async def get_usage(request: web.Request) -> web.Response:
    principal = authorize(request, "read")
    context = request.app[CONTEXT]
    async with context.pool.acquire() as conn:
        documents, stored = await store.owner_storage(conn, principal.subject)
        spent = await store.owner_provider_usage(conn, principal.subject)
    limits = context.quotas.limits(principal.subject)
    return _json(
        Usage(
            owner=principal.subject,
            documents=documents,
            bytes=stored,
            embedding_tokens=spent["embedding_tokens"],
            parsed_pages=spent["parsed_pages"],
            provider_requests=spent["provider_requests"],
            limits=UsageLimits(
                max_documents=limits.max_documents,
                max_bytes=limits.max_bytes,
                uploads_per_minute=limits.uploads_per_minute,
            ),
        )
    )


# The parts an upload may send besides `file`, and the most bytes each may have.
_METADATA_PARTS = {
    "tags": MAX_TAGS * 104 + 2,
    "source_url": MAX_SOURCE_URL_CHARS,
    "metadata": MAX_METADATA_BYTES,
}


async def _read_upload_parts(
    request: web.Request, limit: int
) -> tuple[str, str | None, bytes, DocumentMetadata]:
    """The upload's file (name, declared type, bytes) and the metadata its other parts give."""
    try:
        reader = await request.multipart()
        file: tuple[str, str | None, bytes] | None = None
        given: dict[str, str] = {}
        tags: list[str] = []
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid("file", "must be a file, not a nested multipart body")
            name = (part.name or "")[:40]
            if name == "file" and file is None:
                data = bytearray()
                while chunk := await part.read_chunk(256 * 1024):
                    data.extend(chunk)
                    if len(data) > limit:
                        raise _too_large("file", limit)
                declared = part.headers.get("Content-Type")
                file = (clean_filename(part.filename), declared, bytes(data))
            elif name == "tags" and len(tags) < MAX_TAGS + 1:
                # Repeatable: one part per tag, or a part holding a list.
                tags.append(await _read_text_part(part, name, _METADATA_PARTS[name]))
            elif name in _METADATA_PARTS and name != "tags" and name not in given:
                given[name] = await _read_text_part(part, name, _METADATA_PARTS[name])
            else:
                allowed = "file, source_url, metadata"
                raise invalid(
                    name or "body",
                    f"unexpected part {name!r}: send each of {allowed} at most once, and "
                    f"at most {MAX_TAGS} tags",
                )
        if file is None:
            raise invalid("file", "the multipart body has no 'file' part")
    except ProblemError:
        raise
    except Exception as exc:
        # aiohttp's multipart reader raises assorted ValueError/RuntimeError/AssertionError
        # kinds on broken framing; all of them mean the client sent a malformed body.
        raise ProblemError(
            400, "malformed_multipart", f"the multipart body cannot be read: {exc}", field="body"
        ) from None
    return (*file, parse_document_metadata(given, tags))


async def _read_text_part(part: BodyPartReader, name: str, limit: int) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(16 * 1024):
        data.extend(chunk)
        if len(data) > limit:
            raise _too_large(name, limit)
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(name, "must be UTF-8 text") from None


def parse_document_metadata(parts: dict[str, str], tag_parts: list[str]) -> DocumentMetadata:
    """The metadata of an upload from its text parts: `tags` (each part a JSON array of
    strings, or comma-separated tags), `source_url`, `metadata` (a JSON object)."""
    values: dict[str, object] = {}
    if tag_parts:
        tags: list[object] = []
        for raw in tag_parts:
            listed = None
            if raw.strip().startswith("["):
                with contextlib.suppress(ValueError):
                    listed = json.loads(raw)
            if isinstance(listed, list):
                tags += listed
            else:
                tags += [tag.strip() for tag in raw.split(",") if tag.strip()]
        values["tags"] = tags
    if "source_url" in parts:
        values["source_url"] = parts["source_url"].strip()
    if "metadata" in parts:
        try:
            values["metadata"] = json.loads(parts["metadata"])
        except ValueError:
            raise invalid("metadata", "is not valid JSON: send a JSON object") from None
        if not isinstance(values["metadata"], dict):
            raise invalid("metadata", "must be a JSON object")
    try:
        return DocumentMetadata.model_validate(values)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


async def list_documents(request: web.Request) -> web.Response:
    principal = authorize(request, "read")
    pipeline = pipeline_param(request)
    limit = int_query(request, "limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    rows = await store.list_documents(
        request.app[CONTEXT].pool, principal.subject, pipeline, limit=limit + 1, after=after
    )
    items = [Document.model_validate(dict(row)) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return _json(DocumentPage(items=items, next_cursor=next_cursor))


async def get_document(request: web.Request) -> web.Response:
    principal = authorize(request, "read")
    document_id = uuid_param(request, "document_id")
    context = request.app[CONTEXT]
    detail = await store.get_document_detail(
        context.pool, document_id, principal.subject, context.prices
    )
    if detail is None:
        raise not_found("document")
    return _json(detail)


async def delete_document(request: web.Request) -> web.Response:
    principal = authorize(request, "write")
    document_id = uuid_param(request, "document_id")
    note = request[_AUDIT]
    note.document_id = document_id
    context = request.app[CONTEXT]
    deleted = await store.delete_document(
        context.pool,
        document_id,
        principal.subject,
        audit_event=audit_event(request, 204),
    )
    if deleted is None:
        raise not_found("document")
    note.recorded = True
    if deleted.content_key is not None and context.originals is not None:
        # Best effort: the deletion is recorded; a failure here leaves it to the workers' sweep.
        try:
            await original_purge.purge(context.pool, context.originals, deleted.content_key)
        except Exception:
            log.warning(
                "could not delete the original of a deleted document; the sweep will",
                exc_info=True,
                extra={"document_id": str(document_id), "content_key": deleted.content_key},
            )
    return web.Response(status=204)


async def get_job(request: web.Request) -> web.Response:
    principal = authorize(request, "read")
    job_id = job_id_param(request)
    row = await store.get_job(request.app[CONTEXT].pool, job_id, principal.subject)
    if row is None:
        raise not_found("job")
    return _json(Job.model_validate(dict(row)))


async def retry_job(request: web.Request) -> web.Response:
    principal = authorize(request, "write")
    job_id = job_id_param(request)
    note = request[_AUDIT]
    note.job_id = job_id
    row, retried = await store.retry_job(
        request.app[CONTEXT].pool, job_id, principal.subject, audit_event=audit_event(request, 200)
    )
    if row is None:
        raise not_found("job")
    job = Job.model_validate(dict(row))
    note.document_id = job.document_id
    note.recorded = retried
    if not retried:
        raise ProblemError(
            409,
            "conflict",
            f"job {job_id} is {job.status}; only dead or cancelled jobs can be retried",
        )
    return _json(job)


MAX_AUDIT_FILTER_CHARS = 255
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def time_query(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 timestamp with an offset (`2026-01-31T12:00:00Z`), in UTC."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw) if len(raw) <= 64 else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise invalid(
            name, "must be an RFC 3339 date and time with an offset, e.g. 2026-01-31T12:00:00Z"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # beyond the calendar's ends once in UTC: as good as the end
        return _EARLIEST if moment.year == 1 else _LATEST


def choice_query(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is not None and raw not in allowed:
        raise invalid(name, f"must be one of {', '.join(allowed)}")
    return raw


def text_query(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is not None and not 1 <= len(raw) <= MAX_AUDIT_FILTER_CHARS:
        raise invalid(name, f"must be 1 to {MAX_AUDIT_FILTER_CHARS} characters")
    return raw


def encode_audit_cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{event_id}".encode()).decode().rstrip("=")


def decode_audit_cursor(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        prefix, _, number = raw.partition(":")
        if prefix != "audit" or not number.isdigit() or not 1 <= int(number) <= _BIGINT_MAX:
            raise ValueError(raw)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor", "is not a cursor this API returned") from None


async def list_audit_events(request: web.Request) -> web.Response:
    """The audit trail, newest first, across owners: for tokens with the `admin` scope."""
    authorize(request, "admin")
    limit = int_query(request, "limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    cursor = request.query.get("cursor")
    wanted = audit.EventFilter(
        subject=text_query(request, "subject"),
        owner=text_query(request, "owner"),
        action=choice_query(request, "action", audit.ACTIONS),
        outcome=choice_query(request, "outcome", audit.OUTCOMES),
        since=time_query(request, "since"),
        until=time_query(request, "until"),
        before_id=decode_audit_cursor(cursor) if cursor is not None else None,
    )
    rows = await audit.list_events(request.app[CONTEXT].pool, wanted, limit=limit + 1)
    items = [AuditEvent.model_validate(dict(row)) for row in rows[:limit]]
    next_cursor = encode_audit_cursor(items[-1].id) if len(rows) > limit else None
    return _json(AuditPage(items=items, next_cursor=next_cursor))


# Hybrid search ranks this many candidates of each kind (at least top_k) before fusing them.
HYBRID_CANDIDATES = 20


def document_filter(query: SearchRequest) -> store.DocumentFilter:
    """The documents a search request looks in."""
    wanted = query.filter
    if wanted is None:
        return store.DocumentFilter(document_ids=query.document_ids)
    return store.DocumentFilter(
        document_ids=query.document_ids,
        tags=wanted.tags,
        metadata=wanted.metadata,
        filename_pattern=store.glob_to_ilike(wanted.filename) if wanted.filename else None,
        content_types=wanted.content_types,
        uploaded_after=wanted.uploaded_after,
        uploaded_before=wanted.uploaded_before,
    )


def _sql(operation: str) -> contextlib.AbstractContextManager[tracing.Span]:
    """A span around one of a search's database round trips."""
    return tracing.span(
        f"sql {operation}",
        kind="client",
        attributes={"db.system.name": "postgresql", "db.operation.name": operation},
    )


async def _embed_query(context: ApiContext, text: str) -> list[float]:
    try:
        with tracing.span("search embed query", attributes={"docpipe.query.chars": len(text)}):
            (vector,) = await context.embedder.embed([text])
    except TransientError as exc:
        retry_after = str(max(1, math.ceil(exc.retry_after or 1)))
        raise ProblemError(
            503,
            "embedding_unavailable",
            f"the embedding service failed; try again: {exc}",
            headers={"Retry-After": retry_after},
        ) from None
    except PermanentError as exc:
        raise ProblemError(
            502, "embedding_failed", f"the embedding service refused: {exc}"
        ) from None
    return list(vector)


async def _keyword_ranking(
    context: ApiContext,
    text: str,
    *,
    pipeline: str,
    owner: str,
    limit: int,
    documents: store.DocumentFilter,
) -> list[tuple[int, float]]:
    async with context.pool.acquire() as conn:
        with _sql("query terms"):
            terms = await store.query_terms(conn, pipeline, text)
        if not terms:
            return []
        statistics = await context.term_shares.get(conn)
        plan = plan_terms(terms, statistics.shares, chunks=statistics.chunks)
        with _sql("keyword ranking"):
            return await store.keyword_ranking(
                conn, plan, pipeline=pipeline, owner=owner, limit=limit, documents=documents
            )


async def search(request: web.Request) -> web.Response:
    principal = authorize(request, "search")
    pipeline = pipeline_param(request)
    query = await read_json(request, SearchRequest)
    context = request.app[CONTEXT]
    owner = principal.subject
    documents = document_filter(query)
    limit = max(query.top_k, HYBRID_CANDIDATES) if query.mode == "hybrid" else query.top_k
    keyword: asyncio.Task[list[tuple[int, float]]] | None = None
    if query.mode != "vector":
        # Started first: its statements run while the query is being embedded.
        keyword = asyncio.create_task(
            _keyword_ranking(
                context, query.query, pipeline=pipeline, owner=owner, limit=limit,
                documents=documents,
            )
        )  # fmt: skip
    vector: list[tuple[int, float]] = []
    try:
        if query.mode != "keyword":
            embedding = await _embed_query(context, query.query)
            with _sql("vector ranking"):
                vector = await store.vector_ranking(
                    context.pool, embedding, pipeline=pipeline, owner=owner, limit=limit,
                    documents=documents,
                )  # fmt: skip
        keyword_hits = await keyword if keyword is not None else []
    finally:
        if keyword is not None and not keyword.done():
            keyword.cancel()
    similarity = {chunk: 1.0 - distance for chunk, distance in vector}
    rank = dict(keyword_hits)
    if query.mode == "vector":
        ranked = list(similarity.items())
    elif query.mode == "keyword":
        ranked = keyword_hits
    else:
        ranked = fuse_ranks(
            {"vector": list(similarity), "keyword": list(rank)},
            {"vector": query.weights.vector, "keyword": query.weights.keyword},
            k=query.weights.rrf_k,
        )
    ranked = ranked[: query.top_k]
    with _sql("hit rows"):
        rows = await store.hit_rows(
            context.pool, [chunk for chunk, _ in ranked], owner, query.query
        )
    hits = []
    for chunk, score in ranked:
        row = rows.get(chunk)
        if row is None:  # deleted between the ranking and now
            continue
        marked = row["marked"]
        spans = highlight_spans(marked, row["content"]) if marked else []
        hits.append(
            SearchHit(
                score=score,
                vector_score=similarity.get(chunk),
                keyword_score=rank.get(chunk),
                document_id=row["document_id"],
                filename=row["filename"],
                chunk_id=row["id"],
                ordinal=row["ordinal"],
                heading=row["heading"],
                char_start=row["char_start"],
                char_end=row["char_end"],
                content=row["content"],
                highlights=[Highlight(start=start, end=end) for start, end in spans],
                content_type=row["content_type"],
                tags=row["tags"],
                source_url=row["source_url"],
                metadata=row["metadata"],
                uploaded_at=row["created_at"],
            )
        )
    return _json(SearchResult(hits=hits))


async def healthz(_request: web.Request) -> web.Response:
    return _json(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    if context.draining:
        return _json(Health(status="draining"), status=503)
    now = time.monotonic()
    if now - context._ready_at > _READY_CACHE_S:
        # Cached briefly: an unauthenticated endpoint must not become a way to load the database.
        context._ready_at = now
        try:
            async with asyncio.timeout(2.0):
                await context.pool.fetchval("select 1")
            context._ready_problem = None
        except Exception as exc:
            context._ready_problem = f"database unreachable: {type(exc).__name__}"
    if context._ready_problem:
        return _json(Health(status="not ready", reason=context._ready_problem), status=503)
    return _json(Health(status="ready"))


async def prometheus_metrics(_request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CONTEXT].openapi_json, content_type="application/json")


# The state-changing handlers and the action each is recorded as in the audit trail (an upload
# with ?reprocess=true is recorded as `reprocess`).
_AUDITED_ACTIONS: dict[Callable[..., object], str] = {
    upload_document: "upload",
    delete_document: "delete",
    retry_job: "retry",
}


def build_app(context: ApiContext) -> web.Application:
    """The application serving `context`; uploads stream, so aiohttp's body limit is for JSON."""
    app = web.Application(middlewares=[request_middleware], client_max_size=MAX_JSON_BODY_BYTES)
    app[CONTEXT] = context
    app.router.add_post("/v1/pipelines/{pipeline}/documents", upload_document)
    app.router.add_get("/v1/pipelines/{pipeline}/documents", list_documents, allow_head=False)
    app.router.add_post("/v1/pipelines/{pipeline}/search", search)
    app.router.add_get("/v1/documents/{document_id}", get_document, allow_head=False)
    app.router.add_delete("/v1/documents/{document_id}", delete_document)
    app.router.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    app.router.add_post("/v1/jobs/{job_id}/retry", retry_job)
    app.router.add_get("/v1/usage", get_usage, allow_head=False)
    app.router.add_get("/v1/audit", list_audit_events, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", prometheus_metrics, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    return app
