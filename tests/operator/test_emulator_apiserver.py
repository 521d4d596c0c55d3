"""The emulated API server enforces and answers what a real one does for our objects, over HTTP:
CRD admission, fieldValidation, the scale subresource, Table output, canonical quantities, the
chart's minimum version, and deletion with propagation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline_body
from tests.support.emulator import (
    DEPLOYMENTS,
    DOCPIPE_RESOURCE,
    PODS,
    ApiFailureError,
    KubernetesApi,
    chart_minimum_version,
)
from tests.support.polling import eventually

PIPELINES = f"/apis/docpipe.io/v1alpha1/namespaces/{NAMESPACE}/documentpipelines"
DEPLOYMENTS_URL = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
CONFIGMAPS = "/v1/configmaps"


@pytest.fixture
async def http(api: KubernetesApi) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on the emulator's URL with the kubeconfig's token."""
    assert api.kubeconfig is not None
    config = yaml.safe_load(api.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=server, headers=headers) as session:
        yield session


def _deployment(cpu: Any, memory: Any) -> dict[str, Any]:
    container = {
        "name": "w",
        "image": "docpipe:1",
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": "1.5Gi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w", "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [container]}},
        },
    }


async def test_the_server_reports_the_charts_minimum_kubernetes_version(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/version") as response:
        version = await response.json()
    major, minor, _ = chart_minimum_version()
    assert (version["major"], version["minor"]) == (str(major), str(minor))
    assert version["gitVersion"].startswith(f"v{major}.{minor}.")


async def test_quantities_come_back_canonical_and_a_bad_one_is_a_bad_request(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(DEPLOYMENTS_URL, json=_deployment(0.5, "1024Mi")) as response:
        assert response.status == 201
        stored = await response.json()
    resources = stored["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "1536Mi"},
    }
    bad = _deployment("half", "1Gi")
    bad["metadata"]["name"] = "bad"
    async with http.post(DEPLOYMENTS_URL, json=bad) as response:
        assert response.status == 400
        refusal = await response.json()
    assert refusal["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: quantities must match the '
        "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )


def test_a_pod_written_by_a_test_is_stored_canonical_too(api: KubernetesApi) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1000m"}}}]},
    }
    stored = api.create_object(PODS, NAMESPACE, pod)
    assert stored["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"


async def test_a_deployment_scales_through_its_scale_subresource(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    api.create_object(DEPLOYMENTS, NAMESPACE, _deployment("1", "1Gi"))
    async with http.get(f"{DEPLOYMENTS_URL}/w/scale") as response:
        scale = await response.json()
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 0, "selector": "app=w"}
    patch = {"spec": {"replicas": 4}}
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(f"{DEPLOYMENTS_URL}/w/scale", json=patch, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["spec"] == {"replicas": 4}
    assert (api.read_object(DEPLOYMENTS, NAMESPACE, "w") or {})["spec"]["replicas"] == 4
    negative = {"spec": {"replicas": -1}}
    async with http.patch(f"{DEPLOYMENTS_URL}/w/scale", json=negative, headers=headers) as resp:
        assert resp.status == 422


async def test_a_pipelines_scale_reads_and_writes_the_crds_paths(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    selector = "app.kubernetes.io/component=worker,docpipe.io/pipeline=docs"

    def status(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "status": {"replicas": 2, "selector": selector}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", status, subresource="status")
    async with http.put(
        f"{PIPELINES}/docs/scale",
        json={"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 3}},
    ) as response:
        scale = await response.json()
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 2, "selector": selector}
    assert (api.read_object(DOCPIPE_RESOURCE, NAMESPACE, "docs") or {})["spec"]["replicas"] == 3


async def test_unknown_fields_are_refused_when_strict_and_pruned_with_a_warning_otherwise(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    body = pipeline_body()
    body["spec"]["workers"] = 3
    async with http.post(f"{PIPELINES}?fieldValidation=Strict", json=body) as response:
        assert response.status == 400
        refusal = await response.json()
    assert refusal["reason"] == "BadRequest"
    assert refusal["message"].endswith('strict decoding error: unknown field "spec.workers"')
    async with http.post(PIPELINES, json=body) as response:
        assert response.status == 201
        assert response.headers.getall("Warning") == ['299 - "unknown field \\"spec.workers\\""']
        stored = await response.json()
    assert "workers" not in stored["spec"]
    assert stored["spec"]["worker"]["concurrency"] == 2  # what was sent
    assert stored["spec"]["rollout"]["strategy"] == "Canary"  # a default


async def test_a_patch_that_breaks_the_schema_is_refused_and_changes_nothing(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    before = api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    patch = {"spec": {"worker": {"concurrency": 0, "imagePullPolicy": "Sometimes"}}}
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(f"{PIPELINES}/docs", json=patch, headers=headers) as response:
        assert response.status == 422
        refusal = await response.json()
    fields = sorted(c["field"] for c in refusal["details"]["causes"])
    assert fields == ["<nil>", "spec.worker.concurrency", "spec.worker.imagePullPolicy"]
    assert api.read_object(DOCPIPE_RESOURCE, NAMESPACE, "docs") == before


def test_a_test_can_store_an_object_that_predates_the_rules(api: KubernetesApi) -> None:
    body = pipeline_body(scaling={"minReplicas": 5, "maxReplicas": 2})
    with pytest.raises(ApiFailureError) as refused:
        api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    assert refused.value.code == 422
    stored = api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body, validate=False)
    assert stored["spec"]["scaling"]["minReplicas"] == 5


async def test_a_list_asked_as_a_table_carries_the_printer_columns(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    async with http.get(PIPELINES, headers={"Accept": TABLE}) as response:
        answer = await response.json()
    assert answer["kind"] == "Table"
    names = [c["name"] for c in answer["columnDefinitions"]]
    assert names[0] == "Name"
    assert "Age" in names
    assert answer["rows"][0]["cells"][0] == "docs"
    async with http.get(PIPELINES) as response:
        assert (await response.json())["kind"] == "DocumentPipelineList"


def _owned(api: KubernetesApi, owner: dict[str, Any], name: str, **meta: Any) -> None:
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"]}
    ref["uid"] = owner["metadata"]["uid"]
    body = {"metadata": {"name": name, "namespace": NAMESPACE, "ownerReferences": [ref], **meta}}
    api.create_object(CONFIGMAPS, NAMESPACE, body)


async def test_a_foreground_delete_waits_for_the_dependents_and_orphan_keeps_them(
    api: KubernetesApi, http: aiohttp.ClientSession
) -> None:
    owner = api.create_object(CONFIGMAPS, NAMESPACE, {"metadata": {"name": "owner"}})
    _owned(api, owner, "held", finalizers=["test/hold"])
    _owned(api, owner, "free")
    url = f"/api/v1/namespaces/{NAMESPACE}/configmaps/owner"
    async with http.delete(url, json={"propagationPolicy": "Foreground"}) as response:
        marked = await response.json()
    assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert marked["metadata"]["deletionTimestamp"]
    assert api.read_object(CONFIGMAPS, NAMESPACE, "free") is None
    assert api.read_object(CONFIGMAPS, NAMESPACE, "owner") is not None

    def release(o: dict[str, Any]) -> dict[str, Any]:
        o["metadata"]["finalizers"] = []
        return o

    api.update_object(CONFIGMAPS, NAMESPACE, "held", release)
    assert api.read_object(CONFIGMAPS, NAMESPACE, "held") is None
    assert api.read_object(CONFIGMAPS, NAMESPACE, "owner") is None

    second = api.create_object(CONFIGMAPS, NAMESPACE, {"metadata": {"name": "second"}})
    _owned(api, second, "kept")
    url = f"/api/v1/namespaces/{NAMESPACE}/configmaps/second?propagationPolicy=Orphan"
    async with http.delete(url) as response:
        assert response.status == 200
    kept = api.read_object(CONFIGMAPS, NAMESPACE, "kept")
    assert kept is not None
    assert "ownerReferences" not in kept["metadata"]


async def test_the_operator_writes_nothing_the_api_server_would_prune(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker"), what="it")
    await eventually(
        lambda: (
            (api.read_object(DOCPIPE_RESOURCE, NAMESPACE, "docs") or {})
            .get("status", {})
            .get("conditions")
        ),
        what="the status conditions",
    )
    assert api.requests_by["patch documentpipelines/status"] >= 1
    assert api.warnings == []  # every status field it wrote is in the CRD's schema
