"""One round's decision (pure): the children to create, patch or delete, the worker count, the
rollout's step, the status and the Events, from the pipeline, its watched children and memory."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from docpipe_operator import rendering, rollout
from docpipe_operator.decision import (
    AnalysisWindow,
    Children,
    Load,
    Memory,
    Pipeline,
    Round,
    decide,
    deletion_costs,
    judge,
    owned_replicas,
    pending_expectations,
    read_pipeline,
    round_interval,
    stable_rolled,
    status_patch,
)
from docpipe_operator.model import DocumentPipelineStatus, dump, parse_spec
from docpipe_operator.rendering import LABEL_REVISION
from docpipe_operator.scaling import MetricsSnapshot, PodMetrics, QueueMetrics
from docpipe_operator.telemetry import PodTarget

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = rollout.RolloutPolicy(min_jobs=3, success_intervals=2, failure_limit=2)


def body(
    image: str = "docpipe:1", status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "worker": {"image": image, "concurrency": 2, "metricsPort": 9100},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "embedder": {"baseUrl": "http://mocks:8000/v1"},
        "scaling": {
            "minReplicas": 1,
            "maxReplicas": 6,
            "intervalSeconds": 5,
            "targetQueueWaitSeconds": 10,
            "scaleDownStabilizationSeconds": 0,
        },
        "rollout": {"intervalSeconds": 2, "minJobs": 3},
    }
    base.update(spec)
    return {
        "apiVersion": "docpipe.io/v1alpha1",
        "kind": "DocumentPipeline",
        "metadata": {"name": "docs", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": base,
        "status": status or {},
    }


def run(
    pipeline: Pipeline,
    children: Children,
    memory: Memory | None = None,
    *,
    load: Load | None = None,
    now: float = 100.0,
    monitoring: bool = True,
) -> tuple[Round, Memory]:
    return decide(
        pipeline,
        children,
        memory or Memory(),
        load=load,
        now=now,
        wall=T0 + timedelta(seconds=now),
        monitoring=monitoring,
    )


def stored(decided: Round, ready: int | None = None) -> Children:
    """The children as the API would hold them once `decided` was applied (and, with `ready`,
    the stable Deployment's pods ready)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for change in decided.changes:
        if change.verb in ("create", "patch") and change.body is not None:
            obj = copy.deepcopy(dict(change.body))
            obj["metadata"]["generation"] = 1
            objects[(change.kind, change.name)] = obj
    if ready is not None:
        deployment = objects[("Deployment", "docs-worker")]
        deployment["status"] = {
            "observedGeneration": 1,
            "replicas": ready,
            "readyReplicas": ready,
            "updatedReplicas": ready,
            "availableReplicas": ready,
        }
    return Children(objects)


def merged(children: Children, decided: Round) -> Children:
    """`children` with `decided`'s changes applied."""
    objects = dict(children.objects)
    for change in decided.changes:
        if change.verb == "delete":
            objects.pop((change.kind, change.name), None)
        elif change.body is not None:
            objects[(change.kind, change.name)] = copy.deepcopy(dict(change.body))
    return Children(objects, children.pods)


def load(ready_jobs: float, pods: int = 1, in_flight: float = 2.0, at: float = 100.0) -> Load:
    snapshot = MetricsSnapshot(
        pods=tuple(PodMetrics(f"p{i}", True, in_flight, 10.0) for i in range(pods)),
        queue=QueueMetrics(ready_jobs, 5.0),
    )
    targets = tuple(PodTarget(f"p{i}", f"10.0.0.{i}", True, None) for i in range(pods))
    return Load(at=at, snapshot=snapshot, targets=targets, readings=(None,) * pods)


def test_a_first_round_creates_every_child_owned_by_the_pipeline() -> None:
    decided, _ = run(read_pipeline(body()), Children())

    assert {(c.verb, c.kind) for c in decided.changes} == {
        ("create", "Deployment"),
        ("create", "Service"),
        ("create", "PodDisruptionBudget"),
    }
    for change in decided.changes:
        assert change.body is not None
        (owner,) = change.body["metadata"]["ownerReferences"]
        assert owner["uid"] == "u-1"
        assert owner["controller"] is True
    assert decided.status.desired_replicas == 1


def test_a_converged_pipeline_changes_nothing_and_writes_no_status() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    memory = replace(memory, status=first.status)
    children = stored(first, ready=1)
    second, memory = run(pipeline, children, memory, now=101)
    assert second.changes == ()
    settled = replace(memory, status=second.status)
    third, _ = run(pipeline, children, settled, now=102)
    assert third.changes == ()
    assert status_patch(second.status, third.status) is None


def test_a_child_deleted_by_hand_is_created_again_alone() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)
    without = Children({k: v for k, v in children.objects.items() if k[0] != "Service"})

    decided, _ = run(pipeline, without, memory, now=101)

    assert [(c.verb, c.kind) for c in decided.changes] == [("create", "Service")]


