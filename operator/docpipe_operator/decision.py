"""The decision of one round: a pipeline, what its watches show and what the round remembers in;
the children to create, patch or delete, the worker count, the rollout's step, the status and the
Events out.

Pure: `reconciler` observes (indexes kept by watches, the workers' /metrics or Prometheus) and
applies what `decide` returns. Every round of a pipeline, whatever woke it (a change to the
pipeline or to a child, or the timer), goes through `decide`; only a round with a fresh reading of
the load (at most one per interval) makes a scaling decision and judges the canary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from docpipe_operator import quality, rendering, rollout
from docpipe_operator.conditions import Observation, Transition, build_status, quota_transition
from docpipe_operator.model import (
    AnalysisInterval,
    DocumentPipelineSpec,
    DocumentPipelineStatus,
    LastRollback,
    NoTrafficStatus,
    RolloutSpec,
    RolloutStatus,
    SpecError,
    check_name,
    dump,
    parse_spec,
)
from docpipe_operator.no_traffic import NoTrafficAction, NoTrafficPolicy, NoTrafficState
from docpipe_operator.scaling import (
    Decision,
    MetricsSnapshot,
    Recommendation,
    ScalingHistory,
    decide_replicas,
    pod_deletion_costs,
)
from docpipe_operator.telemetry import PodTarget, RevisionIncrease, WorkerReading, pod_targets

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# `kubectl annotate documentpipeline NAME docpipe.io/rollback=true` rolls the running canary back.
ROLLBACK_ANNOTATION = "docpipe.io/rollback"
# A reading (and an analysis interval) is due at the first round at least this share of the
# interval after the last: rounds are timed by a sleep and arrive a little early or late.
INTERVAL_SLACK = 0.95
# The interval of a pipeline whose spec does not validate.
DEFAULT_INTERVAL_SECONDS = 5.0
# A child the round created is taken to exist until its watch shows it, for at most this long
# (as controller-runtime's expectations): a round between the create and the watch event would
# otherwise create it again, and get 409.
EXPECTATION_SECONDS = 30.0
# The status' load figures (queue depth, oldest wait, throughput) move with every job: a change
# of them alone is written at most this often. Anything else (replicas, a condition, the rollout)
# is written at once, and carries the figures of its round.
FIGURES_REFRESH_SECONDS = 60.0
FIGURES = ("queueDepth", "oldestReadyAgeSeconds", "throughputPerSecond")
# The version of a Secret key (see `observation.key_version`) that is missing from the cluster,
# or that the operator may not read (RBAC): steady, so neither rolls the workers by itself.
SECRET_MISSING = "missing"
SECRET_UNREADABLE = "unreadable"


# ---- What a round reads ----


@dataclass(frozen=True)
class Pipeline:
    """The DocumentPipeline object, read: its spec validated (or the reason it is not)."""

    name: str
    namespace: str
    owner: Mapping[str, Any]  # the owner reference its children carry
    generation: int | None
    annotations: Mapping[str, str]
    spec: DocumentPipelineSpec | None
    spec_error: str | None
    status: DocumentPipelineStatus


def read_pipeline(body: Mapping[str, Any]) -> Pipeline:
    """The pipeline of a DocumentPipeline object; a spec that does not validate is kept as its
    error, naming each bad field; an unreadable status counts as empty (the round rewrites it)."""
    meta = body["metadata"]
    spec: DocumentPipelineSpec | None = None
    error = None
    try:
        check_name(meta["name"])
        spec = parse_spec(body.get("spec") or {})
    except SpecError as exc:
        error = str(exc)
    try:
        status = DocumentPipelineStatus.model_validate(body.get("status") or {})
    except ValueError:
        status = DocumentPipelineStatus()
    return Pipeline(
        name=meta["name"],
        namespace=meta["namespace"],
        owner=owner_reference(body),
        generation=meta.get("generation"),
        annotations=dict(meta.get("annotations") or {}),
        spec=spec,
        spec_error=error,
        status=status,
    )


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The reference that makes the garbage collector delete a child with its pipeline."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass(frozen=True)
class Children:
    """A pipeline's children as its watches last saw them: (kind, name) → object, and its pods."""

    objects: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    pods: tuple[Mapping[str, Any], ...] = ()
    # (kind, name) → the uid of the last object of that name the watches showed, even if they
    # showed it deleted since: what satisfies a create's expectation.
    shown: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        """One child, or None when the watch has not seen it (or saw it deleted)."""
        return self.objects.get((kind, name))


