"""One request to an external HTTP service: its timeout, its metric, and how its failures map to
`TransientError` (retry later) or `PermanentError` (give up)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from docpipe_contracts import correlation
from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers.metrics import EXTERNAL_REQUESTS

ModelT = TypeVar("ModelT", bound=BaseModel)

# How much of an unexpected error body goes into a message: enough to diagnose, not a page of HTML.
_MAX_MESSAGE_CHARS = 300


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
) -> ModelT:
    """Send one request to `service` within `request_timeout` seconds and return its 2xx body as
    `response_model`; raise TransientError or PermanentError for every other outcome."""
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
    if status in (408, 429) or status >= 500:
        raise TransientError(message, retry_after=parse_retry_after(response.headers))
    if 400 <= status < 500:
        raise PermanentError(message, status=status)
    raise TransientError(message)
