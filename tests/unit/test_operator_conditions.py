"""Status and conditions from what a reconcile round saw (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docpipe_operator.conditions import Observation, build_status
from docpipe_operator.model import DocumentPipelineStatus
from docpipe_operator.scaling import Decision

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _decision(desired: int, current: int, *, complete: bool = True) -> Decision:
    return Decision(
        desired=desired,
        reason=f"why {current} → {desired}",
        current=current,
        recommendation=desired,
        metrics_complete=complete,
        queue_depth=7,
    )


def _cond(status: DocumentPipelineStatus, kind: str) -> tuple[str, str, datetime | None]:
    c = next(c for c in status.conditions if c.type == kind)
    return c.status, c.reason, c.last_transition_time


def test_an_invalid_spec_is_not_ready_and_degraded() -> None:
    status = build_status(DocumentPipelineStatus(), Observation(3, spec_error="spec.x: bad"), T0)
    assert _cond(status, "Ready")[:2] == ("False", "InvalidSpec")
    assert _cond(status, "Degraded")[:2] == ("True", "InvalidSpec")
    assert status.phase == "Degraded"
    assert status.observed_generation == 3


def test_a_scale_up_sets_scaling_and_records_the_reason() -> None:
    seen = Observation(1, decision=_decision(4, 2), replicas=2, ready_replicas=2)
    status = build_status(DocumentPipelineStatus(), seen, T0)
    assert _cond(status, "Scaling")[:2] == ("True", "ScalingUp")
    assert status.last_scale_reason == "why 2 → 4"
    assert status.desired_replicas == 4
    assert status.queue_depth == 7
    assert _cond(status, "Ready")[:2] == ("False", "WorkersNotReady")


def test_incomplete_metrics_mark_the_pipeline_degraded_but_running() -> None:
    seen = Observation(1, decision=_decision(3, 3, complete=False), replicas=3, ready_replicas=3)
    status = build_status(DocumentPipelineStatus(), seen, T0)
    assert _cond(status, "Degraded")[:2] == ("True", "MetricsIncomplete")
    assert status.phase == "Running"


def test_transition_time_is_kept_while_a_condition_holds_and_moves_when_it_flips() -> None:
    seen = Observation(1, decision=_decision(2, 2), replicas=2, ready_replicas=2)
    first = build_status(DocumentPipelineStatus(), seen, T0)
    later = build_status(first, seen, T0 + timedelta(minutes=5))
    assert _cond(later, "Ready") == ("True", "WorkersReady", T0)
    flipped = build_status(
        later,
        Observation(1, decision=_decision(2, 2), replicas=2, ready_replicas=1),
        T0 + timedelta(minutes=6),
    )
    assert _cond(flipped, "Ready") == ("False", "WorkersNotReady", T0 + timedelta(minutes=6))


def test_zero_desired_workers_is_ready_and_scaled_to_zero() -> None:
    seen = Observation(1, decision=_decision(0, 0), replicas=0, ready_replicas=0)
    status = build_status(DocumentPipelineStatus(), seen, T0)
    assert status.phase == "ScaledToZero"
    assert _cond(status, "Ready")[:2] == ("True", "ScaledToZero")
    assert _cond(status, "Scaling")[:2] == ("False", "Steady")
