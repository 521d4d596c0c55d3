"""The pure parts of cost accounting: reading `--since` and prices, costing, and folding the
database's per-model sums into one line per owner or pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from docpipe_queue.document_usage import (
    Prices,
    UsageInputError,
    UsageSum,
    parse_price,
    parse_prices,
    parse_since,
    render_text,
    summarize,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        (
            "2026-11-01T08:30:00+01:00",
            datetime(2026, 11, 1, 8, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("7d", NOW - timedelta(days=7)),
        ("12h", NOW - timedelta(hours=12)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 1.5D ", NOW - timedelta(hours=36)),
    ],
)
def test_since_reads_dates_times_and_ages(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "7", "7y", "-7d", "2026-13-01", "2026-11-01 noon", "d7"]
)
def test_since_refuses_what_it_cannot_read_and_says_what_it_accepts(text: str) -> None:
    with pytest.raises(UsageInputError, match=r"--since must be a date \(2026-11-01\)"):
        parse_since(text, now=NOW)


def test_since_too_far_back_is_refused() -> None:
    with pytest.raises(UsageInputError, match="too far back"):
        parse_since("99999999999w", now=NOW)


def test_prices_come_from_the_options_else_from_the_environment() -> None:
    env = {
        "DOCPIPE_PRICE_PER_MILLION_TOKENS": "0.02",
        "DOCPIPE_PRICE_PER_THOUSAND_PAGES": "3",
    }
    assert parse_prices(None, None, env) == Prices(0.02, 3.0)
    assert parse_prices("0.13", None, env) == Prices(0.13, 3.0)
    assert parse_prices(None, "0", env) == Prices(0.02, 0.0)
    assert parse_prices(None, None, {}) == Prices(None, None)
    assert parse_prices(None, None, {"DOCPIPE_PRICE_PER_MILLION_TOKENS": " "}) == Prices()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-0.5", "must be a finite number >= 0, got '-0.5'"),
        ("nan", "must be a finite number >= 0"),
        ("inf", "must be a finite number >= 0"),
        ("cheap", "must be a number, got 'cheap'"),
    ],
)
def test_a_bad_price_is_refused_naming_where_it_came_from(value: str, message: str) -> None:
    with pytest.raises(UsageInputError, match=f"^--price-per-million-tokens {message}"):
        parse_prices(value, None, {})
    with pytest.raises(UsageInputError, match=f"^DOCPIPE_PRICE_PER_THOUSAND_PAGES {message}"):
        parse_prices(None, None, {"DOCPIPE_PRICE_PER_THOUSAND_PAGES": value})
    with pytest.raises(UsageInputError):
        parse_price(value, name="x")


def test_cost_prices_tokens_per_million_and_pages_per_thousand() -> None:
    assert Prices().cost(1_000_000, 1000) is None
    assert Prices(0.02).cost(2_500_000, 1000) == 0.05
    assert Prices(None, 3).cost(2_500_000, 1500) == 4.5
    assert Prices(0.02, 3).cost(2_500_000, 1500) == 4.55
    assert Prices(0.02, 3).cost(0, 0) == 0.0
    assert Prices(0.13).cost(1, 0) == 1.3e-07


def test_summarize_folds_models_sums_groups_and_totals_with_cost() -> None:
    sums = [
        UsageSum("alice", "text-embedding-3-small", 3, 1_000_000, 10, 8),
        UsageSum("alice", "text-embedding-3-large", 1, 500_000, 0, 2),
        UsageSum("bob", "text-embedding-3-small", 2, 2_000_000, 0, 4),
        UsageSum("carol", None, 1, 0, 5, 1),
    ]
    report = summarize(sums, by="owner", since=None, prices=Prices(0.02, 3))
    assert [line.key for line in report.lines] == ["bob", "alice", "carol"]  # most tokens first
    alice = report.lines[1]
    assert (alice.documents, alice.tokens, alice.pages, alice.requests) == (4, 1_500_000, 10, 10)
    assert alice.models == ("text-embedding-3-large", "text-embedding-3-small")
    assert alice.cost == 0.06
    assert report.lines[2].models == ()
    assert report.lines[2].cost == 0.015
    total = report.total
    assert (total.key, total.documents, total.tokens, total.pages, total.requests) == (
        None,
        7,
        3_500_000,
        15,
        15,
    )
    assert total.cost == 0.115


def test_summarize_without_prices_has_no_cost_and_nothing_sums_to_zero() -> None:
    report = summarize(
        [UsageSum("docs", "m", 1, 10, 0, 1)], by="pipeline", since=NOW, prices=Prices()
    )
    assert report.lines[0].cost is None
    assert report.total.cost is None
    empty = summarize([], by="owner", since=None, prices=Prices(1))
    assert (empty.lines, empty.total.tokens, empty.total.cost) == ((), 0, 0.0)


def test_json_and_text_show_the_same_figures() -> None:
    report = summarize(
        [UsageSum("alice", "m", 2, 1_000_000, 4, 6)],
        by="owner",
        since=datetime(2026, 11, 1, tzinfo=UTC),
        prices=Prices(0.02),
    )
    as_json = report.as_json()
    assert as_json["since"] == "2026-11-01T00:00:00+00:00"
    assert as_json["prices"] == {"per_million_tokens": 0.02, "per_thousand_pages": None}
    assert as_json["rows"] == [
        {
            "key": "alice",
            "documents": 2,
            "tokens": 1_000_000,
            "pages": 4,
            "requests": 6,
            "models": ["m"],
            "cost": 0.02,
        }
    ]
    text = render_text(report).splitlines()
    assert text[0].split() == ["owner", "documents", "tokens", "pages", "requests", "cost"]
    assert text[1].split() == ["alice", "2", "1000000", "4", "6", "0.020000"]
    assert text[2].split()[0] == "(total)"
    assert text[3] == "documents processed since 2026-11-01T00:00:00+00:00; 0.02 per million tokens"
    unpriced = render_text(summarize([], by="pipeline", since=None, prices=Prices()))
    assert "cost" not in unpriced.splitlines()[0]
    assert "no prices: set --price-per-million-tokens" in unpriced
