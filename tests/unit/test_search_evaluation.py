"""`docpipe eval`'s metrics: hit@k, reciprocal rank and recall@k of ranked hits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docpipe_cli.evaluation import (
    Question,
    hit_at_k,
    is_accepted,
    load_questions,
    recall_at_k,
    reciprocal_rank,
    score_mode,
)


def test_hit_at_k_counts_only_the_first_k_hits() -> None:
    assert hit_at_k([False, False, True], 3) == 1.0
    assert hit_at_k([False, False, True], 2) == 0.0
    assert hit_at_k([], 5) == 0.0


def test_reciprocal_rank_is_one_over_the_rank_of_the_first_relevant_hit() -> None:
    assert reciprocal_rank([False, True, True]) == 0.5
    assert reciprocal_rank([False, False]) == 0.0


def test_recall_counts_distinct_accepted_documents_among_the_first_k() -> None:
    keys = ["file:///d/a.md", "file:///d/a.md", "file:///d/b.md", "file:///d/c.md"]

    assert recall_at_k(keys, ["d/a.md", "d/c.md"], 3) == 0.5
    assert recall_at_k(keys, ["d/a.md", "d/c.md"], 4) == 1.0


def test_a_document_is_accepted_by_path_suffix_or_file_name() -> None:
    assert is_accepted("file:///usr/share/doc/apt/README.md", ["apt/README.md"])
    assert is_accepted("operations.md", ["operations.md"])
    assert is_accepted("file:///usr/share/doc/apt/README.md", ["README.md"])
    assert not is_accepted("file:///usr/share/doc/dpkg/README.md", ["apt/README.md"])
    assert not is_accepted("file:///x/notapt/README.md", ["apt/README.md"])


def test_score_mode_averages_over_the_questions() -> None:
    questions = [Question("q1", ("a.md",)), Question("q2", ("b.md",))]

    scores = score_mode("hybrid", [["x.md", "a.md"], ["y.md"]], questions, 5)

    assert scores.hit_at_k == 0.5
    assert scores.mrr == 0.25
    assert scores.recall_at_k == 0.5
    assert scores.questions == 2


def test_load_questions_reads_a_list_or_an_object_with_questions(tmp_path: Path) -> None:
    entry = {"question": "how?", "accepted": ["a.md"]}
    (tmp_path / "list.json").write_text(json.dumps([entry]))
    (tmp_path / "object.json").write_text(json.dumps({"questions": [entry]}))

    assert load_questions(tmp_path / "list.json") == [Question("how?", ("a.md",))]
    assert load_questions(tmp_path / "object.json") == [Question("how?", ("a.md",))]


def test_load_questions_names_the_malformed_entry(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"question": "ok", "accepted": ["a"]}, {"question": "no"}]))

    with pytest.raises(ValueError, match="question 1 needs"):
        load_questions(path)
