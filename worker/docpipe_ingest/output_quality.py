"""Measurements of what a document's processing produced, for the output metrics of a revision
(`docpipe_output_*`): how much text came out of how many bytes, how many chunks and vectors, and
which vectors are degenerate. A revision that completes every job but drops half of each page,
shreds its text or stores vectors of zeros shows here, not in its failure counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DegenerateKind = Literal["zero", "non_finite"]
DEGENERATE_KINDS: tuple[DegenerateKind, ...] = ("zero", "non_finite")

# A vector this short has no direction: its cosine similarity to anything is undefined (pgvector
# answers NaN), so search can never find its chunk. Real embeddings are about unit length.
ZERO_NORM = 1e-9


def vector_norm(vector: Sequence[float]) -> float:
    """The L2 norm of `vector` (inf or nan when a component is not finite)."""
    return math.hypot(*vector)


def degenerate_kind(norm: float) -> DegenerateKind | None:
    """Why a vector of L2 norm `norm` is unusable for search, or None when it is usable:
    `non_finite` (a component is NaN or infinite), `zero` (no direction)."""
    if not math.isfinite(norm):
        return "non_finite"
    if norm < ZERO_NORM:
        return "zero"
    return None


@dataclass(frozen=True, slots=True)
class VectorMeasure:
    """The vectors of one store: how many, the finite norms, how many of each degenerate kind."""

    count: int
    norms: tuple[float, ...]
    zero: int
    non_finite: int

    def degenerate(self, kind: DegenerateKind) -> int:
        return self.zero if kind == "zero" else self.non_finite


def measure_vectors(vectors: Sequence[Sequence[float]]) -> VectorMeasure:
    """Norms and degenerate counts of `vectors`; only finite norms are kept (a histogram that
    observed NaN would carry it in its sum for ever)."""
    norms: list[float] = []
    zero = non_finite = 0
    for vector in vectors:
        norm = vector_norm(vector)
        kind = degenerate_kind(norm)
        if kind == "non_finite":
            non_finite += 1
            continue
        if kind == "zero":
            zero += 1
        norms.append(norm)
    return VectorMeasure(len(vectors), tuple(norms), zero, non_finite)


def is_empty_text(text: str) -> bool:
    """Whether extracted text holds nothing to index (empty, or whitespace only)."""
    return not text.strip()


@dataclass(frozen=True, slots=True)
class DocumentOutput:
    """One completed document's output, as the `docpipe_output_*` counters add it up."""

    input_bytes: int
    extracted_chars: int
    chunks: int
