"""Provider quotas for the mock services: the configuration, the limiters, and the usage ledger.

Pure: no I/O and no clock of its own (every method takes `now`), so the limits can be tested
without a server; `server.py` and the service modules call it with `time.monotonic()`.

The windows, and what they guarantee:

- **OpenAI** (requests per minute, tokens per minute of `/v1/embeddings`, per API key) uses a
  *token bucket*, the continuously refilling budget OpenAI documents: capacity = the limit per
  minute, refilling limit/60 per second, starting full. A request is accepted when both buckets
  hold what it needs (1 request, its input tokens); it then takes both, or nothing.
  Bound: the amount accepted in any interval of `w` seconds is at most `limit + limit * w / 60`,
  so at most twice the limit in a 60 s window (a full bucket spent at once and then its refill),
  and in the long run the limit per minute. `x-ratelimit-reset-*` is the time until the bucket
  is full again ("resets to its initial state"). A request needing more than the whole
  capacity can never be served: it is refused without a retry-after.
- **LlamaParse** (uploads per window of W seconds, per API key) uses a *sliding window log*: an
  upload is accepted when fewer than N uploads were accepted in the W seconds before it.
  Bound: any interval of W seconds holds at most N accepted uploads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ANONYMOUS = "anonymous"
"""The key of requests that carry no bearer token: they share one bucket."""

HISTORY_SECONDS = 600
"""How long the per-second history of accepted work is kept."""

Resource = Literal["requests", "tokens"]

# Floating-point slack in the buckets' arithmetic (a billionth of a request or token).
_SLACK = 1e-9


def _limit() -> int | None:
    # Positive integers, or null for unlimited; strict so that `true` or `"5"` are refused.
    return Field(default=None, ge=1, strict=True)


class OpenAIQuotas(BaseModel):
    """The quota every API key of the embeddings endpoint gets; null is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = _limit()
    tokens_per_minute: int | None = _limit()
    # Out of credit: every request is answered 429 `insufficient_quota`, whatever the budget.
    insufficient_quota: bool = Field(default=False, strict=True)
    # How much of a minute's budget may be spent at once. 60: a full minute's worth (a bucket of
    # capacity `limit`). Fewer: the limit enforced over shorter periods, as OpenAI says it may
    # ("60,000 requests/minute may be enforced as 1,000 requests/second"), so a client that
    # bursts is refused long before it has spent the minute's budget.
    burst_seconds: int = Field(default=60, ge=1, le=60, strict=True)