def test_a_child_created_but_not_yet_shown_is_not_created_twice() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)
    without = {k: v for k, v in children.objects.items() if k[0] != "Service"}
    memory = replace(memory, expected={("Service", "docs-worker-metrics"): (100.0, "u-svc")})

    decided, _ = run(pipeline, Children(without), memory, now=101)

    assert decided.changes == ()


def test_a_child_shown_by_its_watch_then_deleted_by_hand_is_created_again_at_once() -> None:
    # The round that created it never saw it: it was shown and deleted between two rounds.
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)
    without = {k: v for k, v in children.objects.items() if k[0] != "Service"}
    memory = replace(memory, expected={("Service", "docs-worker-metrics"): (100.0, "u-svc")})
    shown = {("Service", "docs-worker-metrics"): "u-svc"}

    decided, remembered = run(pipeline, Children(without, (), shown), memory, now=101)

    assert [(c.verb, c.kind) for c in decided.changes] == [("create", "Service")]
    assert remembered.expected == {}


@pytest.mark.parametrize(
    ("shown", "age", "pending"),
    [
        ({}, 1.0, True),  # not shown yet: wait for the watch
        ({("Service", "s"): "older-uid"}, 1.0, True),  # an older object of the name was shown
        ({("Service", "s"): "u-1"}, 1.0, False),  # shown (and gone again): no longer pending
        ({}, 31.0, False),  # the watch never showed it: stop waiting
    ],
)
def test_an_expectation_holds_until_its_uid_is_shown_or_it_expires(
    shown: dict[tuple[str, str], str], age: float, pending: bool
) -> None:
    expected = {("Service", "s"): (100.0, "u-1")}
    left = pending_expectations(expected, Children({}, (), shown), now=100.0 + age)
    assert (("Service", "s") in left) is pending
    present = Children({("Service", "s"): {"metadata": {"name": "s"}}})
    assert pending_expectations(expected, present, now=100.0 + age) == {}


def test_a_child_edited_by_hand_is_patched_back() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    memory = replace(memory, status=first.status)
    children = stored(first, ready=1)
    edited = copy.deepcopy(dict(children.objects))
    deployment = edited[("Deployment", "docs-worker")]
    deployment["spec"]["replicas"] = 7
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"

    decided, _ = run(pipeline, Children(edited), memory, now=101)

    (change,) = decided.changes
    assert (change.verb, change.kind) == ("patch", "Deployment")
    assert change.body is not None
    assert change.body["spec"]["replicas"] == 1
    assert change.body["spec"]["template"]["spec"]["containers"][0]["image"] == "docpipe:1"


def test_a_backlog_in_a_fresh_reading_scales_up_with_an_event() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)

    decided, memory = run(pipeline, children, memory, load=load(40), now=105)

    (change,) = decided.changes
    assert change.body is not None
    assert change.body["spec"]["replicas"] > 1
    assert [e.reason for e in decided.events] == ["ScaledUp"]
    assert decided.status.desired_replicas == change.body["spec"]["replicas"]
    assert memory.decision is not None


def test_rounds_between_readings_keep_the_last_decision_and_post_no_scaling_event() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    scaled, memory = run(pipeline, stored(first, ready=1), memory, load=load(40), now=105)
    memory = replace(memory, status=scaled.status)
    children = merged(stored(first, ready=1), scaled)

    between, memory = run(pipeline, children, memory, now=106)
    assert between.changes == ()
    assert between.events == ()
    assert between.status.desired_replicas == scaled.status.desired_replicas
    again, _ = run(pipeline, children, replace(memory, status=between.status), now=107)
    assert again.changes == ()
    assert status_patch(between.status, again.status) is None


def test_the_last_written_status_counts_over_a_stale_one_in_the_body() -> None:
    # One writer: the round remembers what it wrote; a watch that has not caught up cannot
    # take the worker count back.
    pipeline = read_pipeline(body(status={"desiredReplicas": 1}))
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)
    memory = replace(memory, status=DocumentPipelineStatus(desired_replicas=4))

    decided, _ = run(pipeline, children, memory, now=101)

    (change,) = decided.changes
    assert change.body is not None
    assert change.body["spec"]["replicas"] == 4


