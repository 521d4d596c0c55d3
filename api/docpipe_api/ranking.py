"""The pure parts of search: how the terms of a keyword query are weighted, how the vector and
keyword rankings are fused (reciprocal rank fusion), where the highlights of a chunk are."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# A term in more than this share of the chunks is too common to find candidates with: matching
# it would rank a large part of the table (slow) by a term that tells little. It still counts in
# the score of the candidates the rarer terms found.
COMMON_TERM_SHARE = 0.05
# How many candidates the rarer terms may find, as a share of the chunks: they join from the
# rarest while their shares add up to at most this (the rarest always joins). Every candidate is
# fetched and scored, so this bounds a keyword search's work and its slowest searches: a question
# whose rarer terms are each in 3-5 % of the chunks found 12 % of them. A chunk holding none of
# the terms that joined is not found, whatever else it holds; the terms left out still count in
# the score of the candidates found.
CANDIDATE_SHARE_BUDGET = 0.03
# ... and at most about this many chunks, whatever the table's size: a share is a count that
# grows with the table (3 % of a million chunks is 30,000 to fetch and score per search).
MAX_CANDIDATES = 1_000
# The share assumed for a term the statistics do not list: rarer than every term they list.
UNLISTED_TERM_SHARE = 1e-4
# Start and stop markers of ts_headline(..., 'HighlightAll=true'): characters that plain text
# almost never holds (a chunk that holds them gets no highlights rather than wrong ones).
HIGHLIGHT_START = "\u27e6"
HIGHLIGHT_STOP = "\u27e7"
_MARKED_SPAN = re.compile(
    f"{HIGHLIGHT_START}([^{HIGHLIGHT_START}{HIGHLIGHT_STOP}]*){HIGHLIGHT_STOP}"
)


@dataclass(frozen=True, slots=True)
class TermPlan:
    """A keyword query: the terms that find candidates (any of them), and every term's weight
    in the score of a candidate."""

    candidates: list[str]
    weights: dict[str, float]
    match_all: bool  # every term was common: candidates must hold all of them


def plan_terms(
    terms: Sequence[str], shares: Mapping[str, float], *, chunks: float | None = None
) -> TermPlan:
    """Weight each term by an inverse document frequency, ln(1 + 1/share), from `shares` (the
    fraction of chunks holding it, where known); the rarest terms find the candidates, within
    candidate_budget(chunks)."""
    budget = candidate_budget(chunks)
    unique = sorted(set(terms))
    floor = min(shares.values(), default=UNLISTED_TERM_SHARE * 2) / 2
    share = {term: shares.get(term, min(floor, UNLISTED_TERM_SHARE)) for term in unique}
    weights = {term: math.log1p(1.0 / max(share[term], 1e-9)) for term in unique}
    rare = sorted(
        (term for term in unique if share[term] <= COMMON_TERM_SHARE),
        key=lambda term: (share[term], term),
    )
    chosen: list[str] = []
    found = 0.0
    for term in rare:
        if chosen and found + share[term] > budget:
            break
        chosen.append(term)
        found += share[term]
    if chosen:
        return TermPlan(sorted(chosen), weights, match_all=False)
    return TermPlan(unique, weights, match_all=True)


def candidate_budget(chunks: float | None) -> float:
    """The share of the chunks the candidates may add up to, in a table of about `chunks` chunks
    (None: not known)."""
    if chunks is None or chunks <= 0:
        return CANDIDATE_SHARE_BUDGET
    return min(CANDIDATE_SHARE_BUDGET, MAX_CANDIDATES / chunks)


def tsquery_literal(terms: Sequence[str], *, match_all: bool = False) -> str:
    """A tsquery in its text form matching any (or all) of `terms`, each quoted as a lexeme."""
    quoted = ["'" + term.replace("\\", "\\\\").replace("'", "''") + "'" for term in terms]
    return (" & " if match_all else " | ").join(quoted)


def fuse_ranks(
    rankings: Mapping[str, Sequence[K]], weights: Mapping[str, float], *, k: int
) -> list[tuple[K, float]]:
    """Reciprocal rank fusion: each item scores the sum over rankings of weight / (k + rank),
    rank from 1; best first, ties in the order the items were first seen."""
    scores: dict[K, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 1.0)
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda entry: (-entry[1], order[entry[0]]))


def highlight_spans(marked: str, original: str) -> list[tuple[int, int]]:
    """The (start, end) offsets in `original` of the spans `marked` (the same text with the
    highlight markers around matched words) marks; empty when the two do not line up."""
    if HIGHLIGHT_START in original or HIGHLIGHT_STOP in original:
        return []
    if marked.replace(HIGHLIGHT_START, "").replace(HIGHLIGHT_STOP, "") != original:
        return []
    spans: list[tuple[int, int]] = []
    markers = 0  # marker characters before the current span, each one place off in `original`
    for match in _MARKED_SPAN.finditer(marked):
        start = match.start() - markers
        spans.append((start, start + len(match[1])))
        markers += 2
    if 2 * len(spans) != marked.count(HIGHLIGHT_START) + marked.count(HIGHLIGHT_STOP):
        return []  # a marker without its pair
    return spans
