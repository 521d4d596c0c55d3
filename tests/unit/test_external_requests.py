from __future__ import annotations

from datetime import UTC, datetime

import pytest

from docpipe_providers.embeddings import plan_batches
from docpipe_providers.external_requests import (
    RateLimitHeaders,
    classify_rate_limit,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    service_message,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after": "Sat, 01 Mar 2025 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Sat, 01 Mar 2025 11:59:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_seconds_milliseconds_or_a_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert parse_retry_after(headers, now=NOW) == seconds


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "Invalid input", "type": "invalid_request_error"}}',
            "Invalid input",
        ),
        (b'{"detail": "Job not found"}', "Job not found"),
        (b'{"detail": [{"loc": ["file"]}]}', '[{"loc": ["file"]}]'),
        (b"<html>Bad gateway</html>", "<html>Bad gateway</html>"),
        (b"", "(empty body)"),
    ],
)
def test_service_message_reads_openai_fastapi_and_plain_bodies(body: bytes, message: str) -> None:
    assert service_message(body) == message


def test_batches_are_cut_at_the_input_count_limit() -> None:
    assert plan_batches([1] * 7, max_inputs=3, max_chars=100) == [
        range(3),
        range(3, 6),
        range(6, 7),
    ]


def test_batches_are_cut_before_the_character_limit_is_exceeded() -> None:
    assert plan_batches([40, 40, 40, 10], max_inputs=10, max_chars=100) == [
        range(2),
        range(2, 4),
    ]


def test_an_input_longer_than_the_character_limit_gets_a_batch_of_its_own() -> None:
    assert plan_batches([5, 500, 5], max_inputs=10, max_chars=100) == [
        range(1),
        range(1, 2),
        range(2, 3),
    ]


def test_no_inputs_make_no_batches() -> None:
    assert plan_batches([], max_inputs=10, max_chars=100) == []


# --- Quota headers and 429s ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("17.172s", 17.172),
        ("1h2m3.5s", 3723.5),
        ("2m", 120.0),
        ("0s", 0.0),
        ("3", 3.0),
        ("0.5", 0.5),
        (" 1s ", 1.0),
        ("", None),
        ("soon", None),
        ("1x", None),
        ("s", None),
        ("1s2", None),
        ("-1s", None),
    ],
)
def test_reset_durations_are_read_as_go_durations_or_seconds(
    value: str, seconds: float | None
) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_rate_limit_headers_are_read_in_full() -> None:
    headers = {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-remaining-tokens": "999500",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }

    assert parse_rate_limit_headers(headers) == RateLimitHeaders(
        limit_requests=3000,
        limit_tokens=1_000_000,
        remaining_requests=2999,
        remaining_tokens=999_500,
        reset_requests_s=0.02,
        reset_tokens_s=360.0,
    )


def test_missing_or_unreadable_rate_limit_headers_say_nothing() -> None:
    headers = {
        "x-ratelimit-limit-requests": "many",
        "x-ratelimit-limit-tokens": "0",
        "x-ratelimit-remaining-requests": "-4",
        "x-ratelimit-remaining-tokens": "2.5",
        "x-ratelimit-reset-requests": "later",
    }

    assert parse_rate_limit_headers(headers) == RateLimitHeaders()
    assert parse_rate_limit_headers({}) == RateLimitHeaders()


def test_rate_limit_headers_are_read_case_insensitively_from_a_response() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict(
        {"X-RateLimit-Limit-Requests": "60", "X-RateLimit-Limit-Tokens": "150000"}
    )

    parsed = parse_rate_limit_headers(headers)

    assert (parsed.limit_requests, parsed.limit_tokens) == (60, 150_000)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            b'{"error": {"message": "Rate limit reached", "type": "requests",'
            b' "code": "rate_limit_exceeded"}}',
            "rate_limited",
        ),
        (
            b'{"error": {"message": "You exceeded your current quota",'
            b' "type": "insufficient_quota", "code": "insufficient_quota"}}',
            "insufficient_quota",
        ),
        (
            b'{"error": {"message": "no credit", "type": "insufficient_quota", "code": null}}',
            "insufficient_quota",
        ),
        (b'{"error": {"message": "Too many", "type": "tokens", "code": null}}', "rate_limited"),
        (b'{"detail": "Too many requests"}', "rate_limited"),
        (b'{"error": "insufficient_quota"}', "rate_limited"),
        (b"[1, 2]", "rate_limited"),
        (b"<html>429</html>", "rate_limited"),
        (b"", "rate_limited"),
    ],
)
def test_a_429_is_insufficient_quota_only_when_the_body_says_so(body: bytes, kind: str) -> None:
    assert classify_rate_limit(body) == kind
