from __future__ import annotations

from datetime import UTC, datetime

import pytest

from docpipe_providers.embeddings import plan_batches
from docpipe_providers.external_requests import parse_retry_after, service_message

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
