"""Canary rollouts against the API emulator: the real operator, pods with real /metrics endpoints.

The kubelet (`Fleet`) runs each pod's metrics endpoint and makes workers of `failing_images` fail
every job they claim; `unready_images` never get ready. The real-process case (a revision whose
`docpipe worker` processes fail every job, against Postgres and the mocks) is in
test_operator_rollout_workers.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from docpipe_operator.rendering import LABEL_REVISION
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.fleet import Fleet
from tests.support.polling import eventually

INTERVAL = 1  # seconds, both the scaling and the analysis interval
FAST_POLICY = {
    "intervalSeconds": INTERVAL,
    "minJobs": 3,
    "successIntervals": 2,
    "failureLimit": 2,
    "progressDeadlineSeconds": 20,
}


def _body(**rollout: Any) -> dict[str, Any]:
    return pipeline_body(replicas=3, rollout={**FAST_POLICY, **rollout})


def _deployment(api: KubernetesApi, name: str) -> dict[str, Any] | None:
    return api.read_object(DEPLOYMENTS, NAMESPACE, name)


def _image(deployment: dict[str, Any] | None) -> str | None:
    if deployment is None:
        return None
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _rollout(api: KubernetesApi) -> dict[str, Any]:
    status = (pipeline(api) or {}).get("status") or {}
    rollout: dict[str, Any] = status.get("rollout") or {}
    return rollout


def _set_image(api: KubernetesApi, image: str) -> None:
    def change(o: dict[str, Any]) -> dict[str, Any]:
        worker = {**o["spec"]["worker"], "image": image}
        return {**o, "spec": {**o["spec"], "worker": worker}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", change)


def _events(api: KubernetesApi, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.list_objects("/v1/events") if e.get("reason") == reason]


async def _started(api: KubernetesApi, fleet: Fleet) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _body())
    await eventually(
        lambda: _image(_deployment(api, "docs-worker")) == "docpipe:1" and len(fleet.workers) == 3,
        what="three stable workers",
    )


async def test_a_good_revision_is_promoted_and_its_canary_removed(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    fleet.jobs_per_second_per_pod, fleet.busy_per_pod = 10, 1
    await _started(api, fleet)
    _set_image(api, "docpipe:2")

    canary = await eventually(
        lambda: _deployment(api, "docs-worker-canary"), what="the canary Deployment"
    )
    # The stable Deployment keeps the old template while the canary is analysed.
    assert _image(_deployment(api, "docs-worker")) == "docpipe:1"
    assert _image(canary) == "docpipe:2"
    assert _env(canary)["DOCPIPE_CANARY"] == "true"
    # The default canaryPercent (20): the canary claims a fifth of the jobs.
    assert float(_env(canary)["DOCPIPE_CANARY_WEIGHT"]) == 0.2
    # Capacity is split, not added: 3 workers, one of them the canary.
    assert canary["spec"]["replicas"] == 1
    assert (_deployment(api, "docs-worker") or {})["spec"]["replicas"] == 2

    await eventually(
        lambda: _rollout(api).get("phase") == "Promoted", within=15, what="the promotion"
    )
    stable = _deployment(api, "docs-worker") or {}
    assert _image(stable) == "docpipe:2"
    assert stable["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == _rollout(api).get(
        "canaryRevision"
    )
    assert "DOCPIPE_CANARY" not in _env(stable)
    assert stable["spec"]["replicas"] == 3
    await eventually(lambda: _deployment(api, "docs-worker-canary") is None, what="canary gone")
    passed = [i for i in _rollout(api)["intervals"] if i["outcome"] == "Passed"]
    assert len(passed) >= FAST_POLICY["successIntervals"]
    # Kopf posts Events from a background queue: they may land a moment after the status.
    await eventually(lambda: _events(api, "CanaryStarted"), within=5, what="a CanaryStarted Event")
    await eventually(lambda: _events(api, "Promoted"), within=5, what="a Promoted Event")


async def test_a_revision_never_ready_is_rolled_back_at_the_progress_deadline(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    fleet.unready_images.add("docpipe:broken")
    deadline = 3
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _body(progressDeadlineSeconds=deadline))
    await eventually(lambda: len(fleet.workers) == 3, what="three stable workers")
    _set_image(api, "docpipe:broken")
    await eventually(lambda: _deployment(api, "docs-worker-canary"), what="the canary")
    started = time.monotonic()

    await eventually(
        lambda: _rollout(api).get("phase") == "RolledBack", within=10, what="the rollback"
    )
    took = time.monotonic() - started
    assert deadline - INTERVAL <= took <= deadline + 2 * INTERVAL
    rollout = _rollout(api)
    assert "progress deadline" in rollout["rejectedReason"]
    assert rollout["rejectedRevision"] == rollout["canaryRevision"]
    await eventually(lambda: _deployment(api, "docs-worker-canary") is None, what="canary gone")
    assert _image(_deployment(api, "docs-worker")) == "docpipe:1"
    warning = await eventually(
        lambda: _events(api, "RolledBack"), within=5, what="a RolledBack Event"
    )
    assert warning[0]["type"] == "Warning"

    # The rejected revision is not tried again while the spec stays...
    await _quiet(api, seconds=3 * INTERVAL)
    # ...and a new spec is.
    _set_image(api, "docpipe:3")
    await eventually(lambda: _deployment(api, "docs-worker-canary"), what="a new canary")


async def _quiet(api: KubernetesApi, *, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert _deployment(api, "docs-worker-canary") is None, "the rejected revision came back"
        await asyncio.sleep(0.1)


async def test_an_operator_restart_during_analysis_resumes_it(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    fleet.jobs_per_second_per_pod, fleet.busy_per_pod = 10, 1
    fleet.failing_images.add("docpipe:bad")
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _body(failureLimit=3))
    await eventually(lambda: len(fleet.workers) == 3, what="three stable workers")
    _set_image(api, "docpipe:bad")
    canary = await eventually(lambda: _deployment(api, "docs-worker-canary"), what="the canary")

    def failed() -> list[dict[str, Any]]:
        return [i for i in _rollout(api).get("intervals", []) if i["outcome"] == "Failed"]

    await eventually(lambda: failed(), within=10, what="a failed interval")
    before = failed()[0]
    started_at = _rollout(api)["startedAt"]
    await operator.restart()

    await eventually(
        lambda: _rollout(api).get("phase") == "RolledBack", within=15, what="the rollback"
    )
    rollout = _rollout(api)
    # Resumed, not restarted: same analysis start, the failure judged before the restart counts.
    assert rollout["startedAt"] == started_at
    assert rollout["intervals"][: rollout["intervals"].index(before) + 1][-1] == before
    assert "3 failed analysis interval(s)" in rollout["rejectedReason"]
    await eventually(lambda: _deployment(api, "docs-worker-canary") is None, what="canary gone")
    assert canary["metadata"]["uid"] not in {
        d["metadata"]["uid"] for d in api.list_objects(DEPLOYMENTS)
    }


async def test_pause_holds_the_analysis_and_a_manual_rollback_ends_it(
    api: KubernetesApi, fleet: Fleet, operator: OperatorProcess
) -> None:
    fleet.jobs_per_second_per_pod, fleet.busy_per_pod = 10, 1
    await _started(api, fleet)

    def edit(o: dict[str, Any]) -> dict[str, Any]:
        spec = o["spec"]
        rollout = {**spec["rollout"], "paused": True}
        return {
            **o,
            "spec": {**spec, "worker": {**spec["worker"], "image": "d:2"}, "rollout": rollout},
        }

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", edit)
    await eventually(lambda: _rollout(api).get("phase") == "Paused", what="a paused rollout")
    await eventually(lambda: _deployment(api, "docs-worker-canary"), what="the canary")
    # Paused: a good canary is not promoted, however long it runs.
    await asyncio.sleep(4 * INTERVAL)
    assert _rollout(api)["phase"] == "Paused"
    assert _rollout(api).get("intervals", []) == []

    def annotate(o: dict[str, Any]) -> dict[str, Any]:
        meta = {**o["metadata"], "annotations": {"docpipe.io/rollback": "true"}}
        return {**o, "metadata": meta}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", annotate)
    await eventually(lambda: _rollout(api).get("phase") == "RolledBack", what="the manual rollback")
    assert "annotation" in _rollout(api)["rejectedReason"]
    await eventually(lambda: _deployment(api, "docs-worker-canary") is None, what="canary gone")
    # The request is consumed, so it cannot roll back the next canary.
    await eventually(
        lambda: (
            "docpipe.io/rollback"
            not in ((pipeline(api) or {})["metadata"].get("annotations") or {})
        ),
        what="the annotation removed",
    )
    assert _image(_deployment(api, "docs-worker")) == "docpipe:1"
