"""The OpenAPI 3.1 document of the intake API, built from the pydantic models the handlers use.

`docs/openapi.json` is this document, written by `docpipe api --print-openapi`; a test keeps the
two equal.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from docpipe_api.app import (
    DEFAULT_PAGE_SIZE,
    MAX_AUDIT_FILTER_CHARS,
    MAX_FILENAME_CHARS,
    MAX_PAGE_SIZE,
)
from docpipe_api.models import (
    MAX_METADATA_BYTES,
    MAX_SOURCE_URL_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    AuditPage,
    Document,
    DocumentDetail,
    DocumentPage,
    ErrorResponse,
    Health,
    Job,
    SearchRequest,
    SearchResult,
    UploadResult,
    Usage,
)
from docpipe_contracts.configuration import PIPELINE_NAME
from docpipe_contracts.content_types import SUPPORTED_CONTENT_TYPES
from docpipe_contracts.correlation import HEADER as REQUEST_ID_HEADER
from docpipe_contracts.correlation import MAX_LENGTH as REQUEST_ID_MAX_LENGTH
from docpipe_queue.audit import ACTIONS, OUTCOMES

_REF = "#/components/schemas/{model}"
# Characters a tag or URL may not hold (C0 and C1 controls, DEL), as a regex class body.
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f"
_TEXT = f"[^{_CONTROL}]"
_BIGINT_MAX = 2**63 - 1

_ERRORS = {
    "400": "The body is malformed (not JSON, broken multipart framing).",
    "401": "No token, or the token is not valid (see WWW-Authenticate).",
    "403": "The token lacks the scope this endpoint needs; or, for an upload, the owner's "
    "storage limit (documents or bytes) is reached: `error.code` is `storage_limit_documents` "
    "or `storage_limit_bytes` and the message names the limit and the current use.",
    "404": "No such resource for this caller (another owner's resources do not exist).",
    "409": "The resource is not in a state that allows this.",
    "413": "The body is larger than the limit.",
    "415": "The body or the file has a content type that is not accepted.",
    "422": "A parameter or body field is invalid; `error.field` names it.",
    "429": "The caller's rate limit (or, for an upload, its owner's uploads per minute) is "
    "exhausted (see Retry-After).",
    "502": "The embedding service refused the query.",
    "503": "A service the API depends on is unavailable; retry (see Retry-After).",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _request_id_header() -> dict[str, Any]:
    return {"$ref": "#/components/headers/RequestId"}


def _json_response(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: _request_id_header()},
        "content": {"application/json": {"schema": _ref(model)}},
    }


def _error(status: str) -> dict[str, Any]:
    response = _json_response(_ERRORS[status], ErrorResponse)
    if status == "401":
        response["headers"]["WWW-Authenticate"] = {
            "description": "The Bearer challenge (RFC 6750).",
            "required": True,
            "schema": {"type": "string"},
        }
    if status == "429":
        response["headers"]["Retry-After"] = {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string"},
        }
    return response


def _responses(ok: dict[str, dict[str, Any]], *errors: str) -> dict[str, Any]:
    statuses = sorted({"401", "403", "429", *errors})
    return {**ok, **{status: _error(status) for status in statuses}}


def _operation(
    operation_id: str,
    summary: str,
    scope: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    description: str = "",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": (description + "\n\n" if description else "")
        + f"Needs a token with the `{scope}` scope.",
        "security": [{"bearerAuth": []}],
        "parameters": [*(parameters or []), {"$ref": "#/components/parameters/RequestId"}],
        "responses": responses,
    }
    if request_body is not None:
        operation["requestBody"] = request_body
    return operation


_PIPELINE_PARAM = {
    "name": "pipeline",
    "in": "path",
    "required": True,
    "description": "A pipeline this API serves (DOCPIPE_API_PIPELINES).",
    "schema": {"type": "string", "pattern": PIPELINE_NAME},
}
_DOCUMENT_PARAM = {
    "name": "document_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_JOB_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": _BIGINT_MAX},
}


def _audit_parameters() -> list[dict[str, Any]]:
    def text(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_AUDIT_FILTER_CHARS},
        }

    def moment(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description + " An RFC 3339 date and time with an offset.",
            "schema": {"type": "string", "format": "date-time"},
        }

    def choice(name: str, values: tuple[str, ...]) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(values)},
        }

    return [
        text("subject", "Only events of this token subject."),
        text("owner", "Only events on this owner's documents."),
        choice("action", ACTIONS),
        choice("outcome", OUTCOMES),
        moment("since", "Only events at or after this time."),
        moment("until", "Only events before this time."),
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PAGE_SIZE,
                "default": DEFAULT_PAGE_SIZE,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "`next_cursor` of the previous page (keep the same filters).",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 40},
        },
    ]


def _public(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "security": [], "responses": responses}


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    _, schemas = models_json_schema(
        [
            (Document, "serialization"),
            (DocumentDetail, "serialization"),
            (DocumentPage, "serialization"),
            (UploadResult, "serialization"),
            (Job, "serialization"),
            (SearchRequest, "validation"),
            (SearchResult, "serialization"),
            (ErrorResponse, "serialization"),
            (Health, "serialization"),
            (Usage, "serialization"),
            (AuditPage, "serialization"),
        ],
        ref_template=_REF,
    )
    content_types = sorted(SUPPORTED_CONTENT_TYPES)
    upload_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            # An empty file is refused (422): there is nothing to process.
                            "minLength": 1,
                            "contentMediaType": "application/octet-stream",
                            "description": "The document. Its part's Content-Type (or, when that "
                            "is absent or application/octet-stream, its file name's extension) "
                            f"must be one of: {', '.join(content_types)}. File names longer than "
                            f"{MAX_FILENAME_CHARS} characters are cut.",
                        },
                        "tags": {
                            "type": "array",
                            "maxItems": MAX_TAGS,
                            "items": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_TAG_CHARS,
                                "pattern": f"^{_TEXT}*[^\\s{_CONTROL}]{_TEXT}*$",
                            },
                            "description": "Tags, as a JSON array of strings (a comma-separated "
                            "list is accepted too). Search can filter on them.",
                        },
                        "source_url": {
                            "type": "string",
                            "maxLength": MAX_SOURCE_URL_CHARS,
                            "pattern": f"^(https?|ftp|file)://[^\\[\\]{_CONTROL}]*$",
                            "description": "Where the document came from (http, https, ftp or "
                            "file URL); returned with the document and its search hits.",
                        },
                        "metadata": {
                            "type": "object",
                            # The shape every server accepts; any JSON object up to the byte
                            # limit is accepted (nested values included).
                            "maxProperties": 16,
                            "propertyNames": {"maxLength": 32, "pattern": "^[^\\u0000]*$"},
                            "additionalProperties": {
                                "type": ["string", "number", "boolean", "null"],
                                "maxLength": 48,
                                "pattern": "^[^\\u0000]*$",
                            },
                            "description": f"A JSON object of at most {MAX_METADATA_BYTES} bytes "
                            "(413 naming `metadata` when larger, 422 when not a JSON object). "
                            "Search filters on it by containment.",
                        },
                    },
                },
                "encoding": {
                    "file": {"contentType": ", ".join(content_types)},
                    "tags": {"contentType": "application/json"},
                    "metadata": {"contentType": "application/json"},
                },
            }
        },
    }
    upload = _operation(
        "uploadDocument",
        "Upload a document to a pipeline",
        "write",
        _responses(
            {
                "201": _json_response("Stored, and its ingest job queued.", UploadResult),
                "200": _json_response(
                    "The same content from this owner was already stored; `created` is false "
                    "and `job_id` is null unless `reprocess` queued it again.",
                    UploadResult,
                ),
            },
            "400",
            "404",
            "413",
            "415",
            "422",
        ),
        parameters=[
            _PIPELINE_PARAM,
            {
                "name": "reprocess",
                "in": "query",
                "required": False,
                "description": "Process the document again when this content is already stored.",
                "schema": {"type": "boolean", "default": False},
            },
        ],
        request_body=upload_body,
        description="The document and its ingest job are stored in one transaction. Uploading "
        "the same bytes again (same owner, same pipeline) returns the stored document; tags, "
        "source URL and metadata sent with it replace the stored ones.",
    )
    list_documents = _operation(
        "listDocuments",
        "List the caller's documents in a pipeline, newest first",
        "read",
        _responses({"200": _json_response("A page of documents.", DocumentPage)}, "404", "422"),
        parameters=[
            _PIPELINE_PARAM,
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PAGE_SIZE,
                    "default": DEFAULT_PAGE_SIZE,
                },
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "`next_cursor` of the previous page.",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 400},
            },
        ],
    )
    search = _operation(
        "search",
        "Search the caller's documents in a pipeline",
        "search",
        _responses(
            {"200": _json_response("The best-matching chunks, best first.", SearchResult)},
            "400",
            "404",
            "413",
            "415",
            "422",
            "502",
            "503",
        ),
        parameters=[_PIPELINE_PARAM],
        request_body={
            "required": True,
            "content": {"application/json": {"schema": _ref(SearchRequest)}},
        },
        description="`mode` vector: the query is embedded with the pipeline's embedding model "
        "and the chunks ranked by cosine similarity through the HNSW index (exactly, when "
        "filtered). keyword: Postgres full-text search with the pipeline's text-search "
        "configuration (default 'english'), terms weighted by how rare they are. hybrid (the "
        "default): both rankings fused by reciprocal rank fusion with `weights`. Hits carry "
        "highlights of the query's terms and their document's metadata; `filter` restricts "
        "the search to documents by tags, metadata, file name, content type and upload time.",
    )
    paths: dict[str, Any] = {
        "/v1/pipelines/{pipeline}/documents": {"post": upload, "get": list_documents},
        "/v1/pipelines/{pipeline}/search": {"post": search},
        "/v1/documents/{document_id}": {
            "get": _operation(
                "getDocument",
                "Get a document, its processing status and what processing it cost",
                "read",
                _responses(
                    {
                        "200": _json_response(
                            "The document, its usage and its provenance.", DocumentDetail
                        )
                    },
                    "404",
                    "422",
                ),
                parameters=[_DOCUMENT_PARAM],
            ),
            "delete": _operation(
                "deleteDocument",
                "Delete a document, its chunks and its jobs",
                "write",
                _responses(
                    {
                        "204": {
                            "description": "Deleted; running jobs were cancelled first.",
                            "headers": {REQUEST_ID_HEADER: _request_id_header()},
                        }
                    },
                    "404",
                    "422",
                ),
                parameters=[_DOCUMENT_PARAM],
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": _operation(
                "getJob",
                "Get an ingest job",
                "read",
                _responses({"200": _json_response("The job.", Job)}, "404", "422"),
                parameters=[_JOB_PARAM],
            )
        },
        "/v1/usage": {
            "get": _operation(
                "getUsage",
                "The caller's usage and limits",
                "read",
                _responses({"200": _json_response("Usage, across pipelines.", Usage)}),
                description="Documents and bytes the caller stores, the provider usage of its "
                "documents' processing, and the per-owner limits uploads are held to.",
            )
        },
        "/v1/jobs/{job_id}/retry": {
            "post": _operation(
                "retryJob",
                "Retry a dead or cancelled job",
                "write",
                _responses(
                    {"200": _json_response("The job, queued again.", Job)}, "404", "409", "422"
                ),
                parameters=[_JOB_PARAM],
            )
        },
        "/v1/audit": {
            "get": _operation(
                "listAuditEvents",
                "The audit trail: who did what, newest first",
                "admin",
                _responses({"200": _json_response("A page of audit events.", AuditPage)}, "422"),
                parameters=_audit_parameters(),
                description="Every upload, reprocess, delete and retry of every owner: the "
                "token's subject, the owner, the request id, the action, its document or job, "
                "and how it ended (ok, recorded in the action's own transaction; refused with a "
                "4xx; failed with a 5xx). Requests whose token did not verify are not recorded.",
            )
        },
        "/healthz": {
            "get": _public("Liveness", {"200": _json_response("The process answers.", Health)})
        },
        "/readyz": {
            "get": _public(
                "Readiness",
                {
                    "200": _json_response("Ready: the database answers.", Health),
                    "503": _json_response("Not ready, or draining for shutdown.", Health),
                },
            )
        },
        "/metrics": {
            "get": _public(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "The text exposition format.",
                        "headers": {REQUEST_ID_HEADER: _request_id_header()},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _public(
                "This document",
                {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "headers": {REQUEST_ID_HEADER: _request_id_header()},
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "docpipe intake API",
            "version": "1",
            "description": "Upload documents to docpipe pipelines, follow their processing and "
            "search their chunks. Every caller sees only its own documents (the token's `sub`). "
            "See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 or RS256; `exp` and `sub` required; scopes in `scope` "
                    "(space-separated) or `scp`: read, write, search, admin (the audit trail).",
                }
            },
            "parameters": {
                "RequestId": {
                    "name": REQUEST_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Correlation id, stored with the job and passed to the worker "
                    "and the services it calls. One that is not printable ASCII of at most "
                    f"{REQUEST_ID_MAX_LENGTH} characters is replaced by a generated one, as is a "
                    "missing one; the response's X-Request-ID says which was used.",
                    "schema": {"type": "string"},
                }
            },
            "headers": {
                "RequestId": {
                    "description": "The request's correlation id.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        },
    }


def openapi_json() -> bytes:
    """The document as served and as kept in docs/openapi.json (stable key order, indented)."""
    return (json.dumps(build_openapi(), indent=2, sort_keys=False) + "\n").encode()
