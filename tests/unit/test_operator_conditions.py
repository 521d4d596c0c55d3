"""Status and conditions from what a reconcile round saw (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from docpipe_operator.conditions import Observation, build_status, quota_transition
from docpipe_operator.model import DocumentPipelineStatus
from docpipe_operator.scaling import Decision, QuotaCeiling, QuotaKey

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


TOKENS = QuotaKey("openai", "q1", "tokens")
CEILING = QuotaCeiling(
    replicas=4,
    binding=TOKENS,
    limit_per_minute=90_000,
    used_per_job=500,
    quota_jobs_per_second=3.0,
    worker_jobs_per_second=1.0,
)


def _quota_decision(*, limited: bool, held: tuple[str, ...] = ()) -> Decision:
    return replace(
        _decision(4, 2), quota_ceiling=CEILING, quota_limited=limited or bool(held), quota_held=held
    )


def test_a_binding_ceiling_sets_quota_limited_with_its_figures() -> None:
    seen = Observation(1, decision=_quota_decision(limited=True), replicas=2, ready_replicas=2)
    status = build_status(DocumentPipelineStatus(), seen, T0)

    assert _cond(status, "QuotaLimited")[:2] == ("True", "CeilingReached")
    message = next(c.message for c in status.conditions if c.type == "QuotaLimited")
    assert "90000 tokens/min at 500 tokens/job feeds 3 jobs/s" in message
    assert "at most 4 workers" in message


@pytest.mark.parametrize(
    ("decision", "reason"),
    [
        (_quota_decision(limited=False), "BelowCeiling"),
        (_decision(2, 2), "NoQuotaMeasured"),
    ],
)
def test_quota_limited_is_false_while_the_ceiling_does_not_bind(
    decision: Decision, reason: str
) -> None:
    status = build_status(DocumentPipelineStatus(), Observation(1, decision=decision), T0)

    assert _cond(status, "QuotaLimited")[:2] == ("False", reason)


def test_a_held_quota_is_quota_limited_for_insufficient_quota() -> None:
    decision = _quota_decision(limited=False, held=("openai/q1",))
    status = build_status(DocumentPipelineStatus(), Observation(1, decision=decision), T0)

    assert _cond(status, "QuotaLimited")[:2] == ("True", "InsufficientQuota")


def test_a_round_without_a_decision_keeps_quota_limited_as_it_was() -> None:
    limited = build_status(
        DocumentPipelineStatus(), Observation(1, decision=_quota_decision(limited=True)), T0
    )

    kept = build_status(limited, Observation(2, replicas=4, ready_replicas=4), T0)
    fresh = build_status(DocumentPipelineStatus(), Observation(2), T0)

    assert _cond(kept, "QuotaLimited") == ("True", "CeilingReached", T0)
    assert "QuotaLimited" not in {c.type for c in fresh.conditions}


def test_quota_limited_posts_an_event_when_it_starts_and_when_it_ends() -> None:
    start = build_status(
        DocumentPipelineStatus(), Observation(1, decision=_quota_decision(limited=False)), T0
    )
    limited = build_status(start, Observation(1, decision=_quota_decision(limited=True)), T0)
    still = build_status(limited, Observation(1, decision=_quota_decision(limited=True)), T0)
    ended = build_status(still, Observation(1, decision=_quota_decision(limited=False)), T0)
    held = build_status(
        ended, Observation(1, decision=_quota_decision(limited=False, held=("o/q",))), T0
    )

    began = quota_transition(start, limited)
    assert began is not None
    assert (began.type, began.reason) == ("Normal", "QuotaLimited")
    assert "feeds 3 jobs/s" in began.message
    assert quota_transition(limited, still) is None
    assert quota_transition(DocumentPipelineStatus(), start) is None
    finished = quota_transition(still, ended)
    assert finished is not None
    assert (finished.type, finished.reason) == ("Normal", "QuotaLimitEnded")
    warned = quota_transition(ended, held)
    assert warned is not None
    assert (warned.type, warned.reason) == ("Warning", "QuotaLimited")
    assert "InsufficientQuota" in warned.message


def test_every_condition_carries_the_generation_it_was_set_from() -> None:
    first = build_status(
        DocumentPipelineStatus(), Observation(3, decision=_quota_decision(limited=True)), T0
    )
    invalid = build_status(first, Observation(4, spec_error="spec.worker.image: bad"), T0)

    assert {c.type: c.observed_generation for c in first.conditions} == {
        "Ready": 3,
        "Scaling": 3,
        "Degraded": 3,
        "QuotaLimited": 3,
    }
    # QuotaLimited was not decided again with generation 4: it still says 3.
    assert {c.type: c.observed_generation for c in invalid.conditions} == {
        "Ready": 4,
        "Scaling": 4,
        "Degraded": 4,
        "QuotaLimited": 3,
    }
    assert invalid.observed_generation == 4