@dataclass(frozen=True)
class Load:
    """One reading of the workers' load: each pod's own reading where scraped, the snapshot the
    scaling decision takes, and with the Prometheus source the canary analysis' increases."""

    at: float  # monotonic
    snapshot: MetricsSnapshot | None
    targets: tuple[PodTarget, ...] = ()
    readings: tuple[WorkerReading | None, ...] = ()
    prometheus: bool = False
    # Per revision over the analysis window now due (Prometheus only); None: no answer.
    increases: Mapping[str, RevisionIncrease] | None = None


@dataclass(frozen=True)
class AnalysisWindow:
    """The counters at the start of the canary's current analysis interval (in memory: after an
    operator restart the interval under way starts again; the judged ones are in the status)."""

    revision: str
    started: float  # monotonic
    counters: dict[str, dict[str, rollout.RevisionCounters]]  # pod → revision → counters
    restarts: dict[str, int]  # pod → container restarts


@dataclass(frozen=True)
class Memory:
    """What a pipeline's rounds remember between them (in the operator's memory)."""

    history: ScalingHistory = field(default_factory=ScalingHistory)
    seeded: bool = False
    analysis: AnalysisWindow | None = None
    decision: Decision | None = None  # the last scaling decision
    load: Load | None = None  # the last reading
    # The status as last written (or read at the first round): the round is its only writer, so
    # this is never older than what the watch shows.
    status: DocumentPipelineStatus | None = None
    # Children created and not yet shown by their watch: (kind, name) → when (monotonic) and
    # the uid the create returned.
    expected: Mapping[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    # When the status was last written (monotonic): its figures alone wait for the refresh.
    status_written: float | None = None


# ---- What a round does ----


@dataclass(frozen=True)
class ChildChange:
    """Create, patch (merge) or delete one child."""

    verb: str  # create | patch | delete
    kind: str
    name: str
    body: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Round:
    """What one round decided."""

    changes: tuple[ChildChange, ...]
    deletion_costs: Mapping[str, int]  # pod → cost, annotated before a scale-down
    status: DocumentPipelineStatus
    previous: DocumentPipelineStatus
    seen: Observation
    events: tuple[Event, ...] = ()  # posted whatever the apply does
    rollout_events: tuple[Event, ...] = ()  # posted once the children are applied
    clear_rollback: bool = False
    interval_s: float = DEFAULT_INTERVAL_SECONDS
    # A rejected revision whose documents are to be re-enqueued for the stable revision (by the
    # shell, which then records the count with `undone`).
    undo: str | None = None
    # Whether a change of the load figures alone is worth a status write this round.
    figures_due: bool = True

    def undone(self, documents: int, now: datetime) -> Round:
        """The round once the documents of `undo` were re-enqueued: the count in the status
        (so the undo is done once) and an Event."""
        revision = self.undo or ""
        rollout_status = self.status.rollout or RolloutStatus()
        record = LastRollback(revision=revision, reprocessed_documents=documents, at=now)
        status = self.status.model_copy(
            update={"rollout": rollout_status.model_copy(update={"last_rollback": record})}
        )
        event = Event(
            "Normal",
            "RollbackReprocessing",
            f"{documents} document(s) with chunks of the rejected revision {revision}"
            " re-enqueued for the stable revision",
        )
        return replace(self, status=status, events=(*self.events, event), undo=None)

    def failed(self, error: str, now: datetime) -> DocumentPipelineStatus:
        """The status when applying the children failed: Degraded, the rollout as it was."""
        status = build_status(self.previous, replace(self.seen, apply_error=error), now)
        if self.previous.rollout is None:
            status = status.model_copy(update={"rollout": self.status.rollout})
        return status

    def transitions(self, written: DocumentPipelineStatus) -> tuple[Event, ...]:
        """Events for conditions that started or stopped holding with the written status."""
        quota: Transition | None = quota_transition(self.previous, written)
        return () if quota is None else (Event(quota.type, quota.reason, quota.message),)


def round_interval(pipeline: Pipeline) -> float:
    """Time between readings: the scaling interval, or the analysis interval if shorter while a
    rollout runs."""
    spec = pipeline.spec
    if spec is None:
        return DEFAULT_INTERVAL_SECONDS
    interval = float(spec.scaling.interval_seconds)
    running = pipeline.status.rollout
    if running is not None and running.phase in rollout.ACTIVE_PHASES:
        interval = min(interval, float(spec.rollout.interval_seconds))
    return interval


def reading_due(memory: Memory, now: float, interval_s: float) -> bool:
    """Whether this round reads the load: at most once per interval."""
    return memory.load is None or now - memory.load.at >= interval_s * INTERVAL_SLACK


def analysis_due(memory: Memory, pipeline: Pipeline, now: float) -> tuple[str, float] | None:
    """(canary revision, window seconds) when a reading now ends an analysis interval: the
    Prometheus source then reads the revisions' increases over the window."""
    window, spec = memory.analysis, pipeline.spec
    if window is None or spec is None:
        return None
    if now - window.started < float(spec.rollout.interval_seconds) * INTERVAL_SLACK:
        return None
    return window.revision, now - window.started


def decide(
    pipeline: Pipeline,
    children: Children,
    memory: Memory,
    *,
    load: Load | None,
    now: float,
    wall: datetime,
    monitoring: bool,
    secrets: Mapping[tuple[str, str], str | None] | None = None,
) -> tuple[Round, Memory]:
    """One round: `load` is a fresh reading (None between readings, when the last decision holds);
    `monitoring`: whether the cluster serves PodMonitors; `secrets`: the version of each Secret key
    the workers read (None: the operator reads no Secrets). Returns the round and the memory for
    the next one (its `status` is set by the caller once written)."""
    previous = memory.status if memory.status is not None else pipeline.status
    interval = round_interval(pipeline)
    spec = pipeline.spec
    if spec is None:
        return _invalid(pipeline, previous, wall, interval), memory
    deployment = children.get("Deployment", rendering.worker_name(pipeline.name))
    current = owned_replicas(spec, previous, deployment)
    history = memory.history
    if not memory.seeded:
        history = seed(history, current, now)
    decision = memory.decision
    costs: dict[str, int] = {}
    events: list[Event] = []
    if load is not None:
        decision, history = decide_replicas(
            load.snapshot,
            spec.scaling,
            current=current,
            concurrency=spec.worker.concurrency,
            history=history,
            now=now,
            pinned=spec.replicas,
        )
        total = decision.desired
        if decision.desired < current and load.snapshot is not None:
            costs = deletion_costs(load.snapshot, children.pods)
        if decision.changed:
            kind = "ScaledUp" if decision.desired > decision.current else "ScaledDown"
            events.append(Event("Normal", kind, decision.reason))
    else:
        total = spec.replicas if spec.replicas is not None else current
    shown = decision if decision is not None and decision.desired == total else None

    targets = pod_targets(children.pods)
    hashed = secrets_hash_of(secrets, children, pipeline.name)
    step = plan_rollout(
        pipeline,
        spec,
        previous,
        children,
        targets,
        memory,
        load,
        total,
        now,
        wall,
        secrets_hash=hashed,
    )
    plan, split = step.plan, step.split
    template = None if plan.stable_takes_desired else template_of(deployment)
    wanted = rendering.render_children(
        pipeline.name,
        pipeline.namespace,
        spec,
        replicas=split.stable,
        template=template,
        secrets_hash=hashed,
    )
    warnings: list[str] = secret_warnings(secrets)
    if spec.metrics.pod_monitor.enabled and not monitoring:
        wanted = [c for c in wanted if c["kind"] != "PodMonitor"]
        warnings.append(
            "metrics.podMonitor.enabled, but the cluster does not serve monitoring.coreos.com/v1"
        )
    if plan.run_canary:
        # A canary started by a release before the share kept no weight: the spec's, now.
        weight = plan.state.canary_weight or weight_of(spec.rollout, split)
        wanted.append(
            rendering.render_canary_deployment(
                pipeline.name,
                pipeline.namespace,
                spec,
                replicas=split.canary,
                canary_weight=weight,
                secrets_hash=hashed,
                stable_revision=plan.state.stable_revision,
            )
        )
    expected = pending_expectations(memory.expected, children, now)
    changes = child_changes(wanted, children, pipeline.owner, expected=frozenset(expected))
    canary = rendering.canary_name(pipeline.name)
    canary_seen = children.get("Deployment", canary)
    if not plan.run_canary and canary_seen is not None:
        changes.append(ChildChange("delete", "Deployment", canary))

    dstatus = (deployment or {}).get("status") or {}
    cstatus = ((canary_seen or {}).get("status") or {}) if plan.run_canary else {}
    seen = Observation(
        generation=pipeline.generation,
        warnings=tuple(warnings),
        decision=shown,
        replicas=dstatus.get("replicas", 0) + cstatus.get("replicas", 0),
        ready_replicas=dstatus.get("readyReplicas", 0) + cstatus.get("readyReplicas", 0)
        if dstatus
        else sum(t.ready for t in targets),
        selector=rendering.label_selector(pipeline.name),
    )
    status = build_status(previous, seen, wall)
    if shown is None:
        status = status.model_copy(update={"desired_replicas": total})
    rollout_state = plan.state
    if plan.run_canary:
        rollout_state = replace(rollout_state, canary_replicas=split.canary)
    status = status.model_copy(update={"rollout": status_of(rollout_state)})
    rollout_events = () if plan.event is None else (Event(**vars(plan.event)),)
    rejected = rollout_state.rejected_revision
    undo = rollout.undo_due(
        rollout_state,
        revision_pods_left=any(
            (p.get("metadata") or {}).get("labels", {}).get(rendering.LABEL_REVISION) == rejected
            for p in children.pods
        ),
        now=wall,
        grace_s=float(spec.worker.termination_grace_period_seconds),
    )
    clear = plan.clear_rollback_request and ROLLBACK_ANNOTATION in pipeline.annotations
    remembered = replace(
        memory,
        history=history,
        seeded=True,
        analysis=step.analysis,
        decision=decision,
        load=load if load is not None else memory.load,
        expected=expected,
    )
    decided = Round(
        changes=tuple(changes),
        deletion_costs=costs,
        status=status,
        previous=previous,
        seen=seen,
        events=tuple(events),
        rollout_events=rollout_events,
        clear_rollback=clear,
        interval_s=round_interval(replace(pipeline, status=status)),
        undo=undo,
        figures_due=memory.status_written is None
        or now - memory.status_written >= FIGURES_REFRESH_SECONDS,
    )
    return decided, remembered


def _invalid(
    pipeline: Pipeline, previous: DocumentPipelineStatus, wall: datetime, interval: float
) -> Round:
    """A spec that does not validate: a condition and, once per spec, an Event; no children."""
    error = pipeline.spec_error or "invalid spec"
    seen = Observation(generation=pipeline.generation, spec_error=error)
    status = build_status(previous, seen, wall)
    ready = next((c for c in previous.conditions if c.type == "Ready"), None)
    told = (
        ready is not None
        and ready.reason == "InvalidSpec"
        and ready.message == error
        and previous.observed_generation == pipeline.generation
    )
    events = () if told else (Event("Warning", "InvalidSpec", error),)
    return Round((), {}, status, previous, seen, events=events, interval_s=interval)


def secret_warnings(secrets: Mapping[tuple[str, str], str | None] | None) -> list[str]:
    """What the status says of referenced Secrets the operator may not read. (A missing one is
    left to the pods' own CreateContainerConfigError.)"""
    unreadable = sorted(
        {name for (name, _), v in (secrets or {}).items() if v == SECRET_UNREADABLE}
    )
    if not unreadable:
        return []
    return [
        f"the operator may not read Secret(s) {', '.join(unreadable)}: a change to them does not "
        "roll the workers, and with no worker the queue is not read (grant get: rbac.secrets in "
        "the chart; or run the operator with --secrets=none and bump worker.secretsVersion)"
    ]


def secrets_hash_of(
    secrets: Mapping[tuple[str, str], str | None] | None, children: Children, pipeline: str
) -> str | None:
    """The pod template's secrets-hash annotation: the hash of the keys' versions; None when the
    operator reads no Secrets. While a version is unknown (no read has answered since the
    operator started), the hash the newest running template carries holds: an operator restart
    during an API hiccup must not roll the workers."""
    if secrets is None:
        return None
    if all(version is not None for version in secrets.values()):
        return rendering.hash_secret_versions(
            {key: version for key, version in secrets.items() if version is not None}
        )
    for name in (rendering.canary_name(pipeline), rendering.worker_name(pipeline)):
        metadata = (template_of(children.get("Deployment", name)) or {}).get("metadata") or {}
        carried = (metadata.get("annotations") or {}).get(rendering.SECRETS_HASH_ANNOTATION)
        if carried is not None:
            return str(carried)
    return None


def seed(history: ScalingHistory, current: int, now: float) -> ScalingHistory:
    """After a (re)start, hold the current size for a stabilization window and idle period.

    Without this, an operator restart would forget the window and scale down at once.
    """
    return replace(history, recommendations=(Recommendation(now, current),), last_busy_at=now)


def deletion_costs(
    snapshot: MetricsSnapshot, pods: tuple[Mapping[str, Any], ...]
) -> dict[str, int]:
    """Drain-aware: the pods' deletion costs (the ReplicaSet removes the lowest first), where
    a pod does not carry its cost already."""
    carried = {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST)
        for p in pods
    }
    return {
        pod: cost
        for pod, cost in pod_deletion_costs(snapshot.pods).items()
        if carried.get(pod) != str(cost)
    }


