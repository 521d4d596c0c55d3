"""The correlation id of the work in progress: accepted from a client's `X-Request-ID` (or made up),
stored with the job, and carried by the worker to its log lines and outbound HTTP requests."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"
MAX_LENGTH = 128

# Printable ASCII without spaces: safe in a header, a log line and a Postgres text column.
_ACCEPTED = re.compile(rf"^[!-~]{{1,{MAX_LENGTH}}}$")

# Set while one request or one job is being handled; tasks started meanwhile inherit it.
CURRENT: ContextVar[str | None] = ContextVar("docpipe_correlation_id", default=None)


def new_correlation_id() -> str:
    """A fresh id, for a request that brought none."""
    return uuid.uuid4().hex


def accept_correlation_id(value: str | None) -> str:
    """The client's id when usable (printable ASCII, at most 128 characters), else a new one."""
    if value is not None and _ACCEPTED.match(value):
        return value
    return new_correlation_id()
