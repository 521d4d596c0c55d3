"""A real kubectl against the emulated API server: the example DocumentPipeline gets its worker
fleet, `get` shows the CRD's printer columns, `scale` and `delete` work as on a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from docpipe_operator.crd import build_crd
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "documentpipeline.yaml"


def _kubectl() -> str:
    local = ROOT / ".tools" / "bin" / "kubectl"
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: run scripts/fetch-k8s-tools (CI does) to put it in .tools/bin")
    return found


async def _run(*args: str, kubeconfig: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        _kubectl(),
        f"--kubeconfig={kubeconfig}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_kubectl_apply_of_the_example_pipeline_gets_a_worker_deployment(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    kubeconfig = api.kubeconfig
    assert kubeconfig is not None
    code, out = await _run(
        "apply", "--validate=false", "-n", NAMESPACE, "-f", str(EXAMPLE), kubeconfig=kubeconfig
    )
    assert code == 0, out
    assert "documentpipeline.docpipe.io/docs created" in out
    deployment = await eventually(
        lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker"), what="the Deployment"
    )
    example = yaml.safe_load(EXAMPLE.read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == example["spec"]["worker"]["image"]
    code, out = await _run(
        "get", "documentpipelines", "-n", NAMESPACE, "-o", "json", kubeconfig=kubeconfig
    )
    assert code == 0, out
    (item,) = json.loads(out)["items"]
    assert (
        item["status"]["selector"] == "app.kubernetes.io/component=worker,docpipe.io/pipeline=docs"
    )


async def test_kubectl_get_shows_the_printer_columns_of_the_crd(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    kubeconfig = api.kubeconfig
    assert kubeconfig is not None
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(
        lambda: (pipeline(api) or {}).get("status", {}).get("phase"), what="a status phase"
    )
    code, out = await _run("get", "documentpipelines", "-n", NAMESPACE, kubeconfig=kubeconfig)
    assert code == 0, out
    header, row = out.strip().splitlines()[-2:]
    columns = [c["name"].upper() for c in _printer_columns() if not c.get("priority")]
    assert header.split() == ["NAME", *columns]
    assert row.split()[0] == "docs"
    phase = (pipeline(api) or {})["status"]["phase"]
    assert phase in row.split()
    code, wide = await _run(
        "get", "documentpipelines", "-n", NAMESPACE, "-o", "wide", kubeconfig=kubeconfig
    )
    assert code == 0, wide
    every = [c["name"].upper() for c in _printer_columns()]
    assert wide.strip().splitlines()[-2].split() == ["NAME", *every]


async def test_kubectl_scale_pins_the_replicas_through_the_scale_subresource(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    kubeconfig = api.kubeconfig
    assert kubeconfig is not None
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker"), what="it")
    code, out = await _run(
        "scale", "-n", NAMESPACE, "documentpipeline/docs", "--replicas=3", kubeconfig=kubeconfig
    )
    assert code == 0, out
    assert (pipeline(api) or {})["spec"]["replicas"] == 3
    assert api.requests_by["patch documentpipelines/scale"] == 1
    code, out = await _run(
        "scale", "-n", NAMESPACE, "documentpipeline/docs", "--replicas=5000", kubeconfig=kubeconfig
    )
    assert code == 1
    assert 'The DocumentPipeline "docs" is invalid: spec.replicas: Invalid value: 5000' in out


async def test_kubectl_delete_waits_until_the_operator_releases_the_pipeline(
    api: KubernetesApi, operator: OperatorProcess
) -> None:
    kubeconfig = api.kubeconfig
    assert kubeconfig is not None
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body())
    await eventually(lambda: (pipeline(api) or {}).get("metadata", {}).get("finalizers"), what="f")
    code, out = await _run(
        "delete", "-n", NAMESPACE, "documentpipeline/docs", "--timeout=30s", kubeconfig=kubeconfig
    )
    assert code == 0, out
    assert 'documentpipeline.docpipe.io "docs" deleted' in out
    assert pipeline(api) is None
    assert api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker") is None


def _printer_columns() -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    return columns
