"""Output analysis: whether a canary writes worse output than the stable revision, from the
workers' per-revision output counters (`docpipe_output_*`) over one analysis interval.

Pure. A revision that succeeds on every job can still drop half of each page, shred text into
tiny chunks or write zero vectors; failed-job ratios never see it. The canary's output ratios
(extracted characters per input byte, chunks per document, share of empty documents, share of
degenerate vectors, mean vector norm) are compared with the stable revision's over the same
interval: the same kind of documents go to both, since both claim from the same queue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class OutputCounters:
    """One pod's output counters for one revision (cumulative, as scraped), or one revision's
    increase over an interval."""

    documents: float = 0.0
    input_bytes: float = 0.0
    extracted_chars: float = 0.0
    chunks: float = 0.0
    empty_documents: float = 0.0
    vectors: float = 0.0
    degenerate_vectors: float = 0.0  # zero or non-finite
    norm_sum: float = 0.0  # the vector norm histogram's _sum
    norm_count: float = 0.0  # ... and _count


@dataclass(frozen=True)
class OutputSample:
    """One revision's output over one analysis interval, and the ratios the verdict compares."""

    counters: OutputCounters = OutputCounters()

    @property
    def documents(self) -> float:
        return self.counters.documents

    @property
    def chars_per_byte(self) -> float | None:
        c = self.counters
        return c.extracted_chars / c.input_bytes if c.input_bytes > 0 else None

    @property
    def chunks_per_document(self) -> float | None:
        c = self.counters
        return c.chunks / c.documents if c.documents > 0 else None

    @property
    def empty_share(self) -> float | None:
        # An empty document is counted when its job fails, not among the documents completed.
        c = self.counters
        seen = c.documents + c.empty_documents
        return c.empty_documents / seen if seen > 0 else None

    @property
    def degenerate_share(self) -> float | None:
        # Zero vectors are stored (and counted among the vectors); non-finite ones are refused.
        c = self.counters
        seen = max(c.vectors, c.degenerate_vectors)
        return c.degenerate_vectors / seen if seen > 0 else None

    @property
    def mean_norm(self) -> float | None:
        c = self.counters
        return c.norm_sum / c.norm_count if c.norm_count > 0 else None


