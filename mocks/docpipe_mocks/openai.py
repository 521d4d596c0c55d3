"""An OpenAI-compatible embeddings endpoint (`POST /v1/embeddings`) serving mock embeddings.

With quotas (`docpipe_mocks.quotas`, installed by the server), each API key's requests and input
tokens per minute are limited as OpenAI limits them: every response carries the
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers of the limited quotas, and a
request over its budget is answered 429 `rate_limit_exceeded` with `retry-after` and
`retry-after-ms`; in `insufficient_quota` mode every request is answered 429 `insufficient_quota`.
Requests answered by an injected fault never reach this endpoint and spend no quota.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from docpipe_mocks import output_faults
from docpipe_mocks.embedding import embed_array
from docpipe_mocks.output_faults import OutputFault, OutputFaultError
from docpipe_mocks.quotas import (
    QuotaState,
    bearer_key,
    format_duration,
    ratelimit_headers,
    retry_after_headers,
)

PATH_PREFIX = "/v1/"

# Native dimensions of the models the mock knows, and whether a request may shorten them
# (`text-embedding-ada-002` rejects `dimensions`, as the real API does).
MODEL_DIMENSIONS: Mapping[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_FIXED_DIMENSION_MODELS = frozenset({"text-embedding-ada-002"})

# The real API returns about this many significant decimals; shorter numbers serialise faster.
_DECIMALS = 8


class OpenAISettings(BaseModel):
    """Limits and credentials of the mock embeddings endpoint (defaults are the real API's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: str | None = None
    max_batch_inputs: int = Field(default=2048, ge=1)
    max_input_tokens: int = Field(default=8192, ge=1)
    max_request_tokens: int = Field(default=300_000, ge=1)


SETTINGS = web.AppKey("openai_settings", OpenAISettings)
QUOTAS = web.AppKey("openai_quotas", QuotaState)
ROUTES = web.RouteTableDef()


class _InvalidRequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    kind: str | None = None,
) -> web.Response:
    """Return an error in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`;
    the type is `kind` if given, else the one usual for `status`."""
    if kind is None:
        if status == 429:
            kind = "requests"
        elif status >= 500:
            kind = "server_error"
        else:
            kind = "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def estimate_tokens(text: str) -> int:
    """Approximate the token count of `text` (about four characters per token, as for English)."""
    return max(1, math.ceil(len(text) / 4))


def _parse_inputs(body: Mapping[str, Any], settings: OpenAISettings) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        inputs = list(raw)
    else:
        raise _InvalidRequestError(
            "Invalid 'input': expected a string or an array of strings.", param="input"
        )
    if not inputs:
        raise _InvalidRequestError("Invalid 'input': the array must not be empty.", param="input")
    if len(inputs) > settings.max_batch_inputs:
        raise _InvalidRequestError(
            f"Invalid 'input': maximum array length is {settings.max_batch_inputs}, "
            f"but got an array with length {len(inputs)}.",
            param="input",
        )
    total = 0
    for index, text in enumerate(inputs):
        if not text:
            raise _InvalidRequestError(
                f"Invalid 'input[{index}]': string must not be empty.", param=f"input[{index}]"
            )
        tokens = estimate_tokens(text)
        if tokens > settings.max_input_tokens:
            raise _InvalidRequestError(
                f"This model's maximum context length is {settings.max_input_tokens} tokens, "
                f"however you requested {tokens} tokens in 'input[{index}]'. "
                "Please reduce the length of the input.",
                param=f"input[{index}]",
            )
        total += tokens
    if total > settings.max_request_tokens:
        raise _InvalidRequestError(
            f"Requested {total} tokens, max {settings.max_request_tokens} tokens per request.",
            param="input",
        )
    return inputs


def _parse_dimensions(body: Mapping[str, Any], model: str) -> int:
    native = MODEL_DIMENSIONS[model]
    requested = body.get("dimensions")
    if requested is None:
        return native
    if model in _FIXED_DIMENSION_MODELS:
        raise _InvalidRequestError(
            f"Model {model} does not support specifying dimensions.", param="dimensions"
        )
    # bool is an int in Python, not in JSON Schema.
    if not isinstance(requested, int) or isinstance(requested, bool):
        raise _InvalidRequestError("Invalid 'dimensions': expected an integer.", param="dimensions")
    if not 1 <= requested <= native:
        raise _InvalidRequestError(
            f"Invalid 'dimensions': {requested} is out of range; {model} supports 1 to {native}.",
            param="dimensions",
        )
    return requested


def _render(
    inputs: list[str],
    *,
    model: str,
    dimensions: int,
    encoding: str,
    fault: OutputFault | None = None,
) -> bytes:
    data: list[dict[str, Any]] = []
    dimensions = output_faults.answered_dimensions(fault, dimensions)
    for index, text in enumerate(inputs):
        vector = embed_array(text, dimensions)
        if fault is not None:
            vector = output_faults.degrade_vector(vector, fault)
        embedding: str | list[float]
        if encoding == "base64":
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = np.round(vector, _DECIMALS).tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(estimate_tokens(text) for text in inputs)
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()


