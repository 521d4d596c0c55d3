"""Cost accounting: the provider usage of each document (table docpipe.document_usage, migration
0004), stored by the worker with the document's chunks, summed per owner or pipeline by
`docpipe usage` and shown by the intake API's document detail.

The statements are thin; what the figures mean is decided by the pure functions here: reading a
`--since` (`parse_since`), validating prices (`parse_prices`), turning figures into a cost
(`Prices.cost`) and folding the per-model sums of the database into one line per owner or
pipeline with a total (`summarize`).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy
GroupBy = Literal["owner", "pipeline"]
GROUPS: tuple[GroupBy, ...] = ("owner", "pipeline")

PRICE_PER_MILLION_TOKENS_ENV = "DOCPIPE_PRICE_PER_MILLION_TOKENS"
PRICE_PER_THOUSAND_PAGES_ENV = "DOCPIPE_PRICE_PER_THOUSAND_PAGES"

# The worker's write, in the transaction that stores the chunks: a reprocessed document replaces
# its figures (they are those of its latest successful processing).
RECORD_USAGE = """
insert into docpipe.document_usage as u
    (document_id, pipeline, owner, embedding_model, embedding_tokens, parsed_pages,
     provider_requests)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (document_id) do update
set pipeline = excluded.pipeline, owner = excluded.owner,
    embedding_model = excluded.embedding_model, embedding_tokens = excluded.embedding_tokens,
    parsed_pages = excluded.parsed_pages, provider_requests = excluded.provider_requests,
    recorded_at = now()
"""

# Sums per group and model, for `summarize`; rows of deleted documents count (the money was
# spent). One statement per grouping, so no column name is ever built from input.
_SUMS = """
select {key} as key, embedding_model as model, count(*) as documents,
       sum(embedding_tokens)::bigint as tokens, sum(parsed_pages)::bigint as pages,
       sum(provider_requests)::bigint as requests
from docpipe.document_usage
where $1::timestamptz is null or recorded_at >= $1
group by 1, 2
"""
USAGE_BY_OWNER = _SUMS.replace("{key}", "owner")
USAGE_BY_PIPELINE = _SUMS.replace("{key}", "pipeline")
_BY: dict[GroupBy, str] = {"owner": USAGE_BY_OWNER, "pipeline": USAGE_BY_PIPELINE}


class UsageInputError(ValueError):
    """A `--since` or a price that cannot be used; the message says what is accepted."""


# -- stored figures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentUsage:
    """What one processing of a document cost at the providers."""

    tokens: int
    pages: int
    requests: int
    model: str | None


async def record(
    conn: Connection,
    document_id: uuid.UUID,
    *,
    pipeline: str,
    owner: str,
    usage: DocumentUsage,
) -> None:
    """Store (or replace) the document's figures; run it in the transaction storing its chunks."""
    await conn.execute(
        RECORD_USAGE,
        document_id,
        pipeline,
        owner,
        usage.model,
        usage.tokens,
        usage.pages,
        usage.requests,
    )


# -- prices and cost -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prices:
    """What the providers charge; None: not priced (no cost is shown for it)."""

    per_million_tokens: float | None = None
    per_thousand_pages: float | None = None

    @property
    def priced(self) -> bool:
        return self.per_million_tokens is not None or self.per_thousand_pages is not None

    def cost(self, tokens: int, pages: int) -> float | None:
        """The cost of `tokens` and `pages` at these prices (unpriced parts cost nothing); None
        when nothing is priced."""
        if not self.priced:
            return None
        total = 0.0
        if self.per_million_tokens is not None:
            total += tokens * self.per_million_tokens / 1_000_000
        if self.per_thousand_pages is not None:
            total += pages * self.per_thousand_pages / 1_000
        # Rounded to nano-units: float noise (0.060000000000000005) out, a cheap document in.
        return round(total, 9)


