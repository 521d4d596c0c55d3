"""`docpipe eval QUERIES.json`: how well search finds the documents that answer questions.

The questions file is a JSON list (or an object with a `questions` list) of
`{"question": "...", "accepted": ["path/or/name", ...]}`. A hit answers a question when its
document is accepted: its source URL ends with an accepted entry, or its file name equals one.
The metrics are pure functions of the ranked hits, per question, then averaged per mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from docpipe_api.models import SearchHit

MODES = ("vector", "keyword", "hybrid")


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    accepted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scores:
    """The means over the questions of one mode."""

    mode: str
    questions: int
    hit_at_k: float
    mrr: float
    recall_at_k: float


def load_questions(path: Path) -> list[Question]:
    """The questions of a questions file; ValueError naming the entry when one is malformed."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    entries = raw.get("questions") if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of questions")
    questions = []
    for index, entry in enumerate(entries):
        accepted = entry.get("accepted") if isinstance(entry, dict) else None
        text = entry.get("question") if isinstance(entry, dict) else None
        if (
            not isinstance(text, str)
            or not text.strip()
            or not isinstance(accepted, list)
            or not accepted
            or not all(isinstance(a, str) and a for a in accepted)
        ):
            raise ValueError(
                f"{path}: question {index} needs a 'question' text and a non-empty "
                "'accepted' list of document paths or names"
            )
        questions.append(Question(text, tuple(accepted)))
    return questions


def document_key(hit: SearchHit) -> str:
    """What identifies a hit's document for matching: its source URL, else its file name."""
    return hit.source_url or hit.filename


def is_accepted(key: str, accepted: Sequence[str]) -> bool:
    """Whether a document key (source URL or file name) is one of the accepted documents."""
    name = key.rsplit("/", 1)[-1]
    return any(key.endswith("/" + a.lstrip("/")) or key == a or name == a for a in accepted)


def hit_at_k(relevant: Sequence[bool], k: int) -> float:
    """1.0 when any of the first `k` hits is relevant, else 0.0."""
    return 1.0 if any(relevant[:k]) else 0.0


def reciprocal_rank(relevant: Sequence[bool]) -> float:
    """1 / the rank (from 1) of the first relevant hit; 0.0 when none is."""
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            return 1.0 / rank
    return 0.0


def recall_at_k(keys: Sequence[str], accepted: Sequence[str], k: int) -> float:
    """The share of the accepted documents among the documents of the first `k` hits."""
    found = {a for a in accepted for key in keys[:k] if is_accepted(key, [a])}
    return len(found) / len(accepted) if accepted else 0.0


def score_mode(mode: str, ranked_keys: Sequence[Sequence[str]], questions: Sequence[Question],
               k: int) -> Scores:  # fmt: skip
    """The mean hit@k, MRR and recall@k of one mode's ranked document keys per question."""
    hits, ranks, recalls = [], [], []
    for keys, question in zip(ranked_keys, questions, strict=True):
        relevant = [is_accepted(key, question.accepted) for key in keys]
        hits.append(hit_at_k(relevant, k))
        ranks.append(reciprocal_rank(relevant))
        recalls.append(recall_at_k(keys, question.accepted, k))
    count = len(questions)
    return Scores(
        mode=mode,
        questions=count,
        hit_at_k=sum(hits) / count if count else 0.0,
        mrr=sum(ranks) / count if count else 0.0,
        recall_at_k=sum(recalls) / count if count else 0.0,
    )