# ---- Drift: what differs between the wanted children and the watched ones ----


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


def pending_expectations(
    expected: Mapping[tuple[str, str], tuple[float, str]], children: Children, now: float
) -> dict[tuple[str, str], tuple[float, str]]:
    """The creates whose watch event has not come yet: neither shown now nor ever shown by uid
    (a child created, shown and deleted by hand since is created again at once), and younger
    than `EXPECTATION_SECONDS`."""
    return {
        key: (at, uid)
        for key, (at, uid) in expected.items()
        if key not in children.objects
        and children.shown.get(key) != uid
        and now - at < EXPECTATION_SECONDS
    }


def child_changes(
    wanted: list[dict[str, Any]],
    children: Children,
    owner: Mapping[str, Any],
    *,
    expected: frozenset[tuple[str, str]] = frozenset(),
) -> list[ChildChange]:
    """Create the wanted children the watch has not seen (unless just created: `expected`);
    patch those that drifted."""
    changes = []
    for child in wanted:
        child["metadata"]["ownerReferences"] = [dict(owner)]
        kind, name = child["kind"], child["metadata"]["name"]
        current = children.get(kind, name)
        if current is None and (kind, name) in expected:
            continue
        if current is None:
            changes.append(ChildChange("create", kind, name, child))
        elif not contains(
            {k: v for k, v in current.items() if k != "metadata"},
            {k: v for k, v in child.items() if k != "metadata"},
        ) or not contains(current.get("metadata") or {}, child["metadata"]):
            changes.append(ChildChange("patch", kind, name, child))
    return changes