@dataclass(frozen=True)
class OutputPolicy:
    """The thresholds of the output analysis (from spec.rollout.outputAnalysis)."""

    enabled: bool = True
    # Canary over stable of chars/byte, chunks/document and mean norm: outside 1 ± this fails.
    max_relative_change: float = 0.3
    # The canary's share of documents with no text may exceed the stable's by at most this.
    max_empty_share_increase: float = 0.05
    # The canary's share of zero or non-finite vectors may exceed the stable's by at most this.
    max_degenerate_share_increase: float = 0.01
    # Documents the canary must have finished in an interval for its output to be judged.
    min_documents: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.max_relative_change < 1:
            raise ValueError(
                f"max_relative_change must be within (0, 1), got {self.max_relative_change}"
            )
        for name in ("max_empty_share_increase", "max_degenerate_share_increase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.min_documents < 1:
            raise ValueError(f"min_documents must be >= 1, got {self.min_documents}")


@dataclass(frozen=True)
class OutputVerdict:
    """The output analysis of one interval: `regression` names the metric and the figures of
    the first regression found; `judged` is False when there was too little output to judge."""

    judged: bool
    regression: str | None
    summary: str


def _delta(after: float, before: float | None) -> float:
    # A counter that went down was reset (the container restarted): count from zero.
    if before is None or after < before:
        return after
    return after - before


def sample_output(
    before: Mapping[str, OutputCounters], after: Mapping[str, OutputCounters]
) -> OutputSample:
    """One revision's output over an interval from per-pod counters at its start and end; a pod
    absent at the start counts from zero."""
    totals = dict.fromkeys((f.name for f in fields(OutputCounters)), 0.0)
    for pod, now in after.items():
        then = before.get(pod)
        for name in totals:
            totals[name] += _delta(getattr(now, name), getattr(then, name) if then else None)
    return OutputSample(OutputCounters(**totals))


def _relative(name: str, canary: float | None, stable: float | None, limit: float) -> str | None:
    if canary is None or stable is None or stable <= 0 or not math.isfinite(canary):
        return None
    ratio = canary / stable
    if abs(ratio - 1) > limit:
        return (
            f"{name} {canary:.4g} is {ratio:.2f}x the stable's {stable:.4g}"
            f" (allowed {1 - limit:.2f}x..{1 + limit:.2f}x)"
        )
    return None


def _increase(name: str, canary: float | None, stable: float | None, limit: float) -> str | None:
    if canary is None:
        return None
    baseline = stable if stable is not None else 0.0
    if canary > baseline + limit:
        return f"{name} {canary:.3f} above the stable's {baseline:.3f} + {limit:g}" + (
            "" if stable is not None else " (the stable reported none)"
        )
    return None


def judge_output(
    canary: OutputSample, stable: OutputSample | None, policy: OutputPolicy
) -> OutputVerdict:
    """Whether the canary's output over an interval regressed against the stable's.

    Shares (empty documents, degenerate vectors) are held to the stable's plus a margin, or to
    zero plus the margin when the stable reported no output (an image older than the counters);
    ratios (chars per byte, chunks per document, mean norm) need the stable's figures.
    """
    if not policy.enabled:
        return OutputVerdict(False, None, "output analysis disabled")
    if canary.documents < policy.min_documents:
        return OutputVerdict(
            False,
            None,
            f"canary finished {canary.documents:g} documents, fewer than the"
            f" {policy.min_documents} an output verdict needs",
        )
    base = stable if stable is not None and stable.documents >= policy.min_documents else None
    limit = policy.max_relative_change
    checks = (
        _increase(
            "degenerate vector share",
            canary.degenerate_share,
            base.degenerate_share if base else None,
            policy.max_degenerate_share_increase,
        ),
        _increase(
            "empty document share",
            canary.empty_share,
            base.empty_share if base else None,
            policy.max_empty_share_increase,
        ),
        _relative(
            "extracted chars per input byte",
            canary.chars_per_byte,
            base.chars_per_byte if base else None,
            limit,
        ),
        _relative(
            "chunks per document",
            canary.chunks_per_document,
            base.chunks_per_document if base else None,
            limit,
        ),
        _relative("mean vector norm", canary.mean_norm, base.mean_norm if base else None, limit),
    )
    found = next((c for c in checks if c is not None), None)
    if found is not None:
        return OutputVerdict(True, f"output regression: {found}", found)
    chars = canary.chars_per_byte
    summary = f"output of {canary.documents:g} documents" + (
        f", {chars:.3g} chars/byte" if chars is not None else ""
    )
    if base is None:
        summary += "; the stable reported too little output to compare ratios"
    return OutputVerdict(True, None, summary)


# ---- The golden set: the canary's and the stable's output on the same sample documents ----


@dataclass(frozen=True)
class GoldenFigures:
    """A canary worker's latest golden set comparison (the `docpipe_golden_*` gauges)."""

    text_overlap: float
    chunk_ratio: float
    cosine: float
    recall: float | None = None
    stable_recall: float | None = None


@dataclass(frozen=True)
class GoldenPolicy:
    """The golden set thresholds (spec.rollout.goldenSet); `enabled`: a golden set is set."""

    enabled: bool = False
    min_text_overlap: float = 0.9
    max_chunk_ratio_change: float = 0.3
    min_cosine: float = 0.9
    max_recall_drop: float = 0.1

    def __post_init__(self) -> None:
        for name in ("min_text_overlap", "min_cosine", "max_recall_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if not 0 < self.max_chunk_ratio_change < 1:
            raise ValueError(
                f"max_chunk_ratio_change must be within (0, 1), got {self.max_chunk_ratio_change}"
            )


def judge_golden(figures: GoldenFigures | None, policy: GoldenPolicy) -> OutputVerdict:
    """Whether the canary's output on the golden set regressed against the stable's."""
    if not policy.enabled:
        return OutputVerdict(False, None, "no golden set")
    if figures is None:
        return OutputVerdict(False, None, "no golden set comparison yet")
    problems = []
    if figures.text_overlap < policy.min_text_overlap:
        problems.append(
            f"text overlap {figures.text_overlap:.2f} below {policy.min_text_overlap:g}"
        )
    if abs(figures.chunk_ratio - 1) > policy.max_chunk_ratio_change:
        low, high = 1 - policy.max_chunk_ratio_change, 1 + policy.max_chunk_ratio_change
        problems.append(
            f"chunk count ratio {figures.chunk_ratio:.2f} outside {low:.2f}..{high:.2f}"
        )
    if figures.cosine < policy.min_cosine:
        problems.append(f"mean cosine {figures.cosine:.2f} below {policy.min_cosine:g}")
    if (
        figures.recall is not None
        and figures.stable_recall is not None
        and figures.recall < figures.stable_recall - policy.max_recall_drop
    ):
        problems.append(
            f"recall@k {figures.recall:.2f} below the stable's {figures.stable_recall:.2f}"
            f" - {policy.max_recall_drop:g}"
        )
    if problems:
        return OutputVerdict(True, "golden set regression: " + "; ".join(problems), problems[0])
    recall = f", recall {figures.recall:.2f}" if figures.recall is not None else ""
    return OutputVerdict(
        True,
        None,
        f"golden set: overlap {figures.text_overlap:.2f}, chunks {figures.chunk_ratio:.2f}x,"
        f" cosine {figures.cosine:.2f}{recall}",
    )
