"""What a platform team needs of the chart: a peering object per release, a PodDisruptionBudget
and priority class for the operator, NetworkPolicies that let through exactly the traffic docpipe
needs, and CRDs that `helm upgrade` upgrades (a hook Job, switchable off)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from docpipe_operator import rendering as worker_rendering
from docpipe_operator.model import DocumentPipelineSpec
from docpipe_operator.runtime import PEERING_NAME_ENV, peering_name
from tests.chart.rendering import CHART, NAMESPACE, Manifest, find, helm_template_args, run

HERE = Path(__file__).resolve().parent
ALL_OPTIONS = str(HERE / "values-all-options.yaml")
DOCS = HERE.parents[1] / "docs" / "kubernetes.md"
CRD_FILES = sorted((CHART / "crds").glob("*.yaml"))
HOOK_ANNOTATIONS = {
    "helm.sh/hook": "pre-install,pre-upgrade",
    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
}


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def container(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return spec


# --- The peering object ----------------------------------------------------------------------


def render_release(helm: str, release: str, **settings: Any) -> list[Manifest]:
    args = helm_template_args(helm, settings=settings)
    args[2] = release  # helm template RELEASE CHART ...
    return [d for d in yaml.safe_load_all(run(args).stdout) if d]


def operator_peering_name(objects: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> str:
    """The peering the operator of these objects joins: its environment read by its runtime."""
    (operator,) = [
        m for m in of_kind(objects, "Deployment") if m["metadata"]["name"].endswith("-operator")
    ]
    monkeypatch.delenv(PEERING_NAME_ENV, raising=False)
    for variable in container(operator).get("env", []):
        monkeypatch.setenv(variable["name"], variable["value"])
    return peering_name()


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_two_releases_peer_in_different_objects_their_operators_join(
    helm: str, monkeypatch: pytest.MonkeyPatch, scope: str
) -> None:
    kind = "ClusterKopfPeering" if scope == "cluster" else "KopfPeering"
    names = []
    for release in ("docpipe-blue", "docpipe-green"):
        objects = render_release(helm, release, **{"rbac.scope": scope})
        (peering,) = of_kind(objects, kind)
        assert operator_peering_name(objects, monkeypatch) == peering["metadata"]["name"]
        names.append(peering["metadata"]["name"])
    assert names[0] != names[1]


def test_operator_without_the_variable_joins_the_default_peering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PEERING_NAME_ENV, raising=False)
    assert peering_name() == "docpipe"


# --- PodDisruptionBudget and priority class ------------------------------------------------


def test_no_operator_budget_or_priority_class_by_default(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render()
    assert of_kind(objects, "PodDisruptionBudget") == []
    assert "priorityClassName" not in find(objects, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("settings", "budget"),
    [
        ({}, {"maxUnavailable": 1}),
        ({"operator.podDisruptionBudget.maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
        ({"operator.podDisruptionBudget.minAvailable": 1}, {"minAvailable": 1}),
    ],
)
def test_operator_budget_covers_the_operator_pods(
    render: Callable[..., list[Manifest]], settings: dict[str, Any], budget: dict[str, Any]
) -> None:
    objects = render(**{"operator.podDisruptionBudget.enabled": True, **settings})
    pdb = find(objects, "PodDisruptionBudget")
    operator = find(objects, "Deployment", "docpipe-operator")
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"]["selector"] == operator["spec"]["selector"]
    assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == budget


def test_operator_runs_in_the_priority_class_given(render: Callable[..., list[Manifest]]) -> None:
    operator = find(render(ALL_OPTIONS), "Deployment", "docpipe-dp-operator")
    assert operator["spec"]["template"]["spec"]["priorityClassName"] == "docpipe-critical"


def test_schema_refuses_a_budget_that_is_not_a_count_or_percentage(helm: str) -> None:
    settings = {"operator.podDisruptionBudget.minAvailable": "half"}
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "/operator/podDisruptionBudget/minAvailable" in done.stderr


# --- NetworkPolicies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Address:
    ip: str


Endpoint = Pod | Address


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) matches the labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if isinstance(other, Address):
        if "ipBlock" not in peer:
            return False
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ipBlock" in peer:
        return False  # pod addresses are never in the blocks these tests use
    namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule: dict[str, Any], target: Endpoint, port: int, protocol: str) -> bool:
    if "ports" not in rule:
        return True
    for allowed in rule["ports"]:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        number = allowed.get("port")
        if isinstance(number, str):
            number = target.ports.get(number) if isinstance(target, Pod) else None
        if number is None or number == port:
            return True
    return False


def policy_allows(
    policies: list[Manifest], direction: str, subject: Pod, other: Endpoint, target: Endpoint,
    port: int, protocol: str,
) -> bool:  # fmt: skip
    """Whether the policies selecting `subject` let `other` through in `direction` (Ingress or
    Egress) to `target`'s port: true when none of them covers that direction."""
    covering = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and selects(p["spec"]["podSelector"], subject.labels)
        and direction in p["spec"]["policyTypes"]
    ]
    if not covering:
        return True
    peers_key = "from" if direction == "Ingress" else "to"
    for policy in covering:
        for rule in policy["spec"].get(direction.lower(), []):
            peers = rule.get(peers_key)
            if not port_matches(rule, target, port, protocol):
                continue
            namespace = policy["metadata"]["namespace"]
            if not peers or any(peer_matches(p, namespace, other) for p in peers):
                return True
    return False


