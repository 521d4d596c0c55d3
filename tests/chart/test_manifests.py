"""The kustomize manifests: they build, validate against Kubernetes 1.30 and the newest known
version, stay in step with the chart, and the example DocumentPipelines pass the CRD's schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.admission import admission_problems, crd_schemas
from tests.chart.binaries import ROOT
from tests.chart.rendering import (
    CHART,
    Manifest,
    find,
    kustomize,
    run,
    schema_problems,
    split_custom,
)

MANIFESTS = ROOT / "manifests"
EXAMPLES = MANIFESTS / "examples"
CRDS = sorted((CHART / "crds").glob("*.yaml"))
SYNC = ROOT / "scripts" / "sync-deploy-files"
FOLDERS = ["manifests", "manifests/examples", "manifests/monitoring"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_kustomization_builds_objects_that_validate_strictly(
    kubectl: str, kubernetes_validate: str, folder: str
) -> None:
    core, _ = split_custom(kustomize(kubectl, ROOT / folder))
    assert schema_problems(kubernetes_validate, core) == []


def test_base_installs_namespace_crds_rbac_and_operator(kubectl: str) -> None:
    objects = kustomize(kubectl, MANIFESTS)
    kinds = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in objects)
    assert kinds == [
        "ClusterKopfPeering/docpipe",
        "ClusterRole/docpipe-operator",
        "ClusterRoleBinding/docpipe-operator",
        "CustomResourceDefinition/clusterkopfpeerings.kopf.dev",
        "CustomResourceDefinition/documentpipelines.docpipe.io",
        "Deployment/docpipe-operator",
        "Namespace/docpipe-system",
        "ServiceAccount/docpipe-operator",
    ]


def example_pipelines() -> list[tuple[str, Manifest]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "DocumentPipeline":
                found.append((path.name, doc))
    return found


def docs_pipeline() -> Manifest:
    """The example pipeline of the kustomization: local parser, mock embedder, 1 to 5 workers."""
    return next(p for _, p in example_pipelines() if p["metadata"]["name"] == "docs")


def test_there_are_example_pipelines() -> None:
    assert len(example_pipelines()) >= 2


@pytest.mark.parametrize(
    ("path", "pipeline"), example_pipelines(), ids=[p for p, _ in example_pipelines()]
)
def test_example_pipeline_is_admitted_by_the_crd(path: str, pipeline: Manifest) -> None:
    schema = crd_schemas(*CRDS)[("docpipe.io/v1alpha1", "DocumentPipeline")]
    assert admission_problems(schema, pipeline) == []


BROKEN_PIPELINES: list[tuple[dict[str, Any], str]] = [
    ({"scaling": {"minReplicas": 0}}, "scaleToZero.enabled must be true exactly when"),
    ({"scaling": {"minReplicas": 6, "maxReplicas": 3}}, "minReplicas must be <= scaling.max"),
    ({"chunking": {"maxChars": 400, "overlapChars": 300}}, "overlapChars must be less than half"),
    ({"parser": {"kind": "llamaparse"}}, "parser.apiKeySecretRef is required"),
    ({"worker": {"concurrency": 0}}, "0 is less than the minimum of 1"),
    ({"worker": {"replica": 3}}, ".spec.worker.replica: unknown field"),
    ({"worker": {"extraEnv": [{"name": "DATABASE_URL", "value": "x"}]}}, "may not set"),
    ({"worker": {"image": "Not A Valid Image!!"}}, "worker.image must be an image reference"),
    ({"worker": {"podLabels": {"docpipe.io/pipeline": "x"}}}, "may not set the labels"),
    ({"worker": {"extraVolumes": [{"name": "x", "hostPath": {"path": "/"}}]}}, "unknown field"),
    ({"rollout": {"noTraffic": {"action": "Sometimes"}}}, "Sometimes"),
    (
        {"rollout": {"goldenSet": {"configMap": "a", "path": "/b"}}},
        "set configMap or path, exactly one",
    ),
]


def merged(base: Any, change: Any) -> Any:
    if isinstance(base, dict) and isinstance(change, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in change.items()}}
    return change


@pytest.mark.parametrize(
    ("change", "message"), BROKEN_PIPELINES, ids=[m for _, m in BROKEN_PIPELINES]
)
def test_admission_refuses_a_broken_pipeline_with_the_crds_message(
    change: dict[str, Any], message: str
) -> None:
    schema = crd_schemas(*CRDS)[("docpipe.io/v1alpha1", "DocumentPipeline")]
    pipeline = docs_pipeline()
    broken = {**pipeline, "spec": merged(pipeline["spec"], change)}
    problems = admission_problems(schema, broken)
    assert any(message in p for p in problems), problems


def test_admission_refuses_a_name_the_operator_cannot_use() -> None:
    schema = crd_schemas(*CRDS)[("docpipe.io/v1alpha1", "DocumentPipeline")]
    pipeline = docs_pipeline()
    renamed = {**pipeline, "metadata": {"name": "Docs"}}
    assert any("metadata.name must be" in p for p in admission_problems(schema, renamed))


def test_example_custom_resources_are_admitted_after_kustomize(kubectl: str) -> None:
    schemas = crd_schemas(*CRDS)
    _, custom = split_custom(kustomize(kubectl, EXAMPLES) + kustomize(kubectl, MANIFESTS))
    assert custom
    for manifest in custom:
        schema = schemas[(manifest["apiVersion"], manifest["kind"])]
        assert admission_problems(schema, manifest) == [], manifest["metadata"]["name"]


def test_copies_of_chart_and_crd_files_are_up_to_date(helm: str) -> None:
    done = run([sys.executable, str(SYNC), "--check", "--helm", helm], check=False)
    assert done.returncode == 0, done.stderr


def test_sync_check_notices_a_copy_that_drifted(helm: str, tmp_path: Path) -> None:
    for folder in ("crds", "helm", "manifests"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    copy = tmp_path / "manifests" / "monitoring" / "docpipe.json"
    copy.write_text(copy.read_text().replace('"docpipe"', '"docpipe (edited)"', 1))
    done = subprocess.run(
        [sys.executable, str(SYNC), "--check", "--root", str(tmp_path), "--helm", helm],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "manifests/monitoring/docpipe.json" in done.stderr


def without_chart_specifics(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod spec with what legitimately differs between chart and kustomize left out."""
    pod = yaml.safe_load(yaml.safe_dump(pod))
    pod.pop("serviceAccountName")
    for container in pod["containers"]:
        container.pop("image")
    return pod


def test_base_operator_runs_like_the_charts(
    kubectl: str, render: Callable[..., list[Manifest]]
) -> None:
    base = find(kustomize(kubectl, MANIFESTS), "Deployment", "docpipe-operator")
    chart = find(render(), "Deployment", "docpipe-operator")
    assert without_chart_specifics(base["spec"]["template"]["spec"]) == without_chart_specifics(
        chart["spec"]["template"]["spec"]
    )
    assert base["spec"]["replicas"] == chart["spec"]["replicas"]


def test_manifest_images_carry_the_chart_app_version(kubectl: str) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    objects = kustomize(kubectl, MANIFESTS) + kustomize(kubectl, EXAMPLES)
    images = [
        c["image"]
        for m in objects
        if m["kind"] in {"Deployment", "Job"}
        for c in m["spec"]["template"]["spec"]["containers"]
    ]
    images += [m["spec"]["worker"]["image"] for m in objects if m["kind"] == "DocumentPipeline"]
    docpipe_images = [i for i in images if i.startswith("docpipe-")]
    assert len(docpipe_images) == 4
    assert all(i.endswith(f":{app_version}") for i in docpipe_images), docpipe_images
