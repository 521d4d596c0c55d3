from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_queue.retry import RetryPolicy, backoff_delay

NO_JITTER = RetryPolicy(base_s=2.0, cap_s=600.0, jitter=0.0)


def test_delay_doubles_with_each_attempt() -> None:
    assert [backoff_delay(NO_JITTER, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]


def test_delay_is_capped() -> None:
    assert backoff_delay(NO_JITTER, 30) == 600.0
    assert backoff_delay(NO_JITTER, 10_000) == 600.0


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    assert backoff_delay(NO_JITTER, 1, retry_after=30.0) == 30.0
    assert backoff_delay(NO_JITTER, 1, retry_after=900.0) == 900.0


def test_shorter_retry_after_does_not_shorten_the_backoff() -> None:
    assert backoff_delay(NO_JITTER, 5, retry_after=1.0) == 32.0


def test_jitter_spreads_jobs_that_failed_together() -> None:
    policy = RetryPolicy(base_s=2.0, cap_s=600.0, jitter=0.5)
    rng = random.Random(7)
    delays = {round(backoff_delay(policy, 4, rng=rng), 6) for _ in range(50)}
    assert len(delays) > 40


@given(
    attempt=st.integers(min_value=1, max_value=200),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_delay_stays_within_the_jitter_band_below_the_cap(
    attempt: int, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=300.0, jitter=jitter)
    delay = backoff_delay(policy, attempt, rng=random.Random(seed))
    raw = min(300.0, 2.0 ** (attempt - 1))
    assert raw * (1 - jitter) - 1e-9 <= delay <= raw + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_s": 0}, "base_s must be > 0"),
        ({"base_s": 10, "cap_s": 5}, "cap_s must be >= base_s"),
        ({"jitter": 1.5}, r"jitter must be within \[0, 1\]"),
    ],
)
def test_invalid_policy_names_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_delay(NO_JITTER, 0)
