"""What a piece of work cost at the providers: embedding tokens as the provider reported them, and
pages parsed. The provider clients record into the meter of the work they run under; the pipeline
opens one meter per job and stores its totals with the document (cost accounting, `docpipe usage`).

A meter is found through a context variable, so concurrent requests of one job (tasks it starts
inherit the context) add to the same meter, and work outside any meter records nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Totals of one piece of work."""

    tokens: int = 0
    pages: int = 0
    requests: int = 0
    model: str | None = None


_current: ContextVar[Usage | None] = ContextVar("docpipe_usage", default=None)


@contextmanager
def metering() -> Iterator[Usage]:
    """Record the provider usage of the work inside the block into a fresh `Usage`."""
    usage = Usage()
    token = _current.set(usage)
    try:
        yield usage
    finally:
        _current.reset(token)


def record_tokens(model: str, tokens: int) -> None:
    """One embeddings response: `tokens` as the provider's `usage` reported them."""
    usage = _current.get()
    if usage is not None:
        usage.tokens += max(0, tokens)
        usage.requests += 1
        usage.model = model


def current() -> Usage | None:
    """The meter of the work running in this context (None: outside any meter)."""
    return _current.get()


def record_share(usage: Usage, model: str, tokens: int) -> None:
    """A caller's share of a request that carried several callers' inputs (`batching`): its part
    of the billed tokens, and the request counted once for each caller it carried."""
    usage.tokens += max(0, tokens)
    usage.requests += 1
    usage.model = model


def record_pages(pages: int) -> None:
    """One parse result of `pages` pages."""
    usage = _current.get()
    if usage is not None:
        usage.pages += max(0, pages)
        usage.requests += 1