def connects(
    policies: list[Manifest], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether a connection from `source` to `target`'s port gets through every policy."""
    out = not isinstance(source, Pod) or policy_allows(
        policies, "Egress", source, target, target, port, protocol
    )
    into = not isinstance(target, Pod) or policy_allows(
        policies, "Ingress", target, source, target, port, protocol
    )
    return out and into


def template_pod(manifest: Manifest, namespace: str = NAMESPACE) -> Pod:
    template = manifest["spec"].get("template", manifest)
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }
    return Pod(namespace, template["metadata"]["labels"], ports)


class Cluster:
    """The pods and addresses of the all-options release, with every policy on."""

    def __init__(self, objects: list[Manifest]) -> None:
        self.policies = of_kind(objects, "NetworkPolicy")
        self.operator = template_pod(find(objects, "Deployment", "docpipe-dp-operator"))
        self.api = template_pod(find(objects, "Deployment", "docpipe-dp-api"))
        self.mocks = template_pod(find(objects, "Deployment", "docpipe-dp-mocks"))
        self.verify = template_pod(find(objects, "Pod", "docpipe-dp-verify"))
        pipeline = find(objects, "DocumentPipeline")
        spec = DocumentPipelineSpec.model_validate(pipeline["spec"])
        worker = worker_rendering.render_pod_template(pipeline["metadata"]["name"], spec)
        self.worker_port = spec.worker.metrics_port
        self.worker = template_pod({"spec": {"template": worker}}, "team-a")
        self.unwatched_worker = template_pod({"spec": {"template": worker}}, "team-z")
        self.dns = Pod("kube-system", {"k8s-app": "kube-dns"})
        self.prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
        self.ingress = Pod("ingress-nginx", {"app": "ingress-nginx"})
        self.stranger = Pod("team-a", {"app": "curl"})
        self.apiserver = Address("172.18.0.2")
        self.database = Address("10.20.0.5")
        self.openai = Address("104.18.6.192")


@pytest.fixture
def cluster(render: Callable[..., list[Manifest]]) -> Cluster:
    return Cluster(render(ALL_OPTIONS))


def test_no_network_policies_by_default(render: Callable[..., list[Manifest]]) -> None:
    assert of_kind(render(), "NetworkPolicy") == []


def test_every_policy_covers_ingress_and_egress(cluster: Cluster) -> None:
    names = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in cluster.policies)
    assert names == sorted(
        [(NAMESPACE, f"docpipe-dp-{c}") for c in ("operator", "api", "mocks", "workers")]
        + [("team-a", "docpipe-dp-workers"), ("team-b", "docpipe-dp-workers")]
    )
    for policy in cluster.policies:
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_operator_reaches_dns_the_api_server_workers_and_the_database(cluster: Cluster) -> None:
    c = cluster
    assert connects(c.policies, c.operator, c.dns, 53, "UDP")
    assert connects(c.policies, c.operator, c.dns, 53, "TCP")
    assert connects(c.policies, c.operator, c.apiserver, 6443)
    assert connects(c.policies, c.operator, c.worker, c.worker_port)
    assert connects(c.policies, c.operator, c.database, 5432)
    # And nothing else: not the internet, not the API server outside its block, no ingress.
    assert not connects(c.policies, c.operator, c.openai, 443)
    assert not connects(c.policies, c.operator, Address("8.8.8.8"), 6443)
    assert not connects(c.policies, c.operator, c.worker, 22)
    assert not connects(c.policies, c.stranger, c.operator, 8081)


