"""What the operator does with a DocumentPipeline's spec against the API emulator: placement
reaches the worker pods, a bad image or an unknown field is refused with InvalidSpec, each
condition carries its generation, and a rollout on an idle pipeline ends as spec.rollout.noTraffic
says."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, ApiFailureError, KubernetesApi
from tests.support.fleet import Fleet
from tests.support.polling import eventually

INTERVAL = 1  # seconds, both the scaling and the analysis interval


def _deployment(api: KubernetesApi, name: str = "docs-worker") -> dict[str, Any] | None:
    return api.read_object(DEPLOYMENTS, NAMESPACE, name)


def _conditions(api: KubernetesApi) -> dict[str, dict[str, Any]]:
    status = (pipeline(api) or {}).get("status") or {}
    return {c["type"]: c for c in status.get("conditions") or []}


def _rollout(api: KubernetesApi) -> dict[str, Any]:
    status = (pipeline(api) or {}).get("status") or {}
    rollout: dict[str, Any] = status.get("rollout") or {}
    return rollout


def _edit_worker(api: KubernetesApi, **worker: Any) -> None:
    def change(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {**o["spec"], "worker": {**o["spec"]["worker"], **worker}}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", change)


async def test_placement_and_pod_metadata_reach_the_worker_deployment(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    body = pipeline_body()
    body["spec"]["worker"].update(
        nodeSelector={"pool": "ingest"},
        tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="ingest",
        podLabels={"team": "search"},
        podAnnotations={"example.com/owner": "search"},
        extraVolumes=[{"name": "models", "configMap": {"name": "models"}}],
        extraVolumeMounts=[{"name": "models", "mountPath": "/models", "readOnly": True}],
    )
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)

    deployment = await eventually(lambda: _deployment(api), what="the Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"pool": "ingest"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "ingest"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["annotations"]["example.com/owner"] == "search"
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "models"]
    # Applied once: the stored Deployment contains what the operator renders, so no drift.
    await asyncio.sleep(3 * INTERVAL)
    assert (_deployment(api) or {})["metadata"]["generation"] == deployment["metadata"][
        "generation"
    ]


async def _refused_by_the_operator(api: KubernetesApi, body: dict[str, Any]) -> dict[str, Any]:
    # As if stored before the CRD had the rule (or by an API server that does not prune): the
    # operator itself refuses it.
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body, validate=False)
    ready: dict[str, Any] = await eventually(
        lambda: _conditions(api).get("Ready"), what="the Ready condition"
    )
    assert ready["status"] == "False"
    assert ready["reason"] == "InvalidSpec"
    assert _conditions(api)["Degraded"]["reason"] == "InvalidSpec"
    assert (pipeline(api) or {})["status"]["phase"] == "Degraded"
    assert _deployment(api) is None
    return ready


async def test_an_invalid_image_reference_is_refused_with_invalid_spec_and_never_rendered(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    body = pipeline_body()
    body["spec"]["worker"]["image"] = "Not A Valid Image!!"

    ready = await _refused_by_the_operator(api, body)

    assert "spec.worker.image" in ready["message"]
    assert "must be an image reference" in ready["message"]


async def test_an_unknown_spec_field_is_refused_by_the_api_server_naming_it(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    # The CRD preserves no unknown spec field: kubectl's strict field validation refuses one,
    # and a lax client's is pruned, never stored to be silently ignored. (The operator refuses
    # one that reaches it anyway, from a CRD newer than itself: tests/unit.)
    body = pipeline_body()
    body["spec"]["worker"]["nodeSelecter"] = {"pool": "ingest"}

    with pytest.raises(ApiFailureError) as refused:
        api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    assert 'unknown field "spec.worker.nodeSelecter"' in str(refused.value)

    stored = api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body, field_validation="Ignore")
    assert "nodeSelecter" not in stored["spec"]["worker"]
    await eventually(lambda: _deployment(api), what="the Deployment of the pruned spec")


async def test_each_condition_carries_the_generation_it_was_set_from(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: _conditions(api).get("Ready"), what="the conditions")
    _edit_worker(api, concurrency=3)
    generation = (pipeline(api) or {})["metadata"]["generation"]
    assert generation >= 2

    def at_generation() -> bool:
        conditions = _conditions(api).values()
        return bool(conditions) and all(
            c.get("observedGeneration") == generation for c in conditions
        )

    await eventually(at_generation, what="every condition at the new generation")
    assert (pipeline(api) or {})["status"]["observedGeneration"] == generation


def _idle_rollout(api: KubernetesApi, **no_traffic: Any) -> None:
    rollout = {
        "intervalSeconds": INTERVAL,
        "minJobs": 3,
        "successIntervals": 2,
        "progressDeadlineSeconds": 20,
        "noTraffic": no_traffic,
    }
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(replicas=2, rollout=rollout))


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_rollout_on_an_idle_pipeline_is_promoted_at_the_no_traffic_deadline(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    after = 3
    _idle_rollout(api, action="Promote", afterSeconds=after)
    await eventually(lambda: len(fleet.workers) == 2, what="two stable workers")
    _edit_worker(api, image="docpipe:2")
    await eventually(lambda: _deployment(api, "docs-worker-canary"), what="the canary")
    started = time.monotonic()

    idle = await eventually(
        lambda: _rollout(api).get("noTraffic"), within=10, what="status.rollout.noTraffic"
    )
    assert idle["action"] == "Promote"
    assert (_when(idle["deadline"]) - _when(idle["since"])).total_seconds() == after
    assert "promoted at" in idle["message"]
    await eventually(
        lambda: _rollout(api).get("phase") in ("Promoting", "Promoted"),
        within=after + 10 * INTERVAL,
        what="the promotion",
    )
    took = time.monotonic() - started
    # The first idle interval ends one interval after the canary is ready; the deadline counts
    # from there, and the round that passes it comes at most an interval later.
    assert after <= took <= after + 5 * INTERVAL
    await eventually(lambda: _rollout(api).get("phase") == "Promoted", what="the rollout's end")
    assert "noTraffic" not in _rollout(api)
    await eventually(
        lambda: [
            e
            for e in api.list_objects("/v1/events")
            if e.get("reason") == "Promoting"
            and "rollout.noTraffic: Promote" in (e.get("message") or "")
        ],
        within=5,
        what="a Promoting Event naming the noTraffic rule",
    )


async def test_a_rollout_on_an_idle_pipeline_told_to_wait_waits_and_says_so(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    _idle_rollout(api, action="Golden", afterSeconds=1)
    await eventually(lambda: len(fleet.workers) == 2, what="two stable workers")
    _edit_worker(api, image="docpipe:2")

    idle = await eventually(
        lambda: _rollout(api).get("noTraffic"), within=10, what="status.rollout.noTraffic"
    )
    # No golden set is configured: Golden waits, and the status says why.
    assert idle["action"] == "Wait"
    assert "deadline" not in idle
    assert "no rollout.goldenSet is configured" in idle["message"]
    await asyncio.sleep(4 * INTERVAL)
    assert _rollout(api)["phase"] == "Progressing"
    assert _deployment(api, "docs-worker-canary") is not None
