"""How the intake API says no: one JSON shape for every error, with a stable code, a message that
names what was wrong, and the field at fault when there is one."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import ValidationError

from docpipe_api.models import ErrorDetail, ErrorResponse


class ProblemError(Exception):
    """An answer other than success, raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def not_found(what: str) -> ProblemError:
    return ProblemError(404, "not_found", f"no {what} with that id")


def invalid(field: str, message: str) -> ProblemError:
    return ProblemError(422, "invalid_parameter", f"{field}: {message}", field=field)


def from_validation_error(error: ValidationError, *, prefix: str = "") -> ProblemError:
    """A 422 naming the first invalid field of a pydantic validation failure."""
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"])
    field = f"{prefix}{location}" if location else prefix.rstrip(".") or "body"
    more = error.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    return ProblemError(
        422, "invalid_body" if prefix == "" else "invalid_parameter", f"{field}: {message}{suffix}",
        field=field,
    )  # fmt: skip


def problem_response(error: ProblemError, request_id: str) -> web.Response:
    body = ErrorResponse(
        error=ErrorDetail(code=error.code, message=error.message, field=error.field),
        request_id=request_id,
    )
    return web.Response(
        status=error.status,
        body=body.model_dump_json().encode(),
        content_type="application/json",
        headers=error.headers,
    )