def test_workers_are_scraped_only_by_the_operator_and_prometheus(cluster: Cluster) -> None:
    c = cluster
    assert connects(c.policies, c.prometheus, c.worker, c.worker_port)
    assert not connects(c.policies, c.stranger, c.worker, c.worker_port)
    assert not connects(c.policies, c.api, c.worker, c.worker_port)


def test_workers_reach_dns_the_database_the_apis_and_the_mocks(cluster: Cluster) -> None:
    c = cluster
    assert connects(c.policies, c.worker, c.dns, 53, "UDP")
    assert connects(c.policies, c.worker, c.database, 5432)
    assert connects(c.policies, c.worker, c.openai, 443)
    assert connects(c.policies, c.worker, c.mocks, c.mocks.ports["http"])
    assert not connects(c.policies, c.worker, c.apiserver, 6443)
    assert not connects(c.policies, c.worker, c.stranger, 80)
    assert not connects(c.policies, c.worker, c.api, c.api.ports["http"])


def test_workers_of_an_unlisted_namespace_are_left_alone(cluster: Cluster) -> None:
    c = cluster
    assert connects(c.policies, c.stranger, c.unwatched_worker, c.worker_port)


def test_api_takes_calls_only_from_the_peers_given_and_the_test_pod(cluster: Cluster) -> None:
    c = cluster
    port = c.api.ports["http"]
    assert connects(c.policies, c.ingress, c.api, port)
    assert connects(c.policies, c.verify, c.api, port)
    assert connects(c.policies, c.prometheus, c.api, port)
    assert not connects(c.policies, c.stranger, c.api, port)
    assert connects(c.policies, c.api, c.database, 5432)
    assert connects(c.policies, c.api, c.mocks, c.mocks.ports["http"])
    assert not connects(c.policies, c.api, c.apiserver, 6443)


def test_mocks_serve_workers_and_api_and_call_nothing(cluster: Cluster) -> None:
    c = cluster
    port = c.mocks.ports["http"]
    assert connects(c.policies, c.worker, c.mocks, port)
    assert connects(c.policies, c.api, c.mocks, port)
    assert not connects(c.policies, c.stranger, c.mocks, port)
    assert not connects(c.policies, c.mocks, c.openai, 443)
    assert not connects(c.policies, c.mocks, c.dns, 53, "UDP")


def test_default_destinations_are_any_address_on_their_ports(
    render: Callable[..., list[Manifest]],
) -> None:
    on = {f"networkPolicy.{c}.enabled": True for c in ("operator", "workers", "api", "mocks")}
    objects = render(
        **on,
        **{"api.enabled": True, "api.databaseUrlSecretRef.name": "db"},
        **{"api.jwtSecretRef.name": "jwt", "api.openaiApiKeySecretRef.name": "oa"},
    )
    policies = of_kind(objects, "NetworkPolicy")
    operator = template_pod(find(objects, "Deployment", "docpipe-operator"))
    api = template_pod(find(objects, "Deployment", "docpipe-api"))
    # No mocks rendered: no policy for them.
    assert {p["metadata"]["name"] for p in policies} == {
        "docpipe-operator",
        "docpipe-api",
        "docpipe-workers",
    }
    for port in (443, 6443):
        assert connects(policies, operator, Address("203.0.113.7"), port)
    assert connects(policies, api, Address("203.0.113.7"), 443)  # the OpenAI API
    assert connects(policies, Pod("anywhere", {}), api, api.ports["http"])
    (workers,) = [p for p in policies if p["metadata"]["name"] == "docpipe-workers"]
    assert workers["metadata"]["namespace"] == NAMESPACE


def test_workers_policy_goes_to_the_namespaces_named(render: Callable[..., list[Manifest]]) -> None:
    objects = render(
        **{"networkPolicy.workers.enabled": True, "networkPolicy.workers.namespaces": ["x", "y"]}
    )
    assert sorted(p["metadata"]["namespace"] for p in of_kind(objects, "NetworkPolicy")) == [
        "x",
        "y",
    ]


