"""The status of a DocumentPipeline, from what one reconcile saw: pure.

Conditions follow the Kubernetes convention: a condition's `lastTransitionTime` changes only when
its `status` does, so `kubectl wait --for=condition=Ready` and alerts see real transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from docpipe_operator.model import Condition, DocumentPipelineStatus, Phase
from docpipe_operator.scaling import Decision

QUOTA_LIMITED = "QuotaLimited"


@dataclass(frozen=True)
class Observation:
    """What a reconcile found and decided; any part may be missing."""

    generation: int | None
    spec_error: str | None = None
    apply_error: str | None = None
    warnings: tuple[str, ...] = ()
    decision: Decision | None = None
    replicas: int | None = None  # pods the Deployment has
    ready_replicas: int | None = None
    selector: str | None = None


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def next_conditions(
    previous: Sequence[Condition], wanted: Sequence[dict[str, Any]], now: datetime
) -> list[Condition]:
    """The wanted conditions, keeping each one's transition time while its status holds."""
    before = {c.type: c for c in previous}
    result = []
    for entry in wanted:
        old = before.get(entry["type"])
        since = old.last_transition_time if old and old.status == entry["status"] else now
        result.append(Condition.model_validate({**entry, "lastTransitionTime": since}))
    return result


# The figures are rounded so that noise in the last digits does not mean a status patch each round.
def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else float(round(value, digits))


def _significant(value: float | None, digits: int) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def _quota_condition(
    previous: DocumentPipelineStatus, decision: Decision | None
) -> dict[str, Any] | None:
    """QuotaLimited: True while the provider quota keeps the fleet below what the load asks for
    (its ceiling binds, or a quota is held for lack of credit). A round without a decision keeps
    the previous one."""
    if decision is None:
        kept = next((c for c in previous.conditions if c.type == QUOTA_LIMITED), None)
        if kept is None:
            return None
        held = _condition(QUOTA_LIMITED, kept.status == "True", kept.reason, kept.message)
        # Kept from an earlier round: it was set from the generation that round saw.
        return {**held, "observedGeneration": kept.observed_generation}
    ceiling = decision.quota_ceiling
    if decision.quota_held:
        quotas = ", ".join(decision.quota_held)
        message = (
            f"the provider refuses work for lack of credit (insufficient_quota: {quotas}); "
            f"{decision.desired} worker(s) keep the work visible, jobs wait"
        )
        return _condition(QUOTA_LIMITED, True, "InsufficientQuota", message)
    if decision.quota_limited and ceiling is not None:
        message = f"{ceiling.describe()}; running {decision.desired}"
        return _condition(QUOTA_LIMITED, True, "CeilingReached", message)
    if ceiling is not None:
        return _condition(QUOTA_LIMITED, False, "BelowCeiling", ceiling.describe())
    return _condition(QUOTA_LIMITED, False, "NoQuotaMeasured", "no provider quota measured")


@dataclass(frozen=True)
class Transition:
    """An Event to post because a condition started or stopped holding."""

    type: str  # Normal or Warning
    reason: str
    message: str


def quota_transition(
    previous: DocumentPipelineStatus, status: DocumentPipelineStatus
) -> Transition | None:
    """The Event for QuotaLimited starting, changing its reason, or ending; None otherwise."""
    before = next((c for c in previous.conditions if c.type == QUOTA_LIMITED), None)
    after = next((c for c in status.conditions if c.type == QUOTA_LIMITED), None)
    was = before is not None and before.status == "True"
    now = after is not None and after.status == "True"
    if after is None or (not was and not now):
        return None
    if now and (not was or (before is not None and before.reason != after.reason)):
        kind = "Warning" if after.reason == "InsufficientQuota" else "Normal"
        return Transition(kind, QUOTA_LIMITED, f"{after.reason}: {after.message}")
    if was and not now:
        return Transition("Normal", "QuotaLimitEnded", f"{after.reason}: {after.message}")
    return None


def build_status(
    previous: DocumentPipelineStatus, seen: Observation, now: datetime
) -> DocumentPipelineStatus:
    """The new status: phase, Ready/Scaling/Degraded conditions and the scaling figures."""
    decision = seen.decision
    desired = decision.desired if decision is not None else previous.desired_replicas
    ready = seen.ready_replicas or 0
    problems = [p for p in (seen.spec_error, seen.apply_error) if p]
    degraded_reason = (
        "InvalidSpec"
        if seen.spec_error
        else "ApplyFailed"
        if seen.apply_error
        else "MetricsIncomplete"
        if decision is not None and not decision.metrics_complete
        else "Warnings"
        if seen.warnings
        else "AsExpected"
    )
    if decision is not None and not decision.metrics_complete:
        problems.append(decision.reason)
    problems.extend(seen.warnings)
    degraded = _condition(
        "Degraded", bool(problems), degraded_reason, "; ".join(problems) or "no problem seen"
    )

    if seen.spec_error:
        ready_cond = _condition("Ready", False, "InvalidSpec", seen.spec_error)
    elif desired == 0:
        ready_cond = _condition("Ready", True, "ScaledToZero", "no work: no worker runs")
    elif desired is not None and ready >= desired:
        ready_cond = _condition("Ready", True, "WorkersReady", f"{ready}/{desired} workers ready")
    else:
        ready_cond = _condition(
            "Ready", False, "WorkersNotReady", f"{ready}/{desired or 0} workers ready"
        )

    if decision is not None and decision.changed:
        reason = "ScalingUp" if decision.desired > decision.current else "ScalingDown"
        scaling = _condition("Scaling", True, reason, decision.reason)
    elif decision is not None and seen.replicas is not None and seen.replicas != decision.desired:
        scaling = _condition("Scaling", True, "Converging", decision.reason)
    else:
        message = decision.reason if decision is not None else "no decision yet"
        scaling = _condition("Scaling", False, "Steady", message)

    wanted = [ready_cond, scaling, degraded]
    quota = _quota_condition(previous, decision)
    if quota is not None:
        wanted.append(quota)
    # Each condition says which generation of the spec it was set from (the Kubernetes
    # convention): a reader can tell a condition that predates a spec change.
    wanted = [{"observedGeneration": seen.generation, **c} for c in wanted]
    conditions = next_conditions(previous.conditions, wanted, now)
    phase: Phase
    if problems and (seen.spec_error or seen.apply_error):
        phase = "Degraded"
    elif desired == 0:
        phase = "ScaledToZero"
    elif ready > 0:
        phase = "Running"
    else:
        phase = "Pending"
    changes: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "observed_generation": seen.generation,
        "replicas": seen.replicas if seen.replicas is not None else previous.replicas,
        "ready_replicas": seen.ready_replicas
        if seen.ready_replicas is not None
        else previous.ready_replicas,
        "desired_replicas": desired,
        "selector": seen.selector or previous.selector,
    }
    if decision is not None:
        changes["last_scale_reason"] = (
            decision.reason if decision.changed else previous.last_scale_reason or decision.reason
        )
        changes["queue_depth"] = decision.queue_depth
        changes["oldest_ready_age_seconds"] = _rounded(decision.oldest_ready_age_seconds, 0)
        changes["throughput_per_second"] = _significant(decision.throughput_per_second, 2)
    return previous.model_copy(update=changes)
