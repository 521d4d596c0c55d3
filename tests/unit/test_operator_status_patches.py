"""The status is patched when its figures (rounded) or conditions change, not every round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docpipe_operator.conditions import Observation, build_status
from docpipe_operator.decision import needs_patch
from docpipe_operator.model import DocumentPipelineStatus, dump
from docpipe_operator.scaling import Decision

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
