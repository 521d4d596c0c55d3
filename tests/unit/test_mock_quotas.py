"""The mocks' quota logic, without a server: buckets, windows, durations, the ledger."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from docpipe_mocks.quotas import (
    ANONYMOUS,
    Admission,
    BudgetState,
    History,
    KeyBudget,
    OpenAIQuotas,
    QuotaConfig,
    QuotaState,
    SlidingWindow,
    TokenBucket,
    bearer_key,
    format_duration,
    ratelimit_headers,
    retry_after_headers,
)

EPSILON = 1e-6


def accepted_in_windows(accepted: list[tuple[float, int]], width: float) -> float:
    """The largest amount accepted in any closed interval of `width` seconds (the worst interval
    starts at an acceptance)."""
    return max(
        (sum(amount for at, amount in accepted if start <= at <= start + width))
        for start, _ in accepted
    )


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.12, "120ms"),
        (0.0004, "1ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (17.125, "17.125s"),
        (360.0, "6m0s"),
        (61.25, "1m1.25s"),
        (3600.0, "1h0m0s"),
        (0.9999, "1s"),
    ],
)
def test_durations_are_formatted_as_openai_formats_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_retry_after_is_whole_seconds_rounded_up_and_milliseconds() -> None:
    assert retry_after_headers(0.2) == {"retry-after": "1", "retry-after-ms": "200"}
    assert retry_after_headers(1.0) == {"retry-after": "1", "retry-after-ms": "1000"}
    assert retry_after_headers(1.0005) == {"retry-after": "2", "retry-after-ms": "1001"}


# --- the token bucket ---------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refills_the_limit_per_minute() -> None:
    bucket = TokenBucket.full(60, now=0.0)
    for _ in range(60):
        assert bucket.wait(1, 0.0) == 0
        bucket.take(1, 0.0)

    assert bucket.remaining(0.0) == 0
    assert bucket.wait(1, 0.0) == pytest.approx(1.0)
    assert bucket.reset_after(0.0) == pytest.approx(60.0)
    assert bucket.remaining(30.0) == 30
    assert bucket.remaining(600.0) == 60  # never above the capacity


def test_a_request_larger_than_the_capacity_waits_forever() -> None:
    assert math.isinf(TokenBucket.full(100, now=0.0).wait(101, 0.0))


def test_a_short_burst_holds_only_that_many_seconds_of_the_minute() -> None:
    bucket = TokenBucket.full(600, now=0.0, burst_seconds=5)  # 10 a second, 50 at once
    for _ in range(50):
        assert bucket.wait(1, 0.0) == 0
        bucket.take(1, 0.0)

    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.remaining(600.0) == 50  # never above five seconds' worth


def test_a_request_larger_than_a_short_burst_waits_for_a_full_bucket_and_leaves_debt() -> None:
    bucket = TokenBucket.full(600, now=0.0, burst_seconds=5)  # 50 at once
    bucket.take(10, 0.0)
    assert bucket.wait(80, 0.0) == pytest.approx(1.0)  # until the bucket is full again
    bucket.take(80, 1.0)
    # 30 in debt: the next unit comes after the debt is repaid.
    assert bucket.wait(1, 1.0) == pytest.approx(3.1)


requests = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),  # seconds since the previous
        st.integers(min_value=1, max_value=400),  # tokens
    ),
    min_size=1,
    max_size=300,
)


@given(
    rpm=st.integers(min_value=1, max_value=120),
    tpm=st.integers(min_value=1, max_value=2000),
    arrivals=requests,
    width=st.sampled_from([1.0, 10.0, 60.0, 90.0]),
)
def test_no_window_accepts_more_than_the_capacity_plus_its_refill(
    rpm: int, tpm: int, arrivals: list[tuple[float, int]], width: float
) -> None:
    # The documented bound: in any `width` seconds at most limit + limit * width / 60.
    budget = KeyBudget.new(OpenAIQuotas(requests_per_minute=rpm, tokens_per_minute=tpm), 0.0)
    now = 0.0
    accepted: list[tuple[float, int]] = []
    for gap, tokens in arrivals:
        now += gap
        if budget.admit(tokens, now).accepted:
            accepted.append((now, tokens))
    if not accepted:
        return

    as_requests = [(at, 1) for at, _ in accepted]
    assert accepted_in_windows(as_requests, width) <= rpm + rpm * width / 60 + EPSILON
    assert accepted_in_windows(accepted, width) <= tpm + tpm * width / 60 + EPSILON
    # Over the whole run, no more than the initial burst plus the refill.
    assert len(accepted) <= rpm + rpm * now / 60 + EPSILON
    assert sum(tokens for _, tokens in accepted) <= tpm + tpm * now / 60 + EPSILON


@given(
    rpm=st.integers(min_value=1, max_value=120),
    tpm=st.integers(min_value=1, max_value=2000),
    arrivals=requests,
)
def test_a_refused_request_is_accepted_after_its_retry_after(
    rpm: int, tpm: int, arrivals: list[tuple[float, int]]
) -> None:
    budget = KeyBudget.new(OpenAIQuotas(requests_per_minute=rpm, tokens_per_minute=tpm), 0.0)
    now = 0.0
    for gap, tokens in arrivals:
        now += gap
        admission = budget.admit(tokens, now)
        if admission.accepted:
            continue
        if tokens > tpm:
            assert admission.retry_after is None
            assert admission.limited_by == "tokens"
            continue
        assert admission.retry_after is not None
        assert admission.retry_after > 0
        assert budget.admit(tokens, now + admission.retry_after + EPSILON).accepted
        now += admission.retry_after + EPSILON


def test_a_request_refused_for_tokens_spends_no_request() -> None:
    budget = KeyBudget.new(OpenAIQuotas(requests_per_minute=10, tokens_per_minute=100), 0.0)
    assert budget.admit(90, 0.0).accepted

    refused = budget.admit(20, 0.0)

    assert (refused.accepted, refused.limited_by) == (False, "tokens")
    assert refused.retry_after == pytest.approx(6.0)  # 10 tokens at 100/60 per second
    assert refused.requests is not None
    assert (refused.requests.limit, refused.requests.remaining) == (10, 9)
    assert refused.tokens is not None
    assert refused.tokens.remaining == 10


def test_the_request_budget_names_itself_when_it_is_the_one_short() -> None:
    budget = KeyBudget.new(OpenAIQuotas(requests_per_minute=2), 0.0)
    budget.admit(5, 0.0)
    budget.admit(5, 0.0)

    refused = budget.admit(5, 0.0)

    assert refused.limited_by == "requests"
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.tokens is None


def test_an_unlimited_budget_accepts_everything_and_sends_no_headers() -> None:
    budget = KeyBudget.new(OpenAIQuotas(), 0.0)

    admission = budget.admit(10**9, 0.0)

    assert admission.accepted
    assert ratelimit_headers(admission) == {}


def test_headers_carry_limit_remaining_and_reset_of_each_limited_budget() -> None:
    admission = Admission(True, None, None, BudgetState(3, 2, 20.0), BudgetState(1000, 900, 6.0))

    assert ratelimit_headers(admission) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }


# --- the sliding window -------------------------------------------------------------------------


@given(
    limit=st.integers(min_value=1, max_value=20),
    window=st.integers(min_value=1, max_value=30),
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0, allow_nan=False), max_size=200),
)
def test_no_window_holds_more_uploads_than_the_limit(
    limit: int, window: int, gaps: list[float]
) -> None:
    uploads = SlidingWindow(limit, window)
    now = 0.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap
        retry_after = uploads.admit(now)
        if retry_after is None:
            accepted.append(now)
        else:
            assert retry_after > 0
            # Waiting that long makes room, and a millisecond less would not.
            early = SlidingWindow(limit, window, uploads.accepted.copy())
            assert early.admit(now + retry_after - 1e-3) is not None
            probe = SlidingWindow(limit, window, uploads.accepted.copy())
            assert probe.admit(now + retry_after + EPSILON) is None
    for start in accepted:
        assert sum(1 for at in accepted if start <= at < start + window) <= limit


# --- the ledger ---------------------------------------------------------------------------------


def test_history_keeps_ten_minutes_per_second_and_finds_the_busiest_minute() -> None:
    history = History()
    for second in range(700):
        history.add(1000.0 + second + 0.5, 10 if 200 <= second < 230 else 1)

    rows = history.rows()
    assert len(rows) == 600
    assert rows[0][0] == 1100
    assert history.max_in_window(60) == (60, 30 * 10 + 30 * 1)


def test_state_counts_served_and_refused_requests_per_key() -> None:
    state = QuotaState(QuotaConfig(openai=OpenAIQuotas(requests_per_minute=1)))
    assert state.admit_openai("sk-a", 5, now=0.0, wall=100.0).accepted
    assert not state.admit_openai("sk-a", 5, now=0.0, wall=100.0).accepted
    assert state.admit_openai("sk-b", 7, now=0.0, wall=100.0).accepted

    report: dict[str, Any] = state.report(now=0.0)

    assert report["openai"]["sk-a"] | {"history": None} == {
        "requests": 1,
        "tokens": 5,
        "rate_limited": 1,
        "insufficient_quota": 0,
        "remaining_requests": 0,
        "remaining_tokens": None,
        "max_requests_in_60s": 1,
        "max_tokens_in_60s": 5,
        "history": None,
    }
    assert report["openai"]["sk-a"]["history"] == [[100, 1, 5]]
    assert report["openai"]["sk-b"]["tokens"] == 7


def test_reconfiguring_keeps_what_was_spent_unless_reset() -> None:
    state = QuotaState(QuotaConfig(openai=OpenAIQuotas(requests_per_minute=2)))
    state.admit_openai("k", 1, now=0.0, wall=0.0)
    state.admit_openai("k", 1, now=0.0, wall=0.0)

    state.configure(QuotaConfig(openai=OpenAIQuotas(requests_per_minute=3)), now=0.0)
    assert state.peek_openai("k", 0.0).requests == BudgetState(3, 0, 60.0)

    state.configure(QuotaConfig(openai=OpenAIQuotas(requests_per_minute=3)), 0.0, reset=True)
    assert state.peek_openai("k", 0.0).requests == BudgetState(3, 3, 0.0)
    assert state.report(0.0)["openai"] == {}


def test_uploads_are_limited_per_key() -> None:
    config = QuotaConfig.model_validate({"llamaparse": {"uploads_per_window": 1}})
    state = QuotaState(config)

    assert state.admit_upload("a", now=0.0, wall=0.0) is None
    assert state.admit_upload("a", now=4.0, wall=4.0) == pytest.approx(6.0)
    assert state.admit_upload("b", now=4.0, wall=4.0) is None
    assert state.admit_upload("a", now=10.0, wall=10.0) is None


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (None, ANONYMOUS),
        ("Bearer sk-1", "sk-1"),
        ("bearer  sk-1 ", "sk-1"),
        ("Bearer ", ANONYMOUS),
        ("Basic abc", ANONYMOUS),
    ],
)
def test_the_key_is_the_bearer_token_or_the_anonymous_one(header: str | None, key: str) -> None:
    assert bearer_key(header) == key


# --- the configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"openai": {"requests_per_minute": 0}}, ("openai", "requests_per_minute")),
        ({"openai": {"tokens_per_minute": -5}}, ("openai", "tokens_per_minute")),
        ({"openai": {"tokens_per_minute": "5"}}, ("openai", "tokens_per_minute")),
        ({"openai": {"requests_per_minute": True}}, ("openai", "requests_per_minute")),
        ({"openai": {"requests_per_minute": 1.5}}, ("openai", "requests_per_minute")),
        ({"llamaparse": {"uploads_per_window": 0}}, ("llamaparse", "uploads_per_window")),
        ({"llamaparse": {"window_seconds": 0}}, ("llamaparse", "window_seconds")),
        ({"openai": {"rpm": 5}}, ("openai", "rpm")),
    ],
)
def test_invalid_quotas_are_refused_naming_the_field(
    body: dict[str, Any], field: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        QuotaConfig.model_validate(body)

    assert caught.value.errors()[0]["loc"] == field


def test_null_means_unlimited() -> None:
    config = QuotaConfig.model_validate_json(
        '{"openai": {"requests_per_minute": null, "tokens_per_minute": 1000}}'
    )

    assert config.openai.requests_per_minute is None
    assert config.openai.tokens_per_minute == 1000
