"""The per-subject token bucket of the intake API."""

from __future__ import annotations

import pytest

from docpipe_api.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_the_next_request_waits_for_one_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)


def test_tokens_come_back_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=1, clock=clock)
    assert limiter.acquire("a") == 0.0
    clock.now = 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)
    clock.now = 0.5
    assert limiter.acquire("a") == 0.0


def test_subjects_do_not_share_a_bucket() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_forgetting_keys_never_forgets_an_exhausted_bucket_before_a_full_one() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_keys=2)
    limiter.acquire("busy")
    clock.now = 0.1
    limiter.acquire("idle")
    clock.now = 5.0  # both refilled: both may go
    limiter.acquire("busy")
    limiter.acquire("new")  # at capacity: the full bucket of "idle" is dropped
    assert limiter.acquire("busy") > 0  # "busy" kept its (empty) bucket