class LlamaParseQuotas(BaseModel):
    """The upload limit every API key of the parsing API gets; null is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uploads_per_window: int | None = _limit()
    window_seconds: int = Field(default=10, ge=1, le=86_400, strict=True)


class QuotaConfig(BaseModel):
    """The quotas of both mock services (none by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    openai: OpenAIQuotas = OpenAIQuotas()
    llamaparse: LlamaParseQuotas = LlamaParseQuotas()


def format_duration(seconds: float) -> str:
    """Format a duration as OpenAI's headers do (Go's style): `120ms`, `1s`, `1.5s`, `6m0s`.

    Rounded up to the millisecond, so that waiting this long always finds the budget."""
    millis = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    text += str(whole)
    if fraction:
        text += f".{fraction:03d}".rstrip("0")
    return text + "s"


@dataclass(slots=True)
class TokenBucket:
    """`limit` per minute, refilled continuously at `limit / 60` per second, holding at most
    `burst_seconds` of it (a full minute's worth by default)."""

    limit: int
    level: float
    updated: float
    burst_seconds: int = 60

    @classmethod
    def full(cls, limit: int, now: float, burst_seconds: int = 60) -> TokenBucket:
        bucket = cls(limit, 0.0, now, burst_seconds)
        bucket.level = bucket.capacity
        return bucket

    @property
    def capacity(self) -> float:
        """What the bucket holds when full."""
        return max(1.0, self.limit * self.burst_seconds / 60.0)

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        # A clock that went backwards refills nothing (and is not remembered).
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: int, now: float) -> float:
        """Seconds until `amount` is available: 0 now, `inf` if it exceeds the minute's limit.

        A request larger than the bucket (possible only with a short burst) waits for a full
        bucket and then leaves it in debt, so the minute's limit still holds on average."""
        self.refill(now)
        if amount > self.limit:
            return math.inf
        needed = min(float(amount), self.capacity)
        if self.level + _SLACK >= needed:
            # Within rounding of enough: a client that waited exactly its retry-after is served.
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, amount: int, now: float) -> None:
        """Spend `amount` (the caller checked `wait(amount, now) == 0`)."""
        self.refill(now)
        self.level = max(-float(self.limit), self.level - amount)

    def remaining(self, now: float) -> int:
        self.refill(now)
        return max(0, math.floor(self.level + _SLACK))

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self.refill(now)
        return (self.capacity - self.level) / self.rate

    def resized(self, limit: int, burst_seconds: int = 60) -> TokenBucket:
        """The same bucket under a new limit: what was spent stays spent, up to the capacity."""
        bucket = TokenBucket(limit, self.level, self.updated, burst_seconds)
        bucket.level = min(bucket.capacity, self.level)
        return bucket


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One bucket's figures for the `x-ratelimit-*-<resource>` headers."""

    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to one request: accepted, or refused because of `limited_by`.

    `retry_after` is None when accepted, and when waiting cannot help (a request larger than the
    whole token budget)."""

    accepted: bool
    limited_by: Resource | None
    retry_after: float | None
    requests: BudgetState | None
    tokens: BudgetState | None


def _state(bucket: TokenBucket | None, now: float) -> BudgetState | None:
    if bucket is None:
        return None
    return BudgetState(bucket.limit, bucket.remaining(now), bucket.reset_after(now))


@dataclass(slots=True)
class KeyBudget:
    """The request and token buckets of one API key (None: that quota is unlimited)."""

    requests: TokenBucket | None
    tokens: TokenBucket | None

    @classmethod
    def new(cls, quotas: OpenAIQuotas, now: float) -> KeyBudget:
        rpm, tpm = quotas.requests_per_minute, quotas.tokens_per_minute
        return cls(
            TokenBucket.full(rpm, now, quotas.burst_seconds) if rpm is not None else None,
            TokenBucket.full(tpm, now, quotas.burst_seconds) if tpm is not None else None,
        )

    def reconfigured(self, quotas: OpenAIQuotas, now: float) -> KeyBudget:
        def resize(bucket: TokenBucket | None, limit: int | None) -> TokenBucket | None:
            if limit is None:
                return None
            if bucket is None:
                return TokenBucket.full(limit, now, quotas.burst_seconds)
            bucket.refill(now)
            return bucket.resized(limit, quotas.burst_seconds)

        return KeyBudget(
            resize(self.requests, quotas.requests_per_minute),
            resize(self.tokens, quotas.tokens_per_minute),
        )

    def peek(self, now: float) -> Admission:
        """The current state, spending nothing (for answers that are not served)."""
        return Admission(True, None, None, _state(self.requests, now), _state(self.tokens, now))

    def admit(self, tokens: int, now: float) -> Admission:
        """Accept one request of `tokens` tokens if both budgets hold it, spending both; else
        spend nothing and say which budget is short and for how long."""
        wait_requests = self.requests.wait(1, now) if self.requests is not None else 0.0
        wait_tokens = self.tokens.wait(tokens, now) if self.tokens is not None else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            limited_by: Resource = "tokens" if wait_tokens >= wait_requests else "requests"
            wait = max(wait_requests, wait_tokens)
            retry_after = None if math.isinf(wait) else wait
            return Admission(
                False, limited_by, retry_after, _state(self.requests, now), _state(self.tokens, now)
            )
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)
        return Admission(True, None, None, _state(self.requests, now), _state(self.tokens, now))


@dataclass(slots=True)
class SlidingWindow:
    """At most `limit` acceptances in any `window` seconds."""

    limit: int
    window: float
    accepted: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        while self.accepted and self.accepted[0] + self.window <= now:
            self.accepted.popleft()

    def admit(self, now: float) -> float | None:
        """Accept (None) or refuse, returning the seconds until an acceptance would succeed."""
        self._expire(now)
        if len(self.accepted) < self.limit:
            # Monotonic in practice; a clock step back must not break the deque's order.
            self.accepted.append(max(now, self.accepted[-1]) if self.accepted else now)
            return None
        # The oldest acceptances leave the window first; after len - limit + 1 of them leave,
        # there is room again.
        return self.accepted[len(self.accepted) - self.limit] + self.window - now

    def resized(self, limit: int, window: float) -> SlidingWindow:
        return SlidingWindow(limit, window, deque(self.accepted))


@dataclass(slots=True)
class History:
    """Per second (wall clock, whole seconds): what was accepted, for the last `keep` seconds."""

    keep: int = HISTORY_SECONDS
    seconds: deque[list[int]] = field(default_factory=deque)  # [second, count, amount]

    def add(self, wall: float, amount: int) -> None:
        second = math.floor(wall)
        if self.seconds and self.seconds[-1][0] >= second:
            # The same second (or a wall clock stepped back): counted in the latest entry.
            self.seconds[-1][1] += 1
            self.seconds[-1][2] += amount
        else:
            self.seconds.append([second, 1, amount])
        while self.seconds and self.seconds[0][0] <= second - self.keep:
            self.seconds.popleft()

    def rows(self) -> list[list[int]]:
        return [list(row) for row in self.seconds]

    def max_in_window(self, width: int = 60) -> tuple[int, int]:
        """The largest count and amount in any `width` consecutive whole seconds."""
        best_count = best_amount = 0
        count = amount = 0
        start = 0
        rows = self.seconds
        for end in range(len(rows)):
            count += rows[end][1]
            amount += rows[end][2]
            while rows[start][0] <= rows[end][0] - width:
                count -= rows[start][1]
                amount -= rows[start][2]
                start += 1
            best_count, best_amount = max(best_count, count), max(best_amount, amount)
        return best_count, best_amount


@dataclass(slots=True)
class OpenAIUsage:
    """What one key was served and refused."""

    requests: int = 0
    tokens: int = 0
    rate_limited: int = 0
    insufficient_quota: int = 0
    history: History = field(default_factory=History)

    def report(self, budget: KeyBudget | None, now: float) -> dict[str, object]:
        max_requests, max_tokens = self.history.max_in_window()
        state = budget.peek(now) if budget is not None else None
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "rate_limited": self.rate_limited,
            "insufficient_quota": self.insufficient_quota,
            "remaining_requests": state.requests.remaining if state and state.requests else None,
            "remaining_tokens": state.tokens.remaining if state and state.tokens else None,
            "max_requests_in_60s": max_requests,
            "max_tokens_in_60s": max_tokens,
            "history": self.history.rows(),
        }


@dataclass(slots=True)
class LlamaParseUsage:
    uploads: int = 0
    pages: int = 0
    rate_limited: int = 0
    history: History = field(default_factory=History)

    def report(self, window_seconds: int) -> dict[str, object]:
        max_uploads, _ = self.history.max_in_window(window_seconds)
        return {
            "uploads": self.uploads,
            "pages": self.pages,
            "rate_limited": self.rate_limited,
            f"max_uploads_in_{window_seconds}s": max_uploads,
            "history": [[second, count] for second, count, _ in self.history.rows()],
        }


class QuotaState:
    """The quotas of a running mock: configuration, every key's budgets, and what they served."""

    def __init__(self, config: QuotaConfig) -> None:
        # Buckets are created full on a key's first request.
        self._config = config
        self._budgets: dict[str, KeyBudget] = {}
        self._windows: dict[str, SlidingWindow] = {}
        self._openai: dict[str, OpenAIUsage] = {}
        self._llamaparse: dict[str, LlamaParseUsage] = {}

    @property
    def config(self) -> QuotaConfig:
        return self._config

    def configure(self, config: QuotaConfig, now: float, *, reset: bool = False) -> None:
        """Replace the quotas. Budgets keep what was spent (clamped to the new capacity), unless
        `reset`: then every bucket starts full and every count starts from zero."""
        self._config = config
        if reset:
            self._budgets.clear()
            self._windows.clear()
            self._openai.clear()
            self._llamaparse.clear()
            return
        self._budgets = {
            key: budget.reconfigured(config.openai, now) for key, budget in self._budgets.items()
        }
        uploads = config.llamaparse.uploads_per_window
        window = config.llamaparse.window_seconds
        self._windows = (
            {}
            if uploads is None
            else {key: w.resized(uploads, window) for key, w in self._windows.items()}
        )

    # --- OpenAI -------------------------------------------------------------------------------

    def _budget(self, key: str, now: float) -> KeyBudget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = KeyBudget.new(self._config.openai, now)
        return budget

    def _openai_usage(self, key: str) -> OpenAIUsage:
        return self._openai.setdefault(key, OpenAIUsage())

    @property
    def insufficient_quota(self) -> bool:
        return self._config.openai.insufficient_quota

    def peek_openai(self, key: str, now: float) -> Admission:
        return self._budget(key, now).peek(now)

    def refuse_insufficient_quota(self, key: str) -> None:
        self._openai_usage(key).insufficient_quota += 1

    def admit_openai(self, key: str, tokens: int, now: float, wall: float) -> Admission:
        """Admit one embeddings request of `tokens` input tokens for `key`, and count it."""
        admission = self._budget(key, now).admit(tokens, now)
        usage = self._openai_usage(key)
        if admission.accepted:
            usage.requests += 1
            usage.tokens += tokens
            usage.history.add(wall, tokens)
        else:
            usage.rate_limited += 1
        return admission

    # --- LlamaParse ---------------------------------------------------------------------------

    def _llamaparse_usage(self, key: str) -> LlamaParseUsage:
        return self._llamaparse.setdefault(key, LlamaParseUsage())

    def admit_upload(self, key: str, now: float, wall: float) -> float | None:
        """Admit one upload for `key` (None), or return the seconds to wait; and count it."""
        quotas = self._config.llamaparse
        usage = self._llamaparse_usage(key)
        retry_after: float | None = None
        if quotas.uploads_per_window is not None:
            window = self._windows.get(key)
            if window is None:
                window = SlidingWindow(quotas.uploads_per_window, quotas.window_seconds)
                self._windows[key] = window
            retry_after = window.admit(now)
        if retry_after is None:
            usage.uploads += 1
            usage.history.add(wall, 1)
        else:
            usage.rate_limited += 1
        return retry_after

    def record_pages(self, key: str, pages: int) -> None:
        self._llamaparse_usage(key).pages += pages

    # --- Reporting ----------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, object]:
        """Per service and key: what was served and refused, and the per-second history."""
        window = self._config.llamaparse.window_seconds
        return {
            "openai": {
                key: usage.report(self._budgets.get(key), now)
                for key, usage in sorted(self._openai.items())
            },
            "llamaparse": {
                key: usage.report(window) for key, usage in sorted(self._llamaparse.items())
            },
        }


def bearer_key(authorization: str | None) -> str:
    """The API key of a request: its bearer token, or the shared anonymous key."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return ANONYMOUS


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a response (none for an unlimited quota)."""
    headers: dict[str, str] = {}
    for resource, state in (("requests", admission.requests), ("tokens", admission.tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{resource}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{resource}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{resource}"] = format_duration(state.reset_seconds)
    return headers


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`retry-after` (whole seconds, rounded up) and `retry-after-ms`."""
    millis = max(1, math.ceil(seconds * 1000 - 1e-6))
    return {"retry-after": str(max(1, math.ceil(millis / 1000))), "retry-after-ms": str(millis)}
