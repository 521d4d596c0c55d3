"""The operator sizes the worker fleet from the workers' metrics, scraped over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from docpipe_operator import cluster
from docpipe_queue import jobs as queue
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.fleet import Fleet
from tests.support.polling import eventually


def _replicas(api: KubernetesApi) -> int | None:
    deployment = api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker")
    return None if deployment is None else int(deployment["spec"]["replicas"])


def _events(api: KubernetesApi, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.list_objects("/v1/events") if e.get("reason") == reason]


async def test_backlog_scales_up_within_two_intervals_then_down_after_stabilization_then_to_zero(
    api: KubernetesApi, operator: OperatorProcess, fleet: Fleet
) -> None:
    body = pipeline_body(
        scaling={
            "minReplicas": 0,
            "maxReplicas": 6,
            "targetQueueWaitSeconds": 10,
            "intervalSeconds": 1,
            "scaleDownStabilizationSeconds": 3,
            "maxScaleUpStep": 4,
            "scaleToZero": {"enabled": True, "idleSeconds": 5},
        }
    )
    body["spec"]["replicas"] = 1  # pinned at first: one worker, then autoscaling takes over
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    fleet.ready_jobs, fleet.busy_per_pod = 0, 1
    await eventually(lambda: _replicas(api) == 1 and len(fleet.workers) == 1, what="one worker")

    def unpin(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {k: v for k, v in o["spec"].items() if k != "replicas"}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", unpin)
    await asyncio.sleep(1.2)
    assert _replicas(api) == 1

    # A backlog: 2 slots per worker, 40 ready jobs to drain within 10 s → the maximum, 6.
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = 40, 12, 2
    spike = time.monotonic()
    await eventually(lambda: (_replicas(api) or 0) > 1, within=2.5, what="a scale-up")
    reaction = time.monotonic() - spike
    assert reaction <= 2 * 1.0 + 0.5, reaction
    await eventually(lambda: _replicas(api) == 6, within=4, what="the maximum")
    await eventually(lambda: _events(api, "ScaledUp"), what="a ScaledUp Event")
    # The round patches the Deployment, then its status: the status follows within the round.
    status = await eventually(
        lambda: (
            (st := (pipeline(api) or {}).get("status") or {}).get("desiredReplicas") == 6 and st
        ),
        within=2,
        what="the status of the maximum",
    )
    assert status["desiredReplicas"] == 6
    assert status["queueDepth"] == 40
    assert "scaling up" in status["lastScaleReason"]

    # The backlog is gone; one worker stays busy: the scale-down waits for the window, and the
    # idle pods go first (pod-deletion-cost).
    busy = sorted(fleet.workers)[-1]
    fleet.busy_overrides[busy] = 1
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = 0, 0, 0
    calm = time.monotonic()
    await asyncio.sleep(1.0)
    assert _replicas(api) == 6, "no scale-down inside the stabilization window"
    await eventually(lambda: _replicas(api) == 1, within=6, what="a scale-down to the busy one")
    # The window runs from the last round that saw the backlog: at most one interval before.
    assert time.monotonic() - calm >= 3.0 - 1.0
    await eventually(lambda: _events(api, "ScaledDown"), what="a ScaledDown Event")
    await eventually(lambda: list(fleet.workers) == [busy], what="the idle pods to go")
    assert busy not in fleet.removed, "the busy pod is kept (pod-deletion-cost)"

    # Idle for idleSeconds: down to zero.
    fleet.busy_overrides.clear()
    idle = time.monotonic()
    await eventually(lambda: _replicas(api) == 0, within=10, what="scale to zero")
    assert time.monotonic() - idle >= 5.0 - 1.0
    await eventually(
        lambda: pipeline(api)["status"]["phase"] == "ScaledToZero",  # type: ignore[index]
        what="the ScaledToZero phase",
    )


async def test_missing_metrics_never_scale_down(
    api: KubernetesApi, operator: OperatorProcess, fleet: Fleet
) -> None:
    api.create_object(
        DOCPIPE_RESOURCE,
        NAMESPACE,
        pipeline_body(
            scaling={
                "minReplicas": 1,
                "maxReplicas": 5,
                "intervalSeconds": 1,
                "scaleDownStabilizationSeconds": 0,
            }
        ),
    )
    fleet.ready_jobs, fleet.busy_per_pod = 20, 2
    await eventually(lambda: (_replicas(api) or 0) >= 3, within=5, what="a scale-up")
    for worker in list(fleet.workers.values()):
        assert worker.runner is not None
        await worker.runner.cleanup()  # every /metrics endpoint goes silent
        worker.runner = None
    fleet.ready_jobs, fleet.busy_per_pod = 0, 0
    held = _replicas(api)
    await asyncio.sleep(2.5)
    assert _replicas(api) == held
    degraded = next(
        c
        for c in pipeline(api)["status"]["conditions"]  # type: ignore[index]
        if c["type"] == "Degraded"
    )
    assert degraded["status"] == "True"
    assert degraded["reason"] == "MetricsIncomplete"


async def test_jobs_in_the_database_bring_a_pipeline_back_from_zero(
    api: KubernetesApi,
    operator: OperatorProcess,
    fleet: Fleet,
    database_url: str,
    pool: asyncpg.Pool,
) -> None:
    api.create_object(
        "/v1/secrets", NAMESPACE, {"metadata": {"name": "db"}, "stringData": {"url": database_url}}
    )
    body = pipeline_body(
        scaling={
            "minReplicas": 0,
            "maxReplicas": 3,
            "intervalSeconds": 1,
            "scaleToZero": {"enabled": True, "idleSeconds": 60},
        }
    )
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    await eventually(lambda: _replicas(api) == 0, what="a Deployment at zero")
    await asyncio.sleep(1.2)
    assert _replicas(api) == 0
    await queue.enqueue(pool, [queue.NewJob(pipeline="docs") for _ in range(3)])
    await eventually(lambda: (_replicas(api) or 0) >= 1, within=3, what="a scale-from-zero")
    reason = await eventually(
        lambda: [
            e["message"] for e in api.list_objects("/v1/events") if e.get("reason") == "ScaledUp"
        ],
        what="a ScaledUp Event",
    )
    assert reason[0].startswith("scaling up 0 → "), reason
    assert "3 ready" in reason[0]


async def test_every_call_the_operator_made_is_granted_by_the_rbac(
    api: KubernetesApi, operator: OperatorProcess, fleet: Fleet
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    fleet.ready_jobs, fleet.busy_per_pod = 10, 2
    await eventually(lambda: (_replicas(api) or 0) >= 2, within=5, what="a scale-up")
    fleet.ready_jobs, fleet.busy_per_pod = 0, 0
    await eventually(lambda: _replicas(api) == 1, within=8, what="a scale-down")
    # With the Secret reads, which the RBAC grants apart (per namespace).
    granted = cluster.required_permissions(secrets=True)
    for group, resource, verb in api.calls:
        assert verb in granted.get((group, resource), frozenset()), (group, resource, verb)