def parse_price(value: str | float | None, *, name: str) -> float | None:
    """A price from the command line or the environment: a finite number >= 0, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        price = float(value)
    except ValueError:
        raise UsageInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(price) or price < 0:
        raise UsageInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return price


def parse_prices(
    per_million_tokens: str | float | None,
    per_thousand_pages: str | float | None,
    env: Mapping[str, str],
) -> Prices:
    """Prices from the options given, else from DOCPIPE_PRICE_PER_MILLION_TOKENS and
    DOCPIPE_PRICE_PER_THOUSAND_PAGES."""
    tokens = (
        parse_price(per_million_tokens, name="--price-per-million-tokens")
        if per_million_tokens is not None
        else parse_price(env.get(PRICE_PER_MILLION_TOKENS_ENV), name=PRICE_PER_MILLION_TOKENS_ENV)
    )
    pages = (
        parse_price(per_thousand_pages, name="--price-per-thousand-pages")
        if per_thousand_pages is not None
        else parse_price(env.get(PRICE_PER_THOUSAND_PAGES_ENV), name=PRICE_PER_THOUSAND_PAGES_ENV)
    )
    return Prices(tokens, pages)


# -- since ---------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(text: str, *, now: datetime) -> datetime:
    """The start of a report: a date (`2026-11-01`, midnight UTC), a time with or without an
    offset (`2026-11-01T08:00:00+01:00`; without one, UTC), or an age (`30m`, `12h`, `7d`, `2w`)
    before `now`."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        seconds = float(relative[1]) * _UNIT_SECONDS[relative[2].lower()]
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise UsageInputError(f"--since {text!r} reaches too far back") from None
    try:
        moment = datetime.fromisoformat(value)  # a date alone is its midnight
    except ValueError:
        raise UsageInputError(
            f"--since must be a date (2026-11-01), a time (2026-11-01T08:00:00Z) or an age "
            f"(30m, 12h, 7d, 2w), got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- summing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageSum:
    """The figures of one group and model as the database sums them."""

    key: str
    model: str | None
    documents: int
    tokens: int
    pages: int
    requests: int


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One owner's or pipeline's usage (or the total, key None) and its cost."""

    key: str | None
    documents: int
    tokens: int
    pages: int
    requests: int
    models: tuple[str, ...]
    cost: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "documents": self.documents,
            "tokens": self.tokens,
            "pages": self.pages,
            "requests": self.requests,
            "models": list(self.models),
            "cost": self.cost,
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    by: GroupBy
    since: datetime | None
    prices: Prices
    lines: tuple[UsageLine, ...]
    total: UsageLine

    def as_json(self) -> dict[str, object]:
        return {
            "by": self.by,
            "since": self.since.isoformat() if self.since is not None else None,
            "prices": {
                "per_million_tokens": self.prices.per_million_tokens,
                "per_thousand_pages": self.prices.per_thousand_pages,
            },
            "rows": [line.as_json() for line in self.lines],
            "total": self.total.as_json(),
        }


@dataclass
class _Acc:
    documents: int = 0
    tokens: int = 0
    pages: int = 0
    requests: int = 0
    models: set[str] = field(default_factory=set)

    def add(self, s: UsageSum) -> None:
        self.documents += s.documents
        self.tokens += s.tokens
        self.pages += s.pages
        self.requests += s.requests
        if s.model is not None:
            self.models.add(s.model)

    def line(self, key: str | None, prices: Prices) -> UsageLine:
        return UsageLine(
            key,
            self.documents,
            self.tokens,
            self.pages,
            self.requests,
            tuple(sorted(self.models)),
            prices.cost(self.tokens, self.pages),
        )


def summarize(
    sums: Iterable[UsageSum], *, by: GroupBy, since: datetime | None, prices: Prices
) -> UsageReport:
    """One line per owner or pipeline (the models it used folded together), most tokens first,
    and the total; each with its cost when priced."""
    groups: dict[str, _Acc] = {}
    total = _Acc()
    for s in sums:
        groups.setdefault(s.key, _Acc()).add(s)
        total.add(s)
    lines = sorted(
        (acc.line(key, prices) for key, acc in groups.items()),
        key=lambda line: (-line.tokens, -line.pages, line.key or ""),
    )
    return UsageReport(by, since, prices, tuple(lines), total.line(None, prices))


async def report(
    conn: Connection, *, by: GroupBy, since: datetime | None, prices: Prices
) -> UsageReport:
    """The usage recorded since `since` (all of it: None), per owner or pipeline."""
    rows = await conn.fetch(_BY[by], since)
    sums = [
        UsageSum(
            r["key"],
            r["model"],
            r["documents"],
            r["tokens"] or 0,
            r["pages"] or 0,
            r["requests"] or 0,
        )
        for r in rows
    ]
    return summarize(sums, by=by, since=since, prices=prices)


def render_text(result: UsageReport) -> str:
    """The report as a table for people: one line per owner or pipeline, then the total."""
    priced = result.prices.priced
    header = f"{result.by:<32} {'documents':>10} {'tokens':>14} {'pages':>10} {'requests':>10}"
    if priced:
        header += f" {'cost':>14}"
    out = [header]
    for line in (*result.lines, result.total):
        key = "(total)" if line.key is None else line.key
        text = (
            f"{key:<32} {line.documents:>10} {line.tokens:>14} {line.pages:>10} {line.requests:>10}"
        )
        if priced:
            text += f" {line.cost:>14.6f}"
        out.append(text)
    since = result.since.isoformat() if result.since is not None else "the start"
    notes = [f"documents processed since {since}"]
    if result.prices.per_million_tokens is not None:
        notes.append(f"{result.prices.per_million_tokens:g} per million tokens")
    if result.prices.per_thousand_pages is not None:
        notes.append(f"{result.prices.per_thousand_pages:g} per thousand pages")
    if not priced:
        notes.append(
            f"no prices: set --price-per-million-tokens or ${PRICE_PER_MILLION_TOKENS_ENV} "
            "for a cost"
        )
    out.append("; ".join(notes))
    return "\n".join(out)