def test_a_changed_template_starts_a_canary_and_the_stable_keeps_its_template() -> None:
    first, memory = run(read_pipeline(body(replicas=3)), Children())
    children = stored(first, ready=3)
    memory = replace(memory, status=first.status)

    decided, _ = run(read_pipeline(body("docpipe:2", replicas=3)), children, memory, now=101)

    changes = {(c.verb, c.name): c.body for c in decided.changes}
    stable = changes[("patch", "docs-worker")]
    canary = changes[("create", "docs-worker-canary")]
    assert stable is not None
    assert canary is not None
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "docpipe:1"
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (2, 1)
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "docpipe:2"
    assert decided.status.rollout is not None
    assert decided.status.rollout.phase == "Progressing"
    assert [e.reason for e in decided.rollout_events] == ["CanaryStarted"]
    # A rollout shortens the round to the analysis interval.
    assert decided.interval_s == 2.0


def test_a_canary_of_fixed_size_gets_its_share_of_the_pods_as_weight_fixed_for_its_life() -> None:
    fixed = {"canaryReplicas": 1}
    first, memory = run(read_pipeline(body(replicas=4, rollout=fixed)), Children())
    children = stored(first, ready=4)
    memory = replace(memory, status=first.status)

    started, memory = run(
        read_pipeline(body("docpipe:2", replicas=4, rollout=fixed)), children, memory, now=101
    )

    canary = {(c.verb, c.name): c.body for c in started.changes}[("create", "docs-worker-canary")]
    assert canary is not None
    env = {
        e["name"]: e.get("value")
        for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DOCPIPE_CANARY_WEIGHT"] == "0.25"  # 1 of 4 workers
    assert started.status.rollout is not None
    assert started.status.rollout.canary_weight == 0.25
    # The fleet grows: the weight stays, so the canary's pods are not restarted.
    memory = replace(memory, status=started.status)
    grown, _ = run(
        read_pipeline(body("docpipe:2", replicas=8, rollout=fixed)),
        stored(started, ready=4),
        memory,
        now=102,
    )
    for change in grown.changes:
        if change.name == "docs-worker-canary" and change.body is not None:
            container = change.body["spec"]["template"]["spec"]["containers"][0]
            assert {e["name"]: e.get("value") for e in container["env"]}[
                "DOCPIPE_CANARY_WEIGHT"
            ] == "0.25"


def test_with_the_rolling_strategy_the_stable_takes_the_new_template() -> None:
    rolling = {"strategy": "Rolling"}
    first, memory = run(read_pipeline(body(rollout=rolling)), Children())
    children = stored(first, ready=1)

    decided, _ = run(read_pipeline(body("docpipe:2", rollout=rolling)), children, memory, now=101)

    (change,) = decided.changes
    assert change.body is not None
    assert change.body["spec"]["template"]["spec"]["containers"][0]["image"] == "docpipe:2"


def test_a_canary_left_over_when_no_rollout_runs_is_deleted() -> None:
    pipeline = read_pipeline(body())
    first, memory = run(pipeline, Children())
    children = stored(first, ready=1)
    leftover = {**children.objects, ("Deployment", "docs-worker-canary"): {"metadata": {}}}

    decided, _ = run(pipeline, Children(leftover), memory, now=101)

    assert [(c.verb, c.name) for c in decided.changes] == [("delete", "docs-worker-canary")]


def test_an_invalid_spec_changes_no_child_and_tells_once() -> None:
    pipeline = read_pipeline(body(scaling={"minReplicas": 5, "maxReplicas": 2}))
    decided, memory = run(pipeline, Children())
    assert decided.changes == ()
    assert [e.reason for e in decided.events] == ["InvalidSpec"]
    assert decided.status.phase == "Degraded"

    again, _ = run(pipeline, Children(), replace(memory, status=decided.status), now=101)
    assert again.events == ()


def test_a_podmonitor_the_cluster_cannot_serve_is_left_out_with_a_warning() -> None:
    pipeline = read_pipeline(body(metrics={"podMonitor": {"enabled": True}}))
    decided, _ = run(pipeline, Children(), monitoring=False)
    assert "PodMonitor" not in {c.kind for c in decided.changes}
    degraded = next(c for c in decided.status.conditions if c.type == "Degraded")
    assert "monitoring.coreos.com" in degraded.message


def test_owned_replicas_prefers_the_status_then_the_deployment_then_the_floor() -> None:
    spec = parse_spec(body()["spec"])
    deployment = {"spec": {"replicas": 3}}
    assert owned_replicas(spec, DocumentPipelineStatus(desired_replicas=5), deployment) == 5
    assert owned_replicas(spec, DocumentPipelineStatus(), deployment) == 3
    assert owned_replicas(spec, DocumentPipelineStatus(), None) == 1


def test_stable_rolled_needs_every_pod_updated_and_available_at_the_revision() -> None:
    template = {"metadata": {"labels": {LABEL_REVISION: "r2"}}}
    deployment: dict[str, Any] = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2, "template": template},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "availableReplicas": 2,
        },
    }
    assert stable_rolled(deployment, "r2")
    assert not stable_rolled(deployment, "r3")
    surging = copy.deepcopy(deployment)
    surging["status"]["replicas"] = 3
    assert not stable_rolled(surging, "r2")
    stale = copy.deepcopy(deployment)
    stale["status"]["observedGeneration"] = 1
    assert not stable_rolled(stale, "r2")


