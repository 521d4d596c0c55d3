"""One request to an external HTTP service: its timeout, its metric, and how its failures map to
`TransientError` (retry later) or `PermanentError` (give up). A 429 maps to one of two kinds of
`TransientError`, `RateLimitedError` (wait and send again) or `QuotaExhaustedError` (no credit:
hold the provider's work), which a client with a quota budget handles itself (`quota_calls`)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from docpipe_contracts import correlation, tracing
from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers.metrics import EXTERNAL_REQUESTS

ModelT = TypeVar("ModelT", bound=BaseModel)

# How much of an unexpected error body goes into a message: enough to diagnose, not a page of HTML.
_MAX_MESSAGE_CHARS = 300

HeadersSeen = Callable[[Mapping[str, str]], None]


class RateLimitedError(TransientError):
    """A 429 that waiting cures (OpenAI's `rate_limit_exceeded`, or a 429 saying nothing more)."""


class QuotaExhaustedError(TransientError):
    """A 429 `insufficient_quota`: the account has no credit left; waiting alone cannot cure it."""


RateLimitKind = Literal["rate_limited", "insufficient_quota"]


def classify_rate_limit(body: bytes) -> RateLimitKind:
    """What a 429 means, from its body: OpenAI's `insufficient_quota` (in `error.code` or
    `error.type`), or else a rate limit (`rate_limit_exceeded`, no code, not JSON at all)."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return "rate_limited"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and "insufficient_quota" in (error.get("code"), error.get("type")):
        return "insufficient_quota"
    return "rate_limited"


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What OpenAI's `x-ratelimit-*` headers say; None where a header is missing or unreadable.

    `limit_*` are the quota per minute (RPM, TPM), `remaining_*` what is left of it, `reset_*`
    the seconds until it is whole again.
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)")
_DURATION_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str) -> float | None:
    """Seconds in an OpenAI reset header: a Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`)
    or a plain number of seconds."""
    text = value.strip().lower()
    if not text:
        return None
    plain = _non_negative_float(text)
    if plain is not None:
        return plain
    total = 0.0
    position = 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            return None
        total += float(part.group(1)) * _DURATION_SECONDS[part.group(2)]
        position = part.end()
    return total if position == len(text) and position > 0 else None


def _non_negative_int(value: str | None) -> int | None:
    if value is None:
        return None
    number = _non_negative_float(value.strip())
    return int(number) if number is not None and number.is_integer() else None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers."""

    def reset(name: str) -> float | None:
        value = headers.get(name)
        return parse_duration(value) if value is not None else None

    return RateLimitHeaders(
        limit_requests=_positive(_non_negative_int(headers.get("x-ratelimit-limit-requests"))),
        limit_tokens=_positive(_non_negative_int(headers.get("x-ratelimit-limit-tokens"))),
        remaining_requests=_non_negative_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_non_negative_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=reset("x-ratelimit-reset-requests"),
        reset_tokens_s=reset("x-ratelimit-reset-tokens"),
    )


def _positive(value: int | None) -> int | None:
    # A limit of 0 says nothing usable (and would stop all work): treat it as unstated.
    return value if value else None


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `retry-after` (seconds or HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        seconds = _non_negative_float(milliseconds)
        if seconds is not None:
            return seconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def _non_negative_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def service_message(body: bytes) -> str:
    """The human message of an error body: OpenAI's `error.message`, FastAPI's `detail`, or text."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = payload.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return json.dumps(detail)[:_MAX_MESSAGE_CHARS]
    text = body.decode("utf-8", errors="replace").strip()
    return text[:_MAX_MESSAGE_CHARS] or "(empty body)"


def _count(service: str, status: str) -> None:
    EXTERNAL_REQUESTS.labels(service=service, status=status).inc()
    # Every request ends here once, with its outcome: its span (request_model's) records it.
    outcome: dict[str, tracing.AttributeValue] = {"docpipe.request.outcome": status}
    if status.isdigit():
        outcome["http.response.status_code"] = int(status)
    tracing.annotate(outcome)


def _malformed_summary(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def request_model(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    response_model: type[ModelT],
    *,
    service: str,
    request_timeout: float,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    headers_seen: HeadersSeen | None = None,
    span_attributes: Mapping[str, tracing.AttributeValue] | None = None,
    route: str | None = None,
) -> ModelT:
    """Send one request to `service` within `request_timeout` seconds and return its 2xx body as
    `response_model`; raise TransientError or PermanentError for every other outcome (on a 429,
    `RateLimitedError` or `QuotaExhaustedError`). `headers_seen` gets the headers of every
    response, whatever its status (the quota headers come on 429s too). When tracing, the
    request is a client span (with `span_attributes`) named after `route`, the URL's path with
    its ids as placeholders (default: the path), and carries its `traceparent`."""
    with _client_span(method, url, service, route, span_attributes):
        if tracing.enabled():
            headers = dict(headers or {})
            tracing.inject(headers)
        return await _request_model(
            session, method, url, response_model, service=service,
            request_timeout=request_timeout, headers=headers, json_body=json_body, data=data,
            headers_seen=headers_seen,
        )  # fmt: skip


def _client_span(
    method: str,
    url: str,
    service: str,
    route: str | None,
    extra: Mapping[str, tracing.AttributeValue] | None,
) -> AbstractContextManager[tracing.Span]:
    """The span of one request (the shared no-op when tracing is off: nothing built for it)."""
    if not tracing.enabled():
        return tracing.span(service)
    target = URL(url)
    attributes: dict[str, tracing.AttributeValue] = {
        "http.request.method": method,
        "url.full": str(target.with_user(None).with_query(None)),
        "server.address": target.host or "",
        "docpipe.service": service,
        **(extra or {}),
    }
    if target.port is not None:
        attributes["server.port"] = target.port
    if route is not None:
        attributes["url.template"] = route
    resends = RESENDS.get()
    if resends:
        attributes["http.request.resend_count"] = resends
    name = f"{service} {method} {route or target.path}"
    return tracing.span(name, kind="client", attributes=attributes)


# How many times the request being sent went before (a 429 sends it again, `quota_calls`): set
# by the resending loop, read into the request's span.
RESENDS: ContextVar[int] = ContextVar("docpipe_request_resends", default=0)


async def _request_model(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    response_model: type[ModelT],
    *,
    service: str,
    request_timeout: float,
    headers: Mapping[str, str] | None,
    json_body: Any,
    data: Any,
    headers_seen: HeadersSeen | None,
) -> ModelT:
    what = f"{method} {URL(url).path}"
    # The job's correlation id goes along, so the service's logs can be matched with ours.
    correlation_id = correlation.CURRENT.get()
    if correlation_id is not None:
        headers = {**(headers or {}), correlation.HEADER: correlation_id}
    try:
        # One deadline for connecting, sending and reading the whole body: a service that accepts
        # the connection and then hangs must not hold the job.
        async with asyncio.timeout(request_timeout):
            async with session.request(
                method, url, headers=headers, json=json_body, data=data
            ) as response:
                body = await response.read()
    except TimeoutError:
        _count(service, "timeout")
        raise TransientError(
            f"{service}: no response to {what} within the {request_timeout:g}s timeout"
        ) from None
    except aiohttp.InvalidURL as exc:
        _count(service, "error")
        raise PermanentError(f"{service}: invalid URL {url!r}: {exc}") from exc
    except aiohttp.ClientError as exc:
        _count(service, "error")
        raise TransientError(f"{service}: {what} failed: {exc or type(exc).__name__}") from exc

    status = response.status
    if headers_seen is not None:
        headers_seen(response.headers)
    if 200 <= status < 300:
        try:
            parsed = response_model.model_validate_json(body)
        except ValidationError as exc:
            # The status says success but the body is unusable: counted as an error, retried.
            _count(service, "error")
            raise TransientError(
                f"{service}: malformed response to {what} ({status}): {_malformed_summary(exc)}"
            ) from None
        _count(service, str(status))
        return parsed

    _count(service, str(status))
    message = f"{service}: {what} returned {status} {response.reason or ''}".rstrip()
    message = f"{message}: {service_message(body)}"
    if status == 429:
        retry_after = parse_retry_after(response.headers)
        if classify_rate_limit(body) == "insufficient_quota":
            raise QuotaExhaustedError(message, retry_after=retry_after)
        raise RateLimitedError(message, retry_after=retry_after)
    if status == 408 or status >= 500:
        raise TransientError(message, retry_after=parse_retry_after(response.headers))
    if 400 <= status < 500:
        raise PermanentError(message, status=status)
    raise TransientError(message)
