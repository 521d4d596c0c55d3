"""Rendering the chart and the kustomizations, and validating what they render."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv_utils  # type: ignore[import-untyped]

from tests.chart.binaries import ROOT

Manifest = dict[str, Any]

CHART = ROOT / "helm" / "docpipe"
RELEASE = "docpipe"
NAMESPACE = "docpipe-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest one that
# kubernetes-validate knows.
KUBERNETES_VERSIONS: tuple[str, str] = ("1.30.0", str(kv_utils.latest_version()))

# Kinds of custom resources: kubernetes-validate has no schema for them (it would print WARN).
# docpipe.io and kopf.dev objects are admitted against the CRDs the chart ships instead;
# the prometheus-operator's are checked by the monitoring tests.
CUSTOM_GROUPS = frozenset({"docpipe.io", "kopf.dev", "monitoring.coreos.com"})


def run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, raise with its output in the message."""
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


def helm_template_args(
    helm: str,
    *,
    value_files: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    include_crds: bool = False,
) -> list[str]:
    """The `helm template` command line for the test release."""
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    for path in value_files:
        args += ["--values", str(path)]
    for key, value in (settings or {}).items():
        # JSON keeps the types: `--set` would turn 0.25 into a string in helm 4.
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def load_manifests(text: str) -> list[Manifest]:
    """The objects of a multi-document YAML stream, empty documents left out."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_chart(
    helm: str,
    *,
    value_files: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    include_crds: bool = False,
) -> list[Manifest]:
    """The chart's objects for the given values."""
    args = helm_template_args(
        helm, value_files=value_files, settings=settings, include_crds=include_crds
    )
    return load_manifests(run(args).stdout)


def kustomize(kubectl: str, folder: Path) -> list[Manifest]:
    """The objects `kubectl kustomize FOLDER` builds."""
    return load_manifests(run([kubectl, "kustomize", str(folder)]).stdout)


def group_of(manifest: Manifest) -> str:
    api_version = str(manifest["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def split_custom(manifests: Iterable[Manifest]) -> tuple[list[Manifest], list[Manifest]]:
    """(built-in kinds, custom resources)."""
    core: list[Manifest] = []
    custom: list[Manifest] = []
    for manifest in manifests:
        (custom if group_of(manifest) in CUSTOM_GROUPS else core).append(manifest)
    return core, custom


def schema_problems(kubernetes_validate: str, manifests: Sequence[Manifest]) -> list[str]:
    """What `kubernetes-validate --strict` says of the objects, for each version; WARN counts."""
    if not manifests:
        return ["nothing to validate"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objects.yaml"
        path.write_text(yaml.safe_dump_all(manifests), encoding="utf-8")
        args = [kubernetes_validate, "--strict", "--quiet"]
        for version in KUBERNETES_VERSIONS:
            args += ["-k", version]
        done = run([*args, str(path)], check=False)
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.startswith(("ERROR", "WARN", "FATAL")) or "Traceback" in line
    ]
    if done.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {done.returncode}")
    return problems


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of `kind` (and `name`); fail if there is none or more than one."""
    matches = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(manifests: Iterable[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload among the objects."""
    specs = []
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            label = f"{manifest['kind']}/{manifest['metadata']['name']}"
            specs.append((label, manifest["spec"]["template"]["spec"]))
    return specs
