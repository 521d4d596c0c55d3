"""Every pod the chart renders meets the Pod Security Standards' "restricted" profile, so the chart
installs into a namespace labelled `pod-security.kubernetes.io/enforce: restricted`; and the
checker (tests/chart/pod_security.py) refuses what that profile refuses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from docpipe_operator import rendering as worker_rendering
from docpipe_operator.model import DocumentPipelineSpec
from tests.chart.binaries import ROOT
from tests.chart.pod_security import pod_templates, restricted_violations
from tests.chart.rendering import Manifest, find

ALL_OPTIONS = str(Path(__file__).resolve().parent / "values-all-options.yaml")
VALUE_SETS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "default": ((), {}),
    "all-options": ((ALL_OPTIONS,), {}),
}
# The pod templates each value set renders (kind/name), so that none is left out unchecked.
EXPECTED = {
    "default": {"Deployment/docpipe-operator", "Job/docpipe-crds"},
    "all-options": {
        "Deployment/docpipe-dp-operator",
        "Deployment/docpipe-dp-api",
        "Deployment/docpipe-dp-mocks",
        "Job/docpipe-dp-migrate",
        "Job/docpipe-dp-crds",
        "Pod/docpipe-dp-verify",
    },
}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_pod_the_chart_renders_meets_the_restricted_profile(
    render: Callable[..., list[Manifest]], value_set: str
) -> None:
    files, settings = VALUE_SETS[value_set]
    templates = pod_templates(render(*files, **settings))
    assert {where for where, _ in templates} == EXPECTED[value_set]
    problems = {where: restricted_violations(t) for where, t in templates}
    assert {where: found for where, found in problems.items() if found} == {}


def test_worker_pods_the_operator_renders_meet_the_restricted_profile(
    render: Callable[..., list[Manifest]],
) -> None:
    pipeline = find(render(ALL_OPTIONS), "DocumentPipeline")
    spec = DocumentPipelineSpec.model_validate(pipeline["spec"])
    template = worker_rendering.render_pod_template(pipeline["metadata"]["name"], spec)
    assert restricted_violations(template) == []


def test_worker_pods_with_placement_and_extra_volumes_meet_the_restricted_profile() -> None:
    # Every volume source spec.worker.extraVolumes admits is one the profile allows.
    example = yaml.safe_load(
        (ROOT / "manifests" / "examples" / "documentpipeline-placement.yaml").read_text()
    )
    spec = DocumentPipelineSpec.model_validate(example["spec"])
    template = worker_rendering.render_pod_template(example["metadata"]["name"], spec)
    assert len(template["spec"]["volumes"]) > 1
    assert restricted_violations(template) == []


def compliant() -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def changed(path: str, value: Any) -> dict[str, Any]:
    """The compliant pod with `value` at a dotted `path` (numbers index lists)."""
    pod = compliant()
    *parents, last = path.split(".")
    node: Any = pod
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return pod


def test_the_compliant_pod_passes() -> None:
    assert restricted_violations(compliant()) == []


CONTAINER = "spec.containers.0.securityContext"
VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("host network", changed("spec.hostNetwork", True), "hostNetwork"),
    ("host PID", changed("spec.hostPID", True), "hostPID"),
    ("host IPC", changed("spec.hostIPC", True), "hostIPC"),
    ("privileged", changed(f"{CONTAINER}.privileged", True), "privileged"),
    (
        "escalation",
        changed(f"{CONTAINER}.allowPrivilegeEscalation", True),
        "allowPrivilegeEscalation",
    ),
    (
        "escalation unset",
        changed(f"{CONTAINER}.allowPrivilegeEscalation", None),
        "allowPrivilegeEscalation",
    ),
    ("capability kept", changed(f"{CONTAINER}.capabilities", {"drop": ["NET_RAW"]}), "lacks ALL"),
    (
        "capability added",
        changed(f"{CONTAINER}.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
        "SYS_ADMIN",
    ),
    ("root allowed", changed("spec.securityContext.runAsNonRoot", None), "runAsNonRoot"),
    ("root in container", changed(f"{CONTAINER}.runAsNonRoot", False), "runAsNonRoot"),
    ("uid 0", changed(f"{CONTAINER}.runAsUser", 0), "runAsUser 0"),
    ("no seccomp", changed("spec.securityContext.seccompProfile", None), "seccompProfile"),
    (
        "unconfined seccomp",
        changed(f"{CONTAINER}.seccompProfile", {"type": "Unconfined"}),
        "Unconfined",
    ),
    (
        "host path",
        changed("spec.volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
        "hostPath",
    ),
    ("nfs", changed("spec.volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}]), "nfs"),
    (
        "host port",
        changed("spec.containers.0.ports", [{"containerPort": 80, "hostPort": 80}]),
        "hostPort",
    ),
    ("proc mount", changed(f"{CONTAINER}.procMount", "Unmasked"), "procMount"),
    (
        "unsafe sysctl",
        changed("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
        "kernel.msgmax",
    ),
    (
        "selinux type",
        changed(f"{CONTAINER}.seLinuxOptions", {"type": "spc_t"}),
        "seLinuxOptions.type",
    ),
    (
        "apparmor annotation",
        changed(
            "metadata.annotations",
            {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"},
        ),
        "apparmor",
    ),
    (
        "apparmor field",
        changed(f"{CONTAINER}.appArmorProfile", {"type": "Unconfined"}),
        "appArmorProfile",
    ),
    (
        "host process",
        changed("spec.securityContext.windowsOptions", {"hostProcess": True}),
        "hostProcess",
    ),
]


@pytest.mark.parametrize(
    ("pod", "message"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_the_checker_refuses_what_the_restricted_profile_refuses(
    pod: dict[str, Any], message: str
) -> None:
    found = restricted_violations(pod)
    assert found
    assert any(message in problem for problem in found), found


def test_init_containers_are_checked_too() -> None:
    pod = compliant()
    init = copy.deepcopy(pod["spec"]["containers"][0])
    init["securityContext"] = {}
    pod["spec"]["initContainers"] = [init]
    assert any(p.startswith("initContainers[c]") for p in restricted_violations(pod))