def _counters(claimed: float, retried: float = 0.0) -> dict[str, rollout.RevisionCounters]:
    return {"r2": rollout.RevisionCounters(claimed=claimed, retried=retried)}


def test_judge_starts_a_window_then_waits_for_the_interval_then_judges() -> None:
    targets = [PodTarget("c", "10.0.0.1", True, "r2", 0, True)]
    kwargs: dict[str, Any] = {
        "interval_s": 2.0,
        "canary": "r2",
        "stable": "r1",
        "targets": targets,
        "canary_desired": 1,
        "policy": POLICY,
    }
    result, window = judge(None, now=10.0, readings=[None], **kwargs)
    assert result is None
    assert window.started == 10.0
    window = AnalysisWindow("r2", 10.0, {"c": _counters(0)}, {"c": 0})
    result, kept = judge(window, now=11.0, readings=[None], **kwargs)
    assert result is None
    assert kept is window
    from docpipe_operator.telemetry import WorkerReading

    failing = WorkerReading(1.0, 0.0, None, _counters(10, retried=8))
    result, fresh = judge(window, now=12.0, readings=[failing], **kwargs)
    assert result is not None
    assert result.outcome is rollout.IntervalOutcome.FAILED
    assert fresh.started == 12.0


def test_judge_with_prometheus_silent_is_inconclusive() -> None:
    window = AnalysisWindow("r2", 0.0, {}, {})
    result, _ = judge(
        window,
        now=10.0,
        interval_s=2.0,
        canary="r2",
        stable="r1",
        targets=[],
        readings=[],
        canary_desired=1,
        policy=POLICY,
        prometheus=True,
        increases=None,
    )
    assert result is not None
    assert result.outcome is rollout.IntervalOutcome.INCONCLUSIVE


def test_deletion_costs_skip_pods_that_carry_theirs_already() -> None:
    snapshot = MetricsSnapshot(
        pods=(PodMetrics("busy", True, 2.0, 1.0), PodMetrics("idle", True, 0.0, 1.0))
    )
    costs = deletion_costs(snapshot, ())
    assert costs["busy"] > costs["idle"]
    carried = {
        "metadata": {
            "name": "idle",
            "annotations": {"controller.kubernetes.io/pod-deletion-cost": str(costs["idle"])},
        }
    }
    assert "idle" not in deletion_costs(snapshot, (carried,))


def test_the_round_interval_is_the_analysis_interval_while_a_rollout_runs() -> None:
    pipeline = read_pipeline(body())
    assert round_interval(pipeline) == 5.0
    running = {"rollout": {"phase": "Progressing", "canaryRevision": "x"}}
    assert round_interval(read_pipeline(body(status=running))) == 2.0


def test_a_status_patch_replaces_keys_the_new_status_drops() -> None:
    before = DocumentPipelineStatus(desired_replicas=2, queue_depth=5)
    after = DocumentPipelineStatus(desired_replicas=2)
    patch = status_patch(before, after)
    assert patch is not None
    assert patch["status"]["queueDepth"] is None
    assert patch["status"]["desiredReplicas"] == 2
    assert status_patch(after, after) is None
    assert dump(after)["desiredReplicas"] == 2
    assert rendering.worker_name("docs") == "docs-worker"


def test_a_status_patch_removes_nested_keys_the_new_status_drops() -> None:
    # A merge patch merges nested objects: status.rollout.noTraffic of a finished rollout would
    # stay for ever unless the patch says null.
    before = DocumentPipelineStatus.model_validate(
        {
            "rollout": {
                "phase": "Progressing",
                "noTraffic": {"action": "Wait", "since": "2026-01-01T00:00:00Z"},
            }
        }
    )
    after = DocumentPipelineStatus.model_validate({"rollout": {"phase": "Promoted"}})

    patch = status_patch(before, after)

    assert patch is not None
    assert patch["status"]["rollout"]["phase"] == "Promoted"
    assert patch["status"]["rollout"]["noTraffic"] is None