def test_workers_policy_selects_the_pods_the_operator_renders(cluster: Cluster) -> None:
    (workers,) = [
        p
        for p in cluster.policies
        if p["metadata"]["name"].endswith("-workers") and p["metadata"]["namespace"] == "team-a"
    ]
    assert selects(workers["spec"]["podSelector"], cluster.worker.labels)
    assert worker_rendering.METRICS_PORT_NAME in cluster.worker.ports
    assert not selects(workers["spec"]["podSelector"], cluster.mocks.labels)


# --- The CRD upgrade hook ----------------------------------------------------------------------


def hook_objects(objects: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in objects
        if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "crds"
    ]


def test_crds_are_applied_by_a_hook_before_install_and_upgrade(
    render: Callable[..., list[Manifest]],
) -> None:
    hooks = hook_objects(render())
    assert sorted(m["kind"] for m in hooks) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Job",
        "ServiceAccount",
    ]
    for manifest in hooks:
        annotations = manifest["metadata"]["annotations"]
        assert annotations.items() >= HOOK_ANNOTATIONS.items(), manifest["kind"]
    # What the Job needs exists before it: Helm creates hooks in order of weight.
    weights = {m["kind"]: int(m["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in hooks}
    assert all(weights[k] < weights["Job"] for k in weights if k != "Job")


def test_hook_config_map_holds_the_crds_the_chart_ships(
    render: Callable[..., list[Manifest]],
) -> None:
    config_map = find(hook_objects(render()), "ConfigMap")
    assert sorted(config_map["data"]) == [p.name for p in CRD_FILES]
    for path in CRD_FILES:
        assert config_map["data"][path.name] == path.read_text().rstrip("\n")
    assert len(yaml.safe_dump(config_map).encode()) < 1024 * 1024  # a ConfigMap's limit


def test_hook_job_server_side_applies_every_crd_file(
    render: Callable[..., list[Manifest]], kubectl: str
) -> None:
    hooks = hook_objects(render())
    job = find(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (apply,) = pod["containers"]
    assert apply["command"] == ["kubectl"]
    args = apply["args"]
    assert args[0] == "apply"
    assert {"--server-side", "--force-conflicts"} <= set(args)
    mounts = {m["name"]: m["mountPath"] for m in apply["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    crds = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[crds]["configMap"]["name"] == find(hooks, "ConfigMap")["metadata"]["name"]
    files = [a.removeprefix("--filename=") for a in args if a.startswith("--filename=")]
    assert files == [f"{mounts[crds]}/{p.name}" for p in CRD_FILES]
    # Every flag is one the kubectl the project ships knows.
    known = run([kubectl, "apply", "--help"]).stdout
    for flag in args[1:]:
        assert flag.split("=")[0] + "=" in known or flag.split("=")[0] + ":" in known, flag
    # Its account is the hook's, with a token to call the API server.
    assert pod["serviceAccountName"] == find(hooks, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True


def test_hook_may_only_write_the_charts_crds(render: Callable[..., list[Manifest]]) -> None:
    hooks = hook_objects(render())
    role = find(hooks, "ClusterRole")
    names = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRD_FILES)
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["apiextensions.k8s.io"]
        assert rule["resources"] == ["customresourcedefinitions"]
        # RBAC cannot limit create by name; every other verb is limited to the chart's CRDs.
        if rule["verbs"] != ["create"]:
            assert sorted(rule["resourceNames"]) == names
            assert set(rule["verbs"]) <= {"get", "patch"}
    binding = find(hooks, "ClusterRoleBinding")
    account = find(hooks, "ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


@pytest.mark.parametrize("setting", ["crds.upgradeHook", "rbac.create"])
def test_hook_is_switched_off_with_upgrade_hook_or_rbac_false(
    render: Callable[..., list[Manifest]], setting: str
) -> None:
    assert hook_objects(render(**{setting: False})) == []


def test_docs_explain_each_new_option() -> None:
    text = DOCS.read_text()
    for option in (
        "crds.upgradeHook",
        "operator.podDisruptionBudget",
        "operator.priorityClassName",
        "networkPolicy.operator",
        "networkPolicy.workers",
        "networkPolicy.api",
        "networkPolicy.mocks",
        "networkPolicy.metricsFrom",
        "DOCPIPE_PEERING_NAME",
        "pod-security.kubernetes.io/enforce",
    ):
        assert option in text, option
