"""The pure parts of hybrid search: term weights, reciprocal rank fusion, highlight offsets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_api.ranking import (
    CANDIDATE_SHARE_BUDGET,
    COMMON_TERM_SHARE,
    HIGHLIGHT_START,
    HIGHLIGHT_STOP,
    MAX_CANDIDATES,
    candidate_budget,
    fuse_ranks,
    highlight_spans,
    plan_terms,
    tsquery_literal,
)


def test_rarer_terms_weigh_more_and_common_terms_do_not_find_candidates() -> None:
    plan = plan_terms(["worker", "sigterm", "use"], {"use": 0.30, "worker": 0.02})

    assert plan.weights["sigterm"] > plan.weights["worker"] > plan.weights["use"]
    assert plan.candidates == ["sigterm", "worker"]
    assert not plan.match_all


def test_candidates_come_from_the_rarest_terms_within_the_budget() -> None:
    budget = CANDIDATE_SHARE_BUDGET
    shares = {"systemd": budget / 100, "log": budget * 0.8, "tool": budget * 0.5, "level": 0.045}

    plan = plan_terms(["systemd", "log", "level", "tool"], shares)

    # systemd and tool fit; log would take their shares past the budget.
    assert plan.candidates == ["systemd", "tool"]
    assert not plan.match_all
    # Left out of the candidates, still in the score.
    assert set(plan.weights) == {"systemd", "log", "level", "tool"}


def test_the_rarest_term_finds_candidates_even_past_the_budget() -> None:
    plan = plan_terms(["thread", "race"], {"thread": 0.045, "race": 0.04})

    assert plan.candidates == ["race"]


@given(
    st.dictionaries(
        st.text(alphabet="abcdefgh", min_size=1, max_size=4),
        st.floats(min_value=1e-6, max_value=1.0),
        min_size=1,
        max_size=12,
    ),
    st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e9)),
)
def test_the_candidates_are_the_rarest_terms_and_stay_within_the_budget(
    shares: dict[str, float], chunks: float | None
) -> None:
    plan = plan_terms(list(shares), shares, chunks=chunks)

    if plan.match_all:
        assert min(shares.values()) > COMMON_TERM_SHARE
        return
    chosen = [shares[term] for term in plan.candidates]
    others = [shares[term] for term in shares if term not in plan.candidates]
    assert max(chosen) <= COMMON_TERM_SHARE
    # Every term left out is at least as common as every term chosen.
    assert not others or min(others) >= max(chosen)
    # Within the budget, unless the rarest term alone exceeds it.
    assert len(chosen) == 1 or sum(chosen) <= candidate_budget(chunks) + 1e-12
    if chunks is not None and len(chosen) > 1:
        assert sum(chosen) * chunks <= MAX_CANDIDATES * (1 + 1e-9)


def test_in_a_large_table_the_budget_is_a_count_of_chunks_not_a_share() -> None:
    shares = {"sigterm": 0.0004, "drain": 0.0005, "worker": 0.004}

    small = plan_terms(list(shares), shares, chunks=10_000)
    large = plan_terms(list(shares), shares, chunks=1_000_000)

    assert small.candidates == ["drain", "sigterm", "worker"]  # 49 chunks
    assert large.candidates == ["drain", "sigterm"]  # 900 chunks; with worker 4,900
    assert large.weights == small.weights
    assert candidate_budget(None) == CANDIDATE_SHARE_BUDGET
    assert candidate_budget(1e6) == MAX_CANDIDATES / 1e6


def test_a_query_of_only_common_terms_needs_all_of_them() -> None:
    plan = plan_terms(["file", "use"], {"use": 0.3, "file": 0.2})

    assert plan.candidates == ["file", "use"]
    assert plan.match_all


def test_without_statistics_every_term_weighs_the_same() -> None:
    plan = plan_terms(["apt", "proxy"], {})

    assert plan.weights["apt"] == plan.weights["proxy"]


def test_tsquery_literal_quotes_each_lexeme() -> None:
    assert tsquery_literal(["it's", "a\\b"]) == "'it''s' | 'a\\\\b'"
    assert tsquery_literal(["x", "y"], match_all=True) == "'x' & 'y'"


def test_fusion_ranks_an_item_both_rankings_found_above_items_only_one_found() -> None:
    fused = fuse_ranks({"vector": ["a", "b", "c"], "keyword": ["d", "c"]}, {}, k=60)

    assert fused[0][0] == "c"
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 62)
    assert {item for item, _ in fused} == {"a", "b", "c", "d"}


def test_fusion_weights_scale_each_rankings_contribution() -> None:
    rankings = {"vector": ["a"], "keyword": ["b"]}

    assert fuse_ranks(rankings, {"vector": 1.0, "keyword": 2.0}, k=60)[0][0] == "b"
    assert fuse_ranks(rankings, {"vector": 2.0, "keyword": 1.0}, k=60)[0][0] == "a"


def test_fusion_breaks_ties_by_first_appearance() -> None:
    fused = fuse_ranks({"vector": ["a"], "keyword": ["b"]}, {}, k=60)

    assert [item for item, _ in fused] == ["a", "b"]


def test_highlight_spans_are_offsets_into_the_original_text() -> None:
    original = "Workers drain jobs on SIGTERM."
    start, stop = HIGHLIGHT_START, HIGHLIGHT_STOP
    marked = f"Workers {start}drain{stop} jobs on {start}SIGTERM{stop}."

    spans = highlight_spans(marked, original)

    assert [original[start:end] for start, end in spans] == ["drain", "SIGTERM"]


def test_highlights_are_dropped_when_the_marked_text_does_not_line_up() -> None:
    assert highlight_spans(f"{HIGHLIGHT_START}a{HIGHLIGHT_STOP}b", "xb") == []
    assert highlight_spans(f"{HIGHLIGHT_START}x{HIGHLIGHT_STOP}", f"{HIGHLIGHT_START}x") == []


@given(
    st.text(alphabet=st.characters(blacklist_characters=HIGHLIGHT_START + HIGHLIGHT_STOP)),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_highlight_spans_give_back_the_spans_that_were_marked(text: str, cuts: list[int]) -> None:
    bounds = sorted({cut % (len(text) + 1) for cut in cuts})
    wanted = list(zip(bounds[0::2], bounds[1::2], strict=False))
    marked, previous = [], 0
    for start, end in wanted:
        marked += [text[previous:start], HIGHLIGHT_START, text[start:end], HIGHLIGHT_STOP]
        previous = end
    marked.append(text[previous:])

    assert highlight_spans("".join(marked), text) == wanted


def test_a_marker_without_its_pair_gives_no_highlights() -> None:
    start, stop = HIGHLIGHT_START, HIGHLIGHT_STOP
    assert highlight_spans(f"a {start}b{stop} c{stop}", "a b c") == []
    assert highlight_spans(f"{start}a {start}b{stop} c", "a b c") == []
