"""Per-subject rate limits of the intake API: a token bucket per key, in the process's memory.

Each API replica limits on its own, so a fleet of N replicas lets a subject through at up to N
times the rate; the limit is there to stop a runaway client, not to meter one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second per key on average, up to `burst` at once."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it changes nothing.
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            # Still full of active keys: forget the longest idle, which loses the least.
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
            del self._buckets[oldest]


@dataclass(frozen=True, slots=True)
class OwnerLimits:
    """What one owner may store and how fast it may upload; None: no limit."""

    max_documents: int | None = None
    max_bytes: int | None = None
    uploads_per_minute: float | None = None


@dataclass(frozen=True, slots=True)
class StorageRefusal:
    """A storage limit an upload would go beyond: its name, the limit and the current use."""

    limit_name: str  # "documents" or "bytes"
    limit: int
    used: int


class OwnerQuotas:
    """Per-owner limits of the intake API: the defaults, overridden per owner; the upload rate is
    a token bucket per owner (a minute's worth of burst), in this process's memory like
    `RateLimiter`."""

    def __init__(
        self,
        default: OwnerLimits,
        overrides: dict[str, OwnerLimits] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.overrides = dict(overrides or {})
        self._clock = clock
        # One bucket per owner, in the limiter of the owner's rate.
        self._limiters: dict[float, RateLimiter] = {}

    def limits(self, owner: str) -> OwnerLimits:
        return self.overrides.get(owner, self.default)

    def acquire_upload(self, owner: str) -> float:
        """Take one upload for `owner`: 0.0 when allowed, else the seconds until one is."""
        per_minute = self.limits(owner).uploads_per_minute
        if per_minute is None:
            return 0.0
        limiter = self._limiters.get(per_minute)
        if limiter is None:
            burst = max(1, int(per_minute))
            limiter = RateLimiter(per_minute / 60.0, burst, clock=self._clock)
            self._limiters[per_minute] = limiter
        return limiter.acquire(owner)

    def storage_refusal(
        self, owner: str, *, documents: int, stored_bytes: int, adding_bytes: int
    ) -> StorageRefusal | None:
        """The limit that one more document of `adding_bytes` would exceed, if any."""
        limits = self.limits(owner)
        if limits.max_documents is not None and documents + 1 > limits.max_documents:
            return StorageRefusal("documents", limits.max_documents, documents)
        if limits.max_bytes is not None and stored_bytes + adding_bytes > limits.max_bytes:
            return StorageRefusal("bytes", limits.max_bytes, stored_bytes)
        return None