# Inputs up to this many characters in all are embedded on the event loop (well under a
# millisecond); larger batches in a thread.
_INLINE_CHARS = 2000


_RATE_LIMITS_DOC = "Visit https://platform.openai.com/account/rate-limits to learn more."
_INSUFFICIENT_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_ORGANIZATION = "org-mock"


@dataclass(frozen=True, slots=True)
class _Quota:
    state: QuotaState
    key: str


def _over_quota(quota: _Quota, model: str, tokens: int) -> web.Response | None:
    """Spend one request of `tokens` tokens of the key's budget, or answer why it cannot."""
    admission = quota.state.admit_openai(quota.key, tokens, time.monotonic(), time.time())
    if admission.accepted:
        return None
    if admission.limited_by == "tokens":
        budget, unit, requested = admission.tokens, "tokens per min (TPM)", tokens
    else:
        budget, unit, requested = admission.requests, "requests per min (RPM)", 1
    assert budget is not None  # a refusal names a limited budget
    if admission.retry_after is None:
        # Larger than the whole budget: waiting cannot help, so no retry-after.
        message = (
            f"Request too large for {model} in organization {_ORGANIZATION} on {unit}: "
            f"Limit {budget.limit}, Requested {requested}. The input or output tokens must be "
            f"reduced in order to run successfully. {_RATE_LIMITS_DOC}"
        )
        headers: dict[str, str] = {}
    else:
        message = (
            f"Rate limit reached for {model} in organization {_ORGANIZATION} on {unit}: "
            f"Limit {budget.limit}, Used {budget.limit - budget.remaining}, "
            f"Requested {requested}. Please try again in "
            f"{format_duration(admission.retry_after)}. {_RATE_LIMITS_DOC}"
        )
        headers = retry_after_headers(admission.retry_after)
    return error_response(
        429, message, code="rate_limit_exceeded", kind=admission.limited_by, headers=headers
    )


@ROUTES.post("/v1/embeddings")
async def create_embeddings(request: web.Request) -> web.Response:
    """Embed `input` (a string or an array of strings) with the mock embedding of `model`."""
    state = request.app.get(QUOTAS)
    if state is None:
        return await _embeddings(request, None)
    quota = _Quota(state, bearer_key(request.headers.get("Authorization")))
    response = await _embeddings(request, quota)
    # Every answer carries the budget as it stands now: after this request's spending, if any.
    response.headers.update(ratelimit_headers(state.peek_openai(quota.key, time.monotonic())))
    return response


async def _embeddings(request: web.Request, quota: _Quota | None) -> web.Response:
    settings = request.app[SETTINGS]
    if quota is not None and quota.state.insufficient_quota:
        quota.state.refuse_insufficient_quota(quota.key)
        return error_response(
            429, _INSUFFICIENT_QUOTA, code="insufficient_quota", kind="insufficient_quota"
        )
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error_response(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return error_response(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, "You must provide a model parameter.", param="model")
    if model not in MODEL_DIMENSIONS:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return error_response(404, message, param="model", code="model_not_found")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        message = f"Invalid 'encoding_format': {encoding!r}; expected 'float' or 'base64'."
        return error_response(400, message, param="encoding_format")
    try:
        inputs = _parse_inputs(body, settings)
        dimensions = _parse_dimensions(body, model)
        fault = _output_fault(request)
    except _InvalidRequestError as invalid:
        return error_response(400, invalid.message, param=invalid.param)
    if quota is not None:
        refusal = _over_quota(quota, model, sum(estimate_tokens(text) for text in inputs))
        if refusal is not None:
            return refusal
    if sum(len(text) for text in inputs) <= _INLINE_CHARS:
        # A query or a small batch: handing it to a thread would cost more than embedding it.
        payload = _render(
            inputs, model=model, dimensions=dimensions, encoding=encoding, fault=fault
        )
    else:
        # Off the event loop: a full batch takes long enough to stall other requests and the
        # admin API.
        payload = await asyncio.to_thread(
            _render, inputs, model=model, dimensions=dimensions, encoding=encoding, fault=fault
        )
    return web.Response(body=payload, content_type="application/json")


def _output_fault(request: web.Request) -> OutputFault | None:
    """The output fault the request asks for (docpipe_mocks.output_faults), if any."""
    spec = output_faults.requested_spec(
        request.match_info.get(output_faults.PATH_PARAMETER),
        bearer_key(request.headers.get("Authorization")),
    )
    if spec is None:
        return None
    try:
        return output_faults.parse_output_fault(spec, "openai")
    except OutputFaultError as error:
        raise _InvalidRequestError(str(error)) from None


def install(
    app: web.Application, settings: OpenAISettings, quotas: QuotaState | None = None
) -> None:
    """Add the embeddings endpoint to `app`, configured by `settings`, limited by `quotas`."""
    app[SETTINGS] = settings
    if quotas is not None:
        app[QUOTAS] = quotas
    app.add_routes(ROUTES)
    # The same endpoints under /_faults/<fault>/, answering with that output fault.
    for route in ROUTES:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, output_faults.routed_path(route.path), route.handler)
