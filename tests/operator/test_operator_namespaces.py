"""`docpipe operator --namespace=NS`: the operator serves only the namespaces it is given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from docpipe_operator import cluster
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.polling import eventually
from tests.support.ports import free_port

OTHER = "elsewhere"


@pytest.fixture
async def namespaced_operator(api: KubernetesApi) -> AsyncIterator[OperatorProcess]:
    """The operator serving only NAMESPACE, peering in a KopfPeering there, as the chart sets up."""
    api.create_object("/v1/namespaces", None, {"metadata": {"name": OTHER}})
    # Only the namespaced peering object: a namespaced operator that looked for the cluster-wide
    # one would find it missing and pause.
    api.delete_object("kopf.dev/v1/clusterkopfpeerings", None, "docpipe")
    api.create_object("kopf.dev/v1/kopfpeerings", NAMESPACE, {"metadata": {"name": "docpipe"}})
    process = OperatorProcess(
        liveness_url=f"http://127.0.0.1:{free_port()}/healthz", namespaces=(NAMESPACE,)
    )
    await process.start()
    try:
        yield process
    finally:
        await process.halt()


def _in(namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    body = pipeline_body(name)
    body["metadata"]["namespace"] = namespace
    return body


async def test_a_namespaced_operator_ignores_pipelines_in_other_namespaces(
    api: KubernetesApi, namespaced_operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, OTHER, _in(OTHER, "ignored"))
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _in(NAMESPACE, "served"))

    await eventually(
        lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "served-worker"), what="the Deployment"
    )
    # The watched pipeline has been handled; give the other one as long again.
    await asyncio.sleep(2)
    assert api.read_object(DEPLOYMENTS, OTHER, "ignored-worker") is None
    ignored = api.read_object(DOCPIPE_RESOURCE, OTHER, "ignored")
    assert ignored is not None
    assert "finalizers" not in ignored["metadata"]
    assert "status" not in ignored


async def test_a_namespaced_operator_keeps_its_heartbeat_in_the_namespaced_peering(
    api: KubernetesApi, namespaced_operator: OperatorProcess
) -> None:
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _in(NAMESPACE, "served"))
    await eventually(
        lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "served-worker"), what="the Deployment"
    )
    await asyncio.sleep(1)

    # Namespaced RBAC (the chart's rbac.scope: namespaced) grants kopfpeerings per namespace and
    # no clusterkopfpeerings: Kopf's peering must keep to the namespace's KopfPeering.
    assert ("kopf.dev", "clusterkopfpeerings") not in cluster.required_permissions(namespaced=True)
    assert api.read_object("kopf.dev/v1/clusterkopfpeerings", None, "docpipe") is None
    peering = api.read_object("kopf.dev/v1/kopfpeerings", NAMESPACE, "docpipe")
    assert peering is not None
    assert peering.get("status"), "the operator keeps its heartbeat in the namespaced peering"