# ---- Status ----


def needs_patch(
    current: Mapping[str, Any], new: Mapping[str, Any], *, figures: bool = True
) -> bool:
    """Whether a status differs from the stored one in more than its conditions' messages (and,
    unless `figures`, in more than its load figures)."""
    return _significant(current, figures) != _significant(new, figures)


def _significant(status: Mapping[str, Any], figures: bool = True) -> dict[str, Any]:
    # A condition's message carries the round's figures (the scaling reason): written with the
    # next patch, never worth one of its own. Type, status and reason say what changed.
    conditions = [
        {k: v for k, v in c.items() if k != "message"} for c in status.get("conditions") or []
    ]
    kept = {k: v for k, v in status.items() if figures or k not in FIGURES}
    return {**kept, "conditions": conditions}


def status_patch(
    stored: DocumentPipelineStatus, new: DocumentPipelineStatus, *, figures: bool = True
) -> dict[str, Any] | None:
    """The merge patch that writes `new` over `stored`; None when only messages differ (or,
    unless `figures`, only messages and load figures)."""
    before, after = dump(stored), dump(new)
    if not needs_patch(before, after, figures=figures):
        return None
    return {"status": _removing(before, after)}


def _removing(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """`after` as a merge patch over `before`: a key `after` no longer has, at any depth of
    nested objects, is set to null (a merge patch would keep it otherwise)."""
    patch: dict[str, Any] = dict.fromkeys(before)
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            patch[key] = _removing(old, value)
        else:
            patch[key] = value
    return patch


# ---- Rollout policy ----


def template_of(deployment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A Deployment's pod template."""
    if deployment is None:
        return None
    template: dict[str, Any] | None = (deployment.get("spec") or {}).get("template")
    return template


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


def stable_rolled(deployment: Mapping[str, Any] | None, revision: str) -> bool:
    """Whether a Deployment runs only `revision`, every pod updated and available."""
    if deployment is None or rendering.revision_of(template_of(deployment) or {}) != revision:
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


def split_of(policy: RolloutSpec, total: int) -> rollout.Split:
    """Stable and canary pods for `total` workers under the spec's canary size."""
    percent = policy.canary_percent if policy.canary_percent is not None else 20
    return rollout.split_replicas(
        total, canary_replicas=policy.canary_replicas, canary_percent=percent
    )


def weight_of(policy: RolloutSpec, split: rollout.Split) -> float:
    """The canary's share of the jobs under the spec's canary size (see rollout.canary_weight)."""
    percent = policy.canary_percent if policy.canary_percent is not None else 20
    return rollout.canary_weight(
        split, canary_replicas=policy.canary_replicas, canary_percent=percent
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
        output=quality.OutputPolicy(
            enabled=spec.output_analysis.enabled,
            max_relative_change=spec.output_analysis.max_relative_change,
            max_empty_share_increase=spec.output_analysis.max_empty_share_increase,
            max_degenerate_share_increase=spec.output_analysis.max_degenerate_share_increase,
            min_documents=spec.output_analysis.min_documents,
        ),
        golden=quality.GoldenPolicy()
        if spec.golden_set is None
        else quality.GoldenPolicy(
            enabled=True,
            min_text_overlap=spec.golden_set.min_text_overlap,
            max_chunk_ratio_change=spec.golden_set.max_chunk_ratio_change,
            min_cosine=spec.golden_set.min_cosine,
            max_recall_drop=spec.golden_set.max_recall_drop,
        ),
        no_traffic=NoTrafficPolicy(
            action=NoTrafficAction(spec.no_traffic.action),
            after_s=float(spec.no_traffic.after_seconds),
            golden_set=spec.golden_set is not None,
        ),
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
        canary_weight=status.canary_weight,
        intervals=tuple(
            rollout.RecordedInterval(rollout.IntervalOutcome(i.outcome), i.reason, i.at)
            for i in status.intervals
        ),
        message=status.message,
        rejected_revision=status.rejected_revision,
        rejected_reason=status.rejected_reason,
        rejected_at=status.rejected_at,
        no_traffic=_no_traffic_state(status.no_traffic),
        last_rollback=None
        if status.last_rollback is None
        else rollout.Undo(
            status.last_rollback.revision,
            status.last_rollback.reprocessed_documents,
            status.last_rollback.at,
        ),
    )


def status_of(state: rollout.RolloutState) -> RolloutStatus:
    """The rollout's memory to store in the status."""
    return RolloutStatus(
        phase=state.phase.value if state.phase else None,
        stable_revision=state.stable_revision,
        canary_revision=state.canary_revision,
        started_at=state.started_at,
        canary_replicas=state.canary_replicas,
        canary_weight=state.canary_weight,
        intervals=[
            AnalysisInterval(outcome=i.outcome.value, reason=i.reason[:1024], at=i.at)
            for i in state.intervals
        ],
        message=(state.message or "")[:4096] or None,
        rejected_revision=state.rejected_revision,
        rejected_reason=(state.rejected_reason or "")[:4096] or None,
        rejected_at=state.rejected_at,
        no_traffic=_no_traffic_status(state),
        last_rollback=None
        if state.last_rollback is None
        else LastRollback(
            revision=state.last_rollback.revision,
            reprocessed_documents=state.last_rollback.reprocessed_documents,
            at=state.last_rollback.at,
        ),
    )


def _no_traffic_state(status: NoTrafficStatus | None) -> NoTrafficState | None:
    if status is None:
        return None
    action = NoTrafficAction(status.action)
    return NoTrafficState(action, status.since, status.deadline, status.message)


def _no_traffic_status(state: rollout.RolloutState) -> NoTrafficStatus | None:
    """status.rollout.noTraffic: only while an analysis runs (a finished one has no deadline)."""
    idle = state.no_traffic
    if idle is None or state.phase not in (rollout.Phase.PROGRESSING, rollout.Phase.PAUSED):
        return None
    return NoTrafficStatus(
        action=idle.action.value, since=idle.since, deadline=idle.deadline, message=idle.message
    )


def revision_counters(
    targets: tuple[PodTarget, ...] | list[PodTarget],
    readings: tuple[WorkerReading | None, ...] | list[WorkerReading | None],
) -> dict[str, dict[str, rollout.RevisionCounters]]:
    """Pod → revision → counters, from the pods' scraped readings."""
    return {
        t.name: dict(r.revisions) for t, r in zip(targets, readings, strict=False) if r is not None
    }


def _for_revision(
    counters: dict[str, dict[str, rollout.RevisionCounters]], revision: str
) -> dict[str, rollout.RevisionCounters]:
    return {pod: by_rev[revision] for pod, by_rev in counters.items() if revision in by_rev}


def _increase_sample(
    increase: RevisionIncrease | None, *, pods_desired: int, pods_ready: int, restarts: int
) -> rollout.RevisionSample:
    seen = increase or RevisionIncrease()
    return rollout.RevisionSample(
        claimed=seen.claimed,
        retried=seen.retried,
        dead=seen.dead,
        stage_p95_s=seen.stage_p95_s,
        pods_desired=pods_desired,
        pods_ready=pods_ready,
        restarts=restarts,
        output=quality.OutputSample(seen.output),
        golden=seen.golden,
    )


def judge(
    window: AnalysisWindow | None,
    *,
    now: float,
    interval_s: float,
    canary: str,
    stable: str,
    targets: tuple[PodTarget, ...] | list[PodTarget],
    readings: tuple[WorkerReading | None, ...] | list[WorkerReading | None],
    canary_desired: int,
    policy: rollout.RolloutPolicy,
    prometheus: bool = False,
    increases: Mapping[str, RevisionIncrease] | None = None,
) -> tuple[rollout.IntervalResult | None, AnalysisWindow]:
    """Judge the canary's interval if one has passed since `window` began; return the window to
    keep (a new one whenever an interval was judged, or none was running for this revision).

    With `prometheus`, the revisions' counters are `increases` (PromQL's increase() over the
    interval; None: Prometheus did not answer) instead of the pods' counters at its two ends."""
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
    canary_ready = sum(t.ready for t in canary_pods)
    stable_ready = sum(t.ready for t in stable_pods)
    if prometheus:
        if increases is None:
            return rollout.IntervalResult(
                rollout.IntervalOutcome.INCONCLUSIVE,
                "Prometheus did not answer the analysis queries",
            ), fresh
        canary_sample = _increase_sample(
            increases.get(canary),
            pods_desired=canary_desired,
            pods_ready=canary_ready,
            restarts=new_restarts,
        )
        stable_sample = _increase_sample(
            increases.get(stable),
            pods_desired=len(stable_pods),
            pods_ready=stable_ready,
            restarts=0,
        )
        return rollout.judge_interval(canary_sample, stable_sample, policy), fresh
    canary_sample = rollout.sample_interval(
        _for_revision(window.counters, canary),
        _for_revision(counters, canary),
        pods_desired=canary_desired,
        pods_ready=canary_ready,
        restarts=new_restarts,
    )
    stable_sample = rollout.sample_interval(
        _for_revision(window.counters, stable),
        _for_revision(counters, stable),
        pods_desired=len(stable_pods),
        pods_ready=stable_ready,
        restarts=0,
    )
    return rollout.judge_interval(canary_sample, stable_sample, policy), fresh


@dataclass(frozen=True)
class RolloutStep:
    """The rollout's plan for this round, the worker split, and the analysis window to keep."""

    plan: rollout.Plan
    split: rollout.Split
    analysis: AnalysisWindow | None


def plan_rollout(
    pipeline: Pipeline,
    spec: DocumentPipelineSpec,
    previous: DocumentPipelineStatus,
    children: Children,
    targets: list[PodTarget],
    memory: Memory,
    load: Load | None,
    total: int,
    now: float,
    wall: datetime,
    secrets_hash: str | None = None,
) -> RolloutStep:
    """Judge the canary's interval if one ended (only with a fresh `load`), and plan the
    rollout's next step; the stable Deployment keeps its template unless the plan says so.
    `secrets_hash`: see `rendering.render_pod_template`."""
    name = pipeline.name
    deployment = children.get("Deployment", rendering.worker_name(name))
    desired_template = rendering.render_pod_template(name, spec, secrets_hash=secrets_hash)
    desired = rendering.revision_of(desired_template) or ""
    stable = rendering.revision_of(template_of(deployment) or {})
    before = state_of(previous.rollout)
    policy = policy_of(spec.rollout)
    split = split_of(spec.rollout, total)
    canary_pods = [t for t in targets if t.canary and t.revision == desired]
    canary_ready = len(canary_pods) >= split.canary and all(t.ready for t in canary_pods)
    interval = None
    analysis = None
    analysing = (
        before.phase in (rollout.Phase.PROGRESSING, rollout.Phase.PAUSED)
        and before.canary_revision == desired
        and not spec.rollout.paused
        and stable is not None
    )
    if analysing and stable is not None:
        analysis = memory.analysis
        if load is not None:
            interval, analysis = judge(
                memory.analysis,
                now=now,
                interval_s=float(spec.rollout.interval_seconds),
                canary=desired,
                stable=stable,
                targets=load.targets,
                readings=load.readings,
                canary_desired=split.canary,
                policy=policy,
                prometheus=load.prometheus,
                increases=load.increases,
            )
    seen = rollout.Observed(
        desired_revision=desired,
        stable_revision=stable,
        canary_ready=canary_ready,
        stable_rolled=stable_rolled(deployment, desired),
        now=wall,
        strategy=rollout.Strategy(spec.rollout.strategy),
        paused=spec.rollout.paused,
        rollback_requested=ROLLBACK_ANNOTATION in pipeline.annotations,
        interval=interval,
        canary_weight=weight_of(spec.rollout, split),
    )
    plan = rollout.plan(before, seen, policy)
    if not plan.run_canary:
        split = rollout.Split(stable=total, canary=0)
    return RolloutStep(plan, split, analysis)
