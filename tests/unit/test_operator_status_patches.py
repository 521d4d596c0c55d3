"""The status is patched when its figures (rounded) or conditions change, not every round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docpipe_operator.conditions import Observation, build_status
from docpipe_operator.decision import (
    FIGURES_REFRESH_SECONDS,
    Children,
    Memory,
    decide,
    needs_patch,
    read_pipeline,
)
from docpipe_operator.model import DocumentPipelineStatus, dump
from docpipe_operator.scaling import Decision
from tests.unit.test_operator_decision import body

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _steady(throughput: float, oldest: float, *, complete: bool = True) -> Decision:
    return Decision(
        desired=3,
        reason=f"steady at 3 workers (throughput {throughput}, oldest waiting {oldest}s)",
        current=3,
        recommendation=3,
        metrics_complete=complete,
        queue_depth=5,
        oldest_ready_age_seconds=oldest,
        throughput_per_second=throughput,
    )


def _round(previous: DocumentPipelineStatus, decision: Decision, at: datetime) -> dict[str, object]:
    seen = Observation(1, decision=decision, replicas=3, ready_replicas=3)
    return dump(build_status(previous, seen, at))


def test_steady_rounds_differing_in_noise_and_messages_need_no_patch() -> None:
    first = _round(DocumentPipelineStatus(), _steady(1.2341, 4.2), T0)
    stored = DocumentPipelineStatus.model_validate(first)
    second = _round(stored, _steady(1.2389, 3.9, complete=True), T0 + timedelta(seconds=5))
    assert first["throughputPerSecond"] == 1.2
    assert first["oldestReadyAgeSeconds"] == 4.0
    assert first["conditions"] != second["conditions"]  # the Steady message's figures differ
    assert not needs_patch(first, second)


def test_a_changed_rounded_figure_or_condition_needs_a_patch() -> None:
    first = _round(DocumentPipelineStatus(), _steady(1.2341, 4.2), T0)
    stored = DocumentPipelineStatus.model_validate(first)
    later = T0 + timedelta(seconds=5)
    assert needs_patch(first, _round(stored, _steady(1.31, 4.2), later))
    assert needs_patch(first, _round(stored, _steady(1.2341, 5.6), later))
    # Metrics go missing: the Degraded condition flips.
    assert needs_patch(first, _round(stored, _steady(1.2341, 4.2, complete=False), later))


def test_between_refreshes_a_change_of_the_load_figures_alone_needs_no_patch() -> None:
    first = _round(DocumentPipelineStatus(), _steady(1.2341, 4.2), T0)
    stored = DocumentPipelineStatus.model_validate(first)
    later = T0 + timedelta(seconds=5)
    moved = _round(stored, _steady(2.5, 30.0), later)
    assert needs_patch(first, moved)
    assert not needs_patch(first, moved, figures=False)
    # A change beyond the figures is written at once, figures refresh or not.
    degraded = _round(stored, _steady(2.5, 30.0, complete=False), later)
    assert needs_patch(first, degraded, figures=False)


def test_the_figures_are_due_a_refresh_after_a_minute_without_a_status_write() -> None:
    def due(written: float | None, now: float) -> bool:
        pipeline = read_pipeline(body())
        memory = Memory(status_written=written)
        decided, _ = decide(
            pipeline, Children(), memory, load=None, now=now, wall=T0, monitoring=True
        )
        return decided.figures_due

    assert due(None, 100.0)
    assert not due(100.0, 100.0 + FIGURES_REFRESH_SECONDS - 1)
    assert due(100.0, 100.0 + FIGURES_REFRESH_SECONDS)
