"""How a provider client spends a quota budget (`quota.Budget`): it waits for budget before each
request, learns the limit from the provider's headers, and rides out 429s inside the job.

A rate limit is not a failure (issue 13, ADR 0005): a 429 `rate_limit_exceeded` (or a 429 with no
code) tells the budget to back off, waits the provider's `retry-after` and sends the request
again; a 429 `insufficient_quota` holds the provider's calls (`docpipe_quota_held` 1, one warning)
and tries again every hold interval until the account has credit. Neither raises to the job, so
neither uses up an attempt: the job keeps its lease, because the consumer's heartbeats renew it
from their own task whatever the job is waiting for. Every wait is an `asyncio.sleep` or the
budget's own wait, so cancelling the job (lease lost, SIGTERM drain) ends it at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

from docpipe_providers import metrics
from docpipe_providers.external_requests import (
    RESENDS,
    QuotaExhaustedError,
    RateLimitedError,
    parse_rate_limit_headers,
)
from docpipe_providers.quota import Budget, QuotaKey, QuotaLimits

log = logging.getLogger(__name__)

DEFAULT_HOLD_S = 30.0
# A 429 that names no retry-after waits this long before the request is sent again.
DEFAULT_RETRY_AFTER_S = 1.0

Waited = Callable[[float], None]
T = TypeVar("T")

# How many jobs wait on the provider call under way: a request shared by several jobs
# (`batching`) sets it, so that its wait for budget counts once per waiting job. The operator
# subtracts these job-seconds from the jobs' busy time to find what a worker could do unthrottled
# (the quota ceiling, `scaling.quota_ceiling`); counted once per request, a shared wait would
# look like work.
JOBS_WAITING: contextvars.ContextVar[int] = contextvars.ContextVar(
    "docpipe_jobs_waiting", default=1
)


def quota_name(key: QuotaKey) -> str:
    """The `quota` label of a budget: a short prefix of the key's hash and the model, never the
    key itself."""
    return f"{key.key_hash[:12]}:{key.model}"


def estimate_tokens(texts: Iterable[str]) -> int:
    """Tokens a request's inputs spend from a tokens-per-minute quota, estimated before sending
    as OpenAI's limiter does: characters / 4, rounded up, at least 1 per input (the count
    `docpipe mocks` bills too)."""
    return sum(max(1, math.ceil(len(text) / 4)) for text in texts)


def limits_from_headers(headers: Mapping[str, str]) -> QuotaLimits | None:
    """The per-minute limits a response states (`x-ratelimit-limit-requests/-tokens`), if any."""
    parsed = parse_rate_limit_headers(headers)
    if parsed.limit_requests is None and parsed.limit_tokens is None:
        return None
    return QuotaLimits(
        requests_per_minute=parsed.limit_requests, tokens_per_minute=parsed.limit_tokens
    )


class QuotaGate:
    """One client's way through one budget, with the quota metrics of one pipeline."""

    def __init__(
        self,
        budget: Budget,
        key: QuotaKey,
        *,
        pipeline: str,
        hold_s: float = DEFAULT_HOLD_S,
        default_retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        if not hold_s > 0:
            raise ValueError(f"hold_s must be a positive number of seconds, got {hold_s!r}")
        self.budget = budget
        self.key = key
        self.pipeline = pipeline
        self.hold_s = hold_s
        self._default_retry_after_s = default_retry_after_s
        self.quota = quota_name(key)
        labels = (pipeline, key.provider, self.quota)
        self._m_wait = metrics.QUOTA_WAIT_SECONDS.labels(*labels)
        self._m_rate_limited = metrics.QUOTA_RATE_LIMITED.labels(*labels)
        self._m_held = metrics.QUOTA_HELD.labels(*labels)
        self._m_held.set(0)
        self._m_used_requests = metrics.QUOTA_USED.labels(*labels, "requests")
        self._m_used_tokens = metrics.QUOTA_USED.labels(*labels, "tokens")
        # While held: the loop time of the next try, and when the hold began (a request sent
        # before that which then succeeds says nothing about the account's credit now).
        self._held_until = 0.0
        self._held_since: float | None = None
        self._show_limits()

    @property
    def held(self) -> bool:
        """Whether the provider refuses this key's work for lack of credit, as far as we know."""
        return self._held_since is not None

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn the limits a response states (pass as `request_model(headers_seen=...)`)."""
        limits = limits_from_headers(headers)
        if limits is not None:
            self.budget.learn(limits)
            self._show_limits()

    async def call(
        self,
        send: Callable[[], Awaitable[T]],
        *,
        requests: int = 1,
        tokens: int = 0,
        waited: Waited | None = None,
    ) -> T:
        """`send()` once there is budget for `requests` and `tokens`, and again after each 429,
        until it returns or raises something else. `waited` hears of every wait, in seconds."""
        loop = asyncio.get_running_loop()
        resends = 0
        while True:
            await self._wait_out_hold(loop, waited)
            if requests or tokens:
                self._count_wait(
                    await self.budget.acquire(requests=requests, tokens=tokens), waited
                )
                self._m_used_requests.inc(requests)
                if tokens:
                    self._m_used_tokens.inc(tokens)
            sent_at = loop.time()
            # The request's span counts the sends before it (http.request.resend_count).
            resent = RESENDS.set(resends)
            resends += 1
            try:
                result = await send()
            except RateLimitedError as exc:
                self._m_rate_limited.inc()
                pause = exc.retry_after
                if pause is None:
                    pause = self._default_retry_after_s
                self.budget.back_off(pause)
                await self._sleep(pause, waited)
                continue
            except QuotaExhaustedError as exc:
                self._hold(loop, str(exc))
                continue
            finally:
                RESENDS.reset(resent)
            self._resume(sent_at)
            return result

    async def _wait_out_hold(self, loop: asyncio.AbstractEventLoop, waited: Waited | None) -> None:
        while (remaining := self._held_until - loop.time()) > 0:
            await self._sleep(remaining, waited)

    async def _sleep(self, seconds: float, waited: Waited | None) -> None:
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.sleep(seconds)
        finally:
            # Counted even when cancelled part way: it was spent waiting all the same.
            self._count_wait(loop.time() - started, waited)

    def _count_wait(self, seconds: float, waited: Waited | None) -> None:
        if seconds > 0:
            self._m_wait.inc(seconds * JOBS_WAITING.get())
            if waited is not None:
                waited(seconds)

    def _hold(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        now = loop.time()
        self._held_until = max(self._held_until, now + self.hold_s)
        if self._held_since is not None:
            return
        self._held_since = now
        self._m_held.set(1)
        # Every worker of the key should pause, not only this one: the budget tells the others.
        self.budget.back_off(self.hold_s)
        log.warning(
            "%s refuses work for lack of credit (insufficient_quota): holding pipeline %s's %s "
            "calls, trying again every %gs; jobs wait, none fail",
            self.key.provider,
            self.pipeline,
            self.key.provider,
            self.hold_s,
            extra={
                "provider": self.key.provider,
                "pipeline": self.pipeline,
                "quota": self.quota,
                "error": reason,
            },
        )

    def _resume(self, sent_at: float) -> None:
        if self._held_since is None or sent_at < self._held_since:
            return
        held_for = asyncio.get_running_loop().time() - self._held_since
        self._held_since = None
        self._held_until = 0.0
        self._m_held.set(0)
        log.info(
            "%s accepts work again: pipeline %s's hold is over after %.0fs",
            self.key.provider,
            self.pipeline,
            held_for,
            extra={"provider": self.key.provider, "pipeline": self.pipeline, "quota": self.quota},
        )

    def _show_limits(self) -> None:
        limits = self.budget.limits
        labels = (self.pipeline, self.key.provider, self.quota)
        for unit, value in (
            ("requests", limits.requests_per_minute),
            ("tokens", limits.tokens_per_minute),
        ):
            if value is not None:
                metrics.QUOTA_LIMIT_PER_MINUTE.labels(*labels, unit).set(value)
