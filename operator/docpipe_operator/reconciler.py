"""The reconcile shell: read the cluster, call the pure functions, write the results.

`ensure_children` keeps a pipeline's child objects equal to their rendering (creating, or patching
drift); `tick` is one autoscaling and rollout round (read load → `decide_replicas`, judge the
canary's interval → `rollout.plan` → apply → events → status). Neither decides anything itself:
rendering, scaling, rollout and conditions are pure modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from docpipe_operator import cluster, rendering, rollout, telemetry
from docpipe_operator.conditions import Observation, build_status
from docpipe_operator.model import (
    AnalysisInterval,
    DocumentPipelineSpec,
    DocumentPipelineStatus,
    RolloutSpec,
    RolloutStatus,
    SpecError,
    check_name,
    dump,
    parse_spec,
)
from docpipe_operator.scaling import (
    Decision,
    MetricsSnapshot,
    Recommendation,
    ScalingHistory,
    decide_replicas,
    pod_deletion_costs,
)

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# `kubectl annotate documentpipeline NAME docpipe.io/rollback=true` rolls the running canary back.
ROLLBACK_ANNOTATION = "docpipe.io/rollback"
# An analysis interval is judged at the first round at least this share of it after its start:
# rounds are timed by a sleep and arrive a little early or late.
INTERVAL_SLACK = 0.95
MONITORING_GROUP = "monitoring.coreos.com"
# A missing monitoring API is re-checked this often, so installing it later is noticed.
DISCOVERY_TTL_SECONDS = 60.0

_KINDS: dict[str, cluster.Resource] = {
    "Deployment": cluster.DEPLOYMENTS,
    "Service": cluster.SERVICES,
    "PodDisruptionBudget": cluster.PODDISRUPTIONBUDGETS,
    "PodMonitor": cluster.PODMONITORS,
}


@dataclass
class OperatorState:
    """What the operator keeps between handler calls (Kopf's memo)."""

    client: cluster.KubeClient
    http: aiohttp.ClientSession
    queues: telemetry.QueueReader = field(default_factory=telemetry.QueueReader)
    monitoring: tuple[float, bool] | None = None  # (checked at, served)

    async def has_monitoring(self) -> bool:
        """Whether the cluster serves PodMonitors (cached for a minute)."""
        now = time.monotonic()
        if self.monitoring is None or now - self.monitoring[0] > DISCOVERY_TTL_SECONDS:
            self.monitoring = (now, await self.client.has_api_group(MONITORING_GROUP))
        return self.monitoring[1]

    async def close(self) -> None:
        """Release connections."""
        await self.client.close()
        await self.http.close()
        await self.queues.close()


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The reference that makes the garbage collector delete a child with its pipeline."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def contains(actual: Any, wanted: Any) -> bool:
    """Whether `actual` has every field of `wanted` (lists: same length, item by item).

    The API server adds defaults to what we send; those are not drift.
    """
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            contains(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


@dataclass(frozen=True)
class Applied:
    """What `ensure_children` did and saw."""

    deployment: dict[str, Any] | None
    changed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


async def ensure_children(
    state: OperatorState,
    owner: Mapping[str, Any],
    spec: DocumentPipelineSpec,
    *,
    replicas: int,
    template: Mapping[str, Any] | None = None,
) -> Applied:
    """Create missing children and patch drifted ones; the operator owns `replicas`.

    `template` keeps the stable Deployment's pod template (see `rendering.render_deployment`).
    """
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    children = rendering.render_children(
        name, namespace, spec, replicas=replicas, template=template
    )
    warnings: list[str] = []
    if spec.metrics.pod_monitor.enabled and not await state.has_monitoring():
        children = [c for c in children if c["kind"] != "PodMonitor"]
        warnings.append(
            "metrics.podMonitor.enabled, but the cluster does not serve monitoring.coreos.com/v1"
        )
    changed: list[str] = []
    deployment = None
    for child in children:
        current, what = await _ensure(state, owner, child)
        changed.extend(what)
        if child["kind"] == "Deployment":
            deployment = current
    return Applied(deployment, tuple(changed), tuple(warnings))


async def _ensure(
    state: OperatorState, owner: Mapping[str, Any], child: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Create one child, or patch it where it drifted from `child`."""
    namespace = owner["metadata"]["namespace"]
    child["metadata"]["ownerReferences"] = [owner_reference(owner)]
    resource = _KINDS[child["kind"]]
    child_name = child["metadata"]["name"]
    changed = []
    current = await state.client.get(resource, namespace, child_name)
    if current is None:
        try:
            await state.client.create(resource, namespace, child)
            changed.append(f"created {child['kind']} {child_name}")
            current = child
        except cluster.ApiError as exc:
            # Created meanwhile (by the other handler of this pipeline): patch it instead.
            if exc.status != 409:
                raise
            current = await state.client.get(resource, namespace, child_name) or {}
    if not contains(current, {k: v for k, v in child.items() if k != "metadata"}) or (
        not contains(current["metadata"], child["metadata"])
    ):
        current = await state.client.merge_patch(resource, namespace, child_name, child)
        changed.append(f"updated {child['kind']} {child_name}")
    return current, changed


async def ensure_canary(
    state: OperatorState, owner: Mapping[str, Any], canary: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Run the rendered canary Deployment, or remove the pipeline's canary when `canary` is None."""
    meta = owner["metadata"]
    if canary is not None:
        current, _ = await _ensure(state, owner, canary)
        return current
    name = rendering.canary_name(meta["name"])
    if await state.client.get(cluster.DEPLOYMENTS, meta["namespace"], name) is not None:
        await state.client.delete(cluster.DEPLOYMENTS, meta["namespace"], name)
    return None


def owned_replicas(
    spec: DocumentPipelineSpec,
    status: DocumentPipelineStatus,
    deployment: Mapping[str, Any] | None,
) -> int:
    """The worker count the operator last decided: the status, else the floor of the policy.

    The Deployment's own `replicas` counts only when the status has none (an older operator's
    objects): a hand-edited `replicas` is drift, not a new size.
    """
    if status.desired_replicas is not None:
        return status.desired_replicas
    if deployment is not None:
        return int(deployment.get("spec", {}).get("replicas", spec.scaling.min_replicas))
    return spec.scaling.min_replicas


def read_spec(body: Mapping[str, Any]) -> DocumentPipelineSpec:
    """The validated spec of a DocumentPipeline object; SpecError names each bad field."""
    check_name(body["metadata"]["name"])
    return parse_spec(body.get("spec") or {})


def read_status(body: Mapping[str, Any]) -> DocumentPipelineStatus:
    """The current status (an unreadable one counts as empty: the operator rewrites it)."""
    try:
        return DocumentPipelineStatus.model_validate(body.get("status") or {})
    except ValueError:
        return DocumentPipelineStatus()


def needs_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a status differs from the stored one in more than its conditions' messages."""
    return _significant(current) != _significant(new)


def _significant(status: Mapping[str, Any]) -> dict[str, Any]:
    # A condition's message carries the round's figures (the scaling reason): written with the
    # next patch, never worth one of its own. Type, status and reason say what changed.
    conditions = [
        {k: v for k, v in c.items() if k != "message"} for c in status.get("conditions") or []
    ]
    return {**status, "conditions": conditions}


async def write_status(
    state: OperatorState, body: Mapping[str, Any], status: DocumentPipelineStatus
) -> None:
    """Patch the status subresource if it changed in more than its conditions' messages."""
    new = dump(status)
    if not needs_patch(body.get("status") or {}, new):
        return
    meta = body["metadata"]
    # Whole-key replacement: a merge patch would keep keys the new status no longer has.
    patch: dict[str, Any] = {"status": dict.fromkeys(body.get("status") or {}) | new}
    await state.client.merge_patch(cluster.PIPELINE_STATUS, meta["namespace"], meta["name"], patch)


async def reconcile(state: OperatorState, body: Mapping[str, Any]) -> str | None:
    """Bring the children in line with the spec (create/update/resume); return a spec error."""
    meta = body["metadata"]
    previous = read_status(body)
    now = datetime.now(tz=UTC)
    try:
        spec = read_spec(body)
    except SpecError as exc:
        seen = Observation(generation=meta.get("generation"), spec_error=str(exc))
        await write_status(state, body, build_status(previous, seen, now))
        return str(exc)
    current = await state.client.get(
        cluster.DEPLOYMENTS, meta["namespace"], rendering.worker_name(meta["name"])
    )
    replicas = (
        spec.replicas if spec.replicas is not None else owned_replicas(spec, previous, current)
    )
    template = kept_template(spec, previous, current, meta["name"])
    stable_replicas = replicas
    if previous.rollout is not None and previous.rollout.phase in rollout.ACTIVE_PHASES:
        stable_replicas = split_of(spec.rollout, replicas).stable
    try:
        applied = await ensure_children(
            state, body, spec, replicas=stable_replicas, template=template
        )
    except cluster.ApiError as exc:
        seen = Observation(generation=meta.get("generation"), apply_error=str(exc))
        await write_status(state, body, build_status(previous, seen, now))
        raise kopf.TemporaryError(f"applying children failed: {exc}", delay=10) from exc
    deployment_status = (applied.deployment or {}).get("status") or {}
    seen = Observation(
        generation=meta.get("generation"),
        warnings=applied.warnings,
        replicas=deployment_status.get("replicas", 0),
        ready_replicas=deployment_status.get("readyReplicas", 0),
        selector=rendering.label_selector(meta["name"]),
    )
    status = build_status(previous, seen, now)
    if previous.desired_replicas is None:
        status = status.model_copy(update={"desired_replicas": replicas})
    await write_status(state, body, status)
    return None


@dataclass
class Autoscaler:
    """One pipeline's autoscaling loop state: the decision's memory between ticks."""

    history: ScalingHistory = field(default_factory=ScalingHistory)
    started: bool = False
    analysis: AnalysisWindow | None = None

    def seed(self, current: int, now: float) -> None:
        """After a (re)start, hold the current size for a stabilization window and idle period.

        Without this, an operator restart would forget the window and scale down at once.
        """
        self.history = replace(
            self.history,
            recommendations=(Recommendation(now, current),),
            last_busy_at=now,
        )
        self.started = True


async def read_load(
    state: OperatorState,
    namespace: str,
    name: str,
    spec: DocumentPipelineSpec,
    *,
    current: int,
) -> tuple[MetricsSnapshot | None, list[telemetry.PodTarget], list[telemetry.WorkerReading | None]]:
    """Scrape (or query) the workers; with none running, read the queue from the database.

    Also returns each pod's own reading (scraped from the pod in either mode): the canary
    analysis compares revisions with them.
    """
    pods = await state.client.list(cluster.PODS, namespace, rendering.label_selector(name))
    targets = telemetry.pod_targets(pods)
    timeout = float(spec.metrics.scrape_timeout_seconds)
    snapshot: MetricsSnapshot | None
    readings: list[telemetry.WorkerReading | None] = []
    if spec.metrics.source == "prometheus" and spec.metrics.prometheus is not None:
        snapshot = await telemetry.query_prometheus(
            state.http,
            spec.metrics.prometheus.url,
            targets,
            timeout_s=timeout,
            namespace=namespace,
            pipeline=name,
        )
    else:
        readings = await telemetry.scrape_readings(
            state.http, targets, port=spec.worker.metrics_port, timeout_s=timeout, pipeline=name
        )
        snapshot = telemetry.snapshot_of(targets, readings)
    if snapshot is not None and snapshot.queue is None and not any(t.ready for t in targets):
        # No worker to report the queue: read it from the database (scale from zero).
        ref = spec.database.url_secret_ref
        secret = await state.client.get(cluster.SECRETS, namespace, ref.name)
        url = telemetry.secret_value(secret, ref.key) if secret is not None else None
        if url is not None:
            try:
                q = await state.queues.read(url, name, timeout_s=timeout)
                snapshot = MetricsSnapshot(pods=snapshot.pods, queue=q)
            except (OSError, TimeoutError, ValueError) as exc:
                log.warning("pipeline %s/%s: reading the queue failed: %s", namespace, name, exc)
            except Exception as exc:  # asyncpg's errors share no base class with the above
                log.warning("pipeline %s/%s: reading the queue failed: %s", namespace, name, exc)
    return snapshot, targets, readings


@dataclass
class AnalysisWindow:
    """The counters at the start of the canary's current analysis interval (in memory: after an
    operator restart the interval under way starts again; the judged ones are in the status)."""

    revision: str
    started: float  # monotonic
    counters: dict[str, dict[str, rollout.RevisionCounters]]  # pod → revision → counters
    restarts: dict[str, int]  # pod → container restarts


def split_of(policy: RolloutSpec, total: int) -> rollout.Split:
    """Stable and canary pods for `total` workers under the spec's canary size."""
    percent = policy.canary_percent if policy.canary_percent is not None else 20
    return rollout.split_replicas(
        total, canary_replicas=policy.canary_replicas, canary_percent=percent
    )


def policy_of(spec: RolloutSpec) -> rollout.RolloutPolicy:
    """The verdict's thresholds from the spec's rollout policy."""
    return rollout.RolloutPolicy(
        max_error_ratio=spec.max_error_ratio,
        max_latency_ratio=spec.max_latency_ratio,
        min_jobs=spec.min_jobs,
        success_intervals=spec.success_intervals,
        failure_limit=spec.failure_limit,
        progress_deadline_s=float(spec.progress_deadline_seconds),
    )


def state_of(status: RolloutStatus | None) -> rollout.RolloutState:
    """The rollout's memory as stored in the status."""
    if status is None:
        return rollout.RolloutState()
    return rollout.RolloutState(
        phase=rollout.Phase(status.phase) if status.phase else None,
        stable_revision=status.stable_revision,
        canary_revision=status.canary_revision,
        started_at=status.started_at,
        canary_replicas=status.canary_replicas,
        failure_hold_s=status.failure_hold_seconds,
        intervals=tuple(
            rollout.RecordedInterval(rollout.Outcome(i.outcome), i.reason, i.at)
            for i in status.intervals
        ),
        message=status.message,
        rejected_revision=status.rejected_revision,
        rejected_reason=status.rejected_reason,
        rejected_at=status.rejected_at,
    )


def status_of(state: rollout.RolloutState) -> RolloutStatus:
    """The rollout's memory to store in the status."""
    return RolloutStatus(
        phase=state.phase.value if state.phase else None,
        stable_revision=state.stable_revision,
        canary_revision=state.canary_revision,
        started_at=state.started_at,
        canary_replicas=state.canary_replicas,
        failure_hold_seconds=state.failure_hold_s,
        intervals=[
            AnalysisInterval(outcome=i.outcome.value, reason=i.reason[:1024], at=i.at)
            for i in state.intervals
        ],
        message=(state.message or "")[:4096] or None,
        rejected_revision=state.rejected_revision,
        rejected_reason=(state.rejected_reason or "")[:4096] or None,
        rejected_at=state.rejected_at,
    )


def _template(deployment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    template: dict[str, Any] | None = (deployment.get("spec") or {}).get("template")
    return template


def kept_template(
    spec: DocumentPipelineSpec,
    status: DocumentPipelineStatus,
    deployment: Mapping[str, Any] | None,
    name: str,
) -> dict[str, Any] | None:
    """The stable pod template to keep instead of the spec's (None: take the spec's).

    With the Canary strategy, a changed template reaches the stable Deployment only by promotion.
    """
    current = _template(deployment)
    if current is None or spec.rollout.strategy == "Rolling":
        return None
    desired = rendering.revision_of(rendering.render_pod_template(name, spec))
    if rendering.revision_of(current) == desired:
        return None
    r = status.rollout
    if r is not None and r.phase in ("Promoting", "Promoted") and r.canary_revision == desired:
        return None
    return current


def stable_rolled(deployment: Mapping[str, Any] | None, revision: str) -> bool:
    """Whether a Deployment runs only `revision`, every pod updated and available."""
    if deployment is None or rendering.revision_of(_template(deployment) or {}) != revision:
        return False
    meta, dspec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    dstatus = deployment.get("status") or {}
    wanted = int(dspec.get("replicas", 1))
    return (
        int(dstatus.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(dstatus.get("updatedReplicas", 0)) >= wanted
        and int(dstatus.get("availableReplicas", 0)) >= wanted
        and int(dstatus.get("replicas", 0)) == wanted
    )


def revision_counters(
    targets: list[telemetry.PodTarget], readings: list[telemetry.WorkerReading | None]
) -> dict[str, dict[str, rollout.RevisionCounters]]:
    """Pod → revision → counters, from the pods' scraped readings."""
    return {
        t.name: dict(r.revisions) for t, r in zip(targets, readings, strict=False) if r is not None
    }


def _for_revision(
    counters: dict[str, dict[str, rollout.RevisionCounters]], revision: str
) -> dict[str, rollout.RevisionCounters]:
    return {pod: by_rev[revision] for pod, by_rev in counters.items() if revision in by_rev}


# The Prometheus source's per-revision readings over the last `window_s` seconds.
PromqlCounters = Callable[[float], Awaitable[dict[str, telemetry.RevisionIncrease] | None]]


def _promql_sample(
    increase: telemetry.RevisionIncrease | None,
    *,
    pods_desired: int,
    pods_ready: int,
    restarts: int,
) -> rollout.RevisionSample:
    seen = increase or telemetry.RevisionIncrease()
    return rollout.RevisionSample(
        claimed=seen.claimed,
        retried=seen.retried,
        dead=seen.dead,
        stage_p95_s=seen.stage_p95_s,
        pods_desired=pods_desired,
        pods_ready=pods_ready,
        restarts=restarts,
    )


async def judge(
    window: AnalysisWindow | None,
    *,
    now: float,
    interval_s: float,
    canary: str,
    stable: str,
    targets: list[telemetry.PodTarget],
    readings: list[telemetry.WorkerReading | None],
    canary_desired: int,
    policy: rollout.RolloutPolicy,
    promql: PromqlCounters | None = None,
) -> tuple[rollout.IntervalResult | None, AnalysisWindow]:
    """Judge the canary's interval if one has passed since `window` began; return the window to
    keep (a new one whenever an interval was judged, or none was running for this revision).

    With `promql` (the Prometheus source) the revisions' counters come from PromQL's increase()
    over the interval instead of the pods' scraped counters at its two ends."""
    counters = revision_counters(targets, readings)
    canary_pods = [t for t in targets if t.canary and t.revision == canary]
    restarts = {t.name: t.restarts for t in canary_pods}
    fresh = AnalysisWindow(canary, now, counters, restarts)
    if window is None or window.revision != canary:
        return None, fresh
    if now - window.started < interval_s * INTERVAL_SLACK:
        return None, window
    new_restarts = sum(
        max(0, count - window.restarts.get(pod, 0)) for pod, count in restarts.items()
    )
    stable_pods = [t for t in targets if not t.canary and t.revision == stable]
    if promql is not None:
        increases = await promql(now - window.started)
        if increases is None:
            return rollout.IntervalResult(
                rollout.Outcome.INCONCLUSIVE, "Prometheus did not answer the analysis queries"
            ), fresh
        canary_sample = _promql_sample(
            increases.get(canary),
            pods_desired=canary_desired,
            pods_ready=sum(t.ready for t in canary_pods),
            restarts=new_restarts,
        )
        stable_sample = _promql_sample(
            increases.get(stable),
            pods_desired=len(stable_pods),
            pods_ready=sum(t.ready for t in stable_pods),
            restarts=0,
        )
        return rollout.judge_interval(canary_sample, stable_sample, policy), fresh
    canary_sample = rollout.sample_interval(
        _for_revision(window.counters, canary),
        _for_revision(counters, canary),
        pods_desired=canary_desired,
        pods_ready=sum(t.ready for t in canary_pods),
        restarts=new_restarts,
    )
    stable_sample = rollout.sample_interval(
        _for_revision(window.counters, stable),
        _for_revision(counters, stable),
        pods_desired=len(stable_pods),
        pods_ready=sum(t.ready for t in stable_pods),
        restarts=0,
    )
    return rollout.judge_interval(canary_sample, stable_sample, policy), fresh


async def tick(
    state: OperatorState,
    body: kopf.Body,
    scaler: Autoscaler,
    *,
    now: float,
) -> Decision | None:
    """One autoscaling and rollout round for a pipeline; returns the scaling decision (None if
    the spec is invalid)."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    previous = read_status(body)
    wall = datetime.now(tz=UTC)
    try:
        spec = read_spec(body)
    except SpecError as exc:
        seen = Observation(generation=meta.get("generation"), spec_error=str(exc))
        await write_status(state, body, build_status(previous, seen, wall))
        return None
    deployment = await state.client.get(cluster.DEPLOYMENTS, namespace, rendering.worker_name(name))
    current = owned_replicas(spec, previous, deployment)
    if not scaler.started:
        scaler.seed(current, now)
    snapshot, targets, readings = await read_load(state, namespace, name, spec, current=current)
    decision, scaler.history = decide_replicas(
        snapshot,
        spec.scaling,
        current=current,
        concurrency=spec.worker.concurrency,
        history=scaler.history,
        now=now,
        pinned=spec.replicas,
    )
    if decision.desired < current and snapshot is not None:
        # Drain-aware: the ReplicaSet removes the pods of lowest deletion cost first.
        costs = pod_deletion_costs(p for p in snapshot.pods)
        for pod, cost in costs.items():
            patch = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
            await state.client.merge_patch(cluster.PODS, namespace, pod, patch)

    plan, split = await _plan_rollout(
        state, body, spec, previous, deployment, scaler, targets, readings, decision, now, wall
    )
    apply_error = None
    warnings: tuple[str, ...] = ()
    canary_status: dict[str, Any] = {}
    try:
        applied = await ensure_children(
            state,
            body,
            spec,
            replicas=split.stable,
            template=None if plan.stable_takes_desired else _template(deployment),
        )
        deployment, warnings = applied.deployment, applied.warnings
        canary = (
            rendering.render_canary_deployment(
                name,
                namespace,
                spec,
                replicas=split.canary,
                failure_hold_seconds=plan.state.failure_hold_s or rollout.DEFAULT_FAILURE_HOLD_S,
            )
            if plan.run_canary
            else None
        )
        canary_status = ((await ensure_canary(state, body, canary)) or {}).get("status") or {}
    except cluster.ApiError as exc:
        apply_error = str(exc)
    if decision.changed:
        kind = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        kopf.event(body, type="Normal", reason=kind, message=decision.reason)
    if plan.event is not None and apply_error is None:
        kopf.event(body, type=plan.event.type, reason=plan.event.reason, message=plan.event.message)
    if plan.clear_rollback_request and ROLLBACK_ANNOTATION in (meta.get("annotations") or {}):
        clear = {"metadata": {"annotations": {ROLLBACK_ANNOTATION: None}}}
        await state.client.merge_patch(cluster.PIPELINES, namespace, name, clear)
    dstatus = (deployment or {}).get("status") or {}
    seen = Observation(
        generation=meta.get("generation"),
        apply_error=apply_error,
        warnings=warnings,
        decision=decision,
        replicas=dstatus.get("replicas", 0) + canary_status.get("replicas", 0),
        ready_replicas=dstatus.get("readyReplicas", 0) + canary_status.get("readyReplicas", 0)
        if dstatus
        else sum(t.ready for t in targets),
        selector=rendering.label_selector(name),
    )
    status = build_status(previous, seen, wall)
    rollout_state = plan.state
    if plan.run_canary:
        rollout_state = replace(rollout_state, canary_replicas=split.canary)
    if apply_error is None or previous.rollout is None:
        status = status.model_copy(update={"rollout": status_of(rollout_state)})
    await write_status(state, body, status)
    return decision


def _stable_job_seconds(
    targets: list[telemetry.PodTarget],
    readings: list[telemetry.WorkerReading | None],
    stable: str | None,
    decision: Decision,
) -> float | None:
    """Seconds per job of the stable revision: from its stage histograms, else the scaling
    decision's busy slot-seconds per job."""
    if stable is not None:
        pods = [
            r.revisions[stable]
            for t, r in zip(targets, readings, strict=False)
            if r is not None and not t.canary and stable in r.revisions
        ]
        measured = rollout.mean_job_seconds(pods)
        if measured is not None:
            return measured
    return decision.seconds_per_job


async def _plan_rollout(
    state: OperatorState,
    body: kopf.Body,
    spec: DocumentPipelineSpec,
    previous: DocumentPipelineStatus,
    deployment: dict[str, Any] | None,
    scaler: Autoscaler,
    targets: list[telemetry.PodTarget],
    readings: list[telemetry.WorkerReading | None],
    decision: Decision,
    now: float,
    wall: datetime,
) -> tuple[rollout.Plan, rollout.Split]:
    """Judge the canary's interval if one ended, and plan the rollout's next step."""
    name = body["metadata"]["name"]
    desired = rendering.revision_of(rendering.render_pod_template(name, spec)) or ""
    stable = rendering.revision_of(_template(deployment) or {})
    before = state_of(previous.rollout)
    policy = policy_of(spec.rollout)
    split = split_of(spec.rollout, decision.desired)
    canary_pods = [t for t in targets if t.canary and t.revision == desired]
    canary_ready = len(canary_pods) >= split.canary and all(t.ready for t in canary_pods)
    interval = None
    analysing = (
        before.phase in (rollout.Phase.PROGRESSING, rollout.Phase.PAUSED)
        and before.canary_revision == desired
        and not spec.rollout.paused
        and stable is not None
    )
    if analysing and stable is not None:
        promql: PromqlCounters | None = None
        prometheus = spec.metrics.prometheus
        if spec.metrics.source == "prometheus" and prometheus is not None:
            url, timeout = prometheus.url, float(spec.metrics.scrape_timeout_seconds)
            namespace = body["metadata"]["namespace"]

            async def read_increases(
                window_s: float,
            ) -> dict[str, telemetry.RevisionIncrease] | None:
                return await telemetry.query_revision_increases(
                    state.http,
                    url,
                    window_s=window_s,
                    timeout_s=timeout,
                    namespace=namespace,
                    pipeline=name,
                )

            promql = read_increases
        interval, scaler.analysis = await judge(
            scaler.analysis,
            now=now,
            interval_s=float(spec.rollout.interval_seconds),
            canary=desired,
            stable=stable,
            targets=targets,
            readings=readings,
            canary_desired=split.canary,
            policy=policy,
            promql=promql,
        )
    else:
        scaler.analysis = None
    seen = rollout.Observed(
        desired_revision=desired,
        stable_revision=stable,
        canary_ready=canary_ready,
        stable_rolled=stable_rolled(deployment, desired),
        now=wall,
        strategy=rollout.Strategy(spec.rollout.strategy),
        paused=spec.rollout.paused,
        rollback_requested=ROLLBACK_ANNOTATION in (body["metadata"].get("annotations") or {}),
        interval=interval,
        stable_seconds_per_job=_stable_job_seconds(targets, readings, stable, decision),
    )
    plan = rollout.plan(before, seen, policy)
    if not plan.run_canary:
        split = rollout.Split(stable=decision.desired, canary=0)
    return plan, split


def interval_of(body: Mapping[str, Any]) -> float:
    """Time between rounds: the scaling interval, or the analysis interval if shorter while a
    rollout runs (the default when the spec does not validate)."""
    try:
        spec = read_spec(body)
    except SpecError:
        return 5.0
    interval = float(spec.scaling.interval_seconds)
    running = read_status(body).rollout
    if running is not None and running.phase in rollout.ACTIVE_PHASES:
        interval = min(interval, float(spec.rollout.interval_seconds))
    return interval
