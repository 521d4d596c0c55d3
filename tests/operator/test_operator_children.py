"""The operator keeps a pipeline's child objects: created, updated, reverted, removed."""

from __future__ import annotations

import aiohttp
import yaml

from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.polling import eventually

SERVICES = "/v1/services"
PDBS = "policy/v1/poddisruptionbudgets"


def _deployment(api: KubernetesApi) -> dict | None:  # type: ignore[type-arg]
    return api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker")


async def test_creating_a_pipeline_creates_its_children_owned_by_it(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    owner = api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    deployment = await eventually(lambda: _deployment(api), what="the Deployment")
    service = await eventually(
        lambda: api.read_object(SERVICES, NAMESPACE, "docs-worker-metrics"), what="the Service"
    )
    pdb = await eventually(lambda: api.read_object(PDBS, NAMESPACE, "docs-worker"), what="PDB")
    for child in (deployment, service, pdb):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == owner["metadata"]["uid"]
        assert ref["controller"] is True
    assert deployment["spec"]["replicas"] == 1
    status = await eventually(
        lambda: (pipeline(api) or {}).get("status", {}).get("conditions"), what="conditions"
    )
    assert {c["type"] for c in status} >= {"Ready", "Scaling", "Degraded"}
    assert pipeline(api)["metadata"]["finalizers"] == ["docpipe.io/operator"]  # type: ignore[index]


async def test_liveness_endpoint_answers_while_the_operator_runs(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    async with aiohttp.ClientSession() as session, session.get(operator.liveness_url) as answer:
        assert answer.status == 200


async def test_editing_the_spec_with_the_rolling_strategy_updates_the_deployment(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    # The default Canary strategy is covered by test_operator_rollout.py.
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(rollout={"strategy": "Rolling"}))
    first = await eventually(lambda: _deployment(api), what="the Deployment")
    api.update_object(
        DOCPIPE_RESOURCE,
        NAMESPACE,
        "docs",
        lambda o: {**o, "spec": {**o["spec"], "worker": {**o["spec"]["worker"], "image": "d:2"}}},
    )

    def image() -> str:
        deployment = _deployment(api) or {}
        containers = deployment["spec"]["template"]["spec"]["containers"]
        return str(containers[0]["image"])

    await eventually(lambda: image() == "d:2", what="the new image")
    second = _deployment(api)
    assert second is not None
    labels = second["spec"]["template"]["metadata"]["labels"]
    assert (
        labels["docpipe.io/revision"]
        != first["spec"]["template"]["metadata"]["labels"]["docpipe.io/revision"]
    )


async def test_drift_on_the_deployment_is_reverted(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: _deployment(api), what="the Deployment")

    def tamper(d: dict) -> dict:  # type: ignore[type-arg]
        d["spec"]["replicas"] = 7
        d["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
        return d

    api.update_object(DEPLOYMENTS, NAMESPACE, "docs-worker", tamper)

    def reverted() -> bool:
        d = _deployment(api) or {}
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        return bool(d["spec"]["replicas"] == 1 and image == "docpipe:1")

    await eventually(reverted, within=5, what="the drift to be reverted")


async def test_the_api_server_refuses_an_invalid_spec_with_the_rule_message_and_no_children(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    assert api.kubeconfig is not None
    config = yaml.safe_load(api.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    headers = {"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
    url = f"{server}/apis/docpipe.io/v1alpha1/namespaces/{NAMESPACE}/documentpipelines"
    body = pipeline_body(scaling={"minReplicas": 5, "maxReplicas": 2})
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(url, json=body) as response,
    ):
        status, refusal = response.status, await response.json()
    assert status == 422
    assert (refusal["kind"], refusal["status"], refusal["reason"]) == (
        "Status",
        "Failure",
        "Invalid",
    )
    assert refusal["message"] == (
        'DocumentPipeline.docpipe.io "docs" is invalid: spec.scaling: Invalid value: "object": '
        "scaling.minReplicas must be <= scaling.maxReplicas"
    )
    assert refusal["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "object": '
            "scaling.minReplicas must be <= scaling.maxReplicas",
            "field": "spec.scaling",
        }
    ]
    assert pipeline(api) is None
    assert _deployment(api) is None


async def test_a_stored_spec_that_breaks_todays_rules_gives_a_condition_and_an_event(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    # As if stored before the CRD had the rule: the API server keeps it, the operator refuses it.
    body = pipeline_body(scaling={"minReplicas": 5, "maxReplicas": 2})
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body, validate=False)

    def ready_condition() -> dict | None:  # type: ignore[type-arg]
        for c in (pipeline(api) or {}).get("status", {}).get("conditions", []):
            if c["type"] == "Ready":
                return c  # type: ignore[no-any-return]
        return None

    condition = await eventually(ready_condition, what="the Ready condition")
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidSpec"
    assert "minReplicas must be <= scaling.maxReplicas" in condition["message"]
    events = await eventually(
        lambda: [e for e in api.list_objects("/v1/events") if e.get("reason") == "InvalidSpec"],
        what="an InvalidSpec Event",
    )
    assert events[0]["involvedObject"]["name"] == "docs"
    assert events[0]["type"] == "Warning"
    assert pipeline(api)["status"]["phase"] == "Degraded"  # type: ignore[index]
    assert _deployment(api) is None


async def test_deleting_a_pipeline_removes_its_children(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: api.read_object(PDBS, NAMESPACE, "docs-worker"), what="children")
    api.delete_object(DOCPIPE_RESOURCE, NAMESPACE, "docs")
    await eventually(lambda: pipeline(api) is None, what="the finalizer to be released")
    assert _deployment(api) is None
    assert api.read_object(SERVICES, NAMESPACE, "docs-worker-metrics") is None
    assert api.read_object(PDBS, NAMESPACE, "docs-worker") is None


async def test_an_operator_restart_creates_no_duplicates_and_keeps_the_children(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    before = await eventually(lambda: _deployment(api), what="the Deployment")
    await operator.restart()
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body("other"))
    await eventually(
        lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "other-worker"), what="a new pipeline"
    )
    after = _deployment(api)
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    names = sorted(d["metadata"]["name"] for d in api.list_objects(DEPLOYMENTS))
    assert names == ["docs-worker", "other-worker"]
