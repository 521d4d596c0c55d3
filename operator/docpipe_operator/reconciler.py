"""The reconcile shell: read the cluster, call the pure functions, write the results.

`ensure_children` keeps a pipeline's child objects equal to their rendering (creating, or patching
drift); `tick` is one autoscaling round (read load → `decide_replicas` → apply → status). Neither
decides anything itself: rendering, scaling and conditions are pure modules. A rollout verdict
(issue 7) slots in beside the scaling decision in `tick`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from docpipe_operator import cluster, rendering, telemetry
from docpipe_operator.conditions import Observation, build_status
from docpipe_operator.model import (
    DocumentPipelineSpec,
    DocumentPipelineStatus,
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
) -> Applied:
    """Create missing children and patch drifted ones; the operator owns `replicas`."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    children = rendering.render_children(name, namespace, spec, replicas=replicas)
    warnings: list[str] = []
    if spec.metrics.pod_monitor.enabled and not await state.has_monitoring():
        children = [c for c in children if c["kind"] != "PodMonitor"]
        warnings.append(
            "metrics.podMonitor.enabled, but the cluster does not serve monitoring.coreos.com/v1"
        )
    changed: list[str] = []
    deployment = None
    for child in children:
        child["metadata"]["ownerReferences"] = [owner_reference(owner)]
        resource = _KINDS[child["kind"]]
        child_name = child["metadata"]["name"]
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
        if child["kind"] == "Deployment":
            deployment = current
    return Applied(deployment, tuple(changed), tuple(warnings))


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


async def write_status(
    state: OperatorState, body: Mapping[str, Any], status: DocumentPipelineStatus
) -> None:
    """Patch the status subresource if it changed."""
    new = dump(status)
    if (body.get("status") or {}) == new:
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
    try:
        applied = await ensure_children(state, body, spec, replicas=replicas)
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
) -> tuple[MetricsSnapshot | None, list[telemetry.PodTarget]]:
    """Scrape (or query) the workers; with none running, read the queue from the database."""
    pods = await state.client.list(cluster.PODS, namespace, rendering.label_selector(name))
    targets = telemetry.pod_targets(pods)
    timeout = float(spec.metrics.scrape_timeout_seconds)
    snapshot: MetricsSnapshot | None
    if spec.metrics.source == "prometheus" and spec.metrics.prometheus is not None:
        snapshot = await telemetry.query_prometheus(
            state.http, spec.metrics.prometheus.url, targets, timeout_s=timeout, pipeline=name
        )
    else:
        snapshot = await telemetry.scrape_pods(
            state.http, targets, port=spec.worker.metrics_port, timeout_s=timeout, pipeline=name
        )
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
    return snapshot, targets


async def tick(
    state: OperatorState,
    body: kopf.Body,
    scaler: Autoscaler,
    *,
    now: float,
) -> Decision | None:
    """One autoscaling round for a pipeline; returns the decision (None if the spec is invalid)."""
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
    snapshot, targets = await read_load(state, namespace, name, spec, current=current)
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
    apply_error = None
    warnings: tuple[str, ...] = ()
    try:
        applied = await ensure_children(state, body, spec, replicas=decision.desired)
        deployment, warnings = applied.deployment, applied.warnings
    except cluster.ApiError as exc:
        apply_error = str(exc)
    if decision.changed:
        kind = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
        kopf.event(body, type="Normal", reason=kind, message=decision.reason)
    dstatus = (deployment or {}).get("status") or {}
    seen = Observation(
        generation=meta.get("generation"),
        apply_error=apply_error,
        warnings=warnings,
        decision=decision,
        replicas=dstatus.get("replicas", 0),
        ready_replicas=dstatus.get("readyReplicas", sum(t.ready for t in targets)),
        selector=rendering.label_selector(name),
    )
    await write_status(state, body, build_status(previous, seen, wall))
    return decision


def interval_of(body: Mapping[str, Any]) -> float:
    """The pipeline's scaling interval (the default when the spec does not validate)."""
    try:
        return float(read_spec(body).scaling.interval_seconds)
    except SpecError:
        return 5.0
