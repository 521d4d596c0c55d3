"""The example DocumentPipeline, applied with a real kubectl, gets its worker fleet."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import NAMESPACE, OperatorProcess
from tests.support.emulator import DEPLOYMENTS, KubernetesApi
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
