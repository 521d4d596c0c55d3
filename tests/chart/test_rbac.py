"""The chart's RBAC grants exactly what the operator calls, in both scopes, and binds it to the
operator's account: in cluster scope what manifests/base/rbac.yaml grants (which a unit test holds
to the calls of the operator's code); in namespaced scope what the code calls when it serves only
some namespaces, in each of them. Secrets apart: get only, in the pipelines' namespaces (a Role
each, optionally by name), cluster-wide only when asked, or not at all."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import yaml

from docpipe_operator import cluster as operator_cluster
from tests.chart.binaries import ROOT
from tests.chart.rendering import Manifest, find, helm_template_args, kustomize, run

RBAC_YAML = ROOT / "manifests" / "base" / "rbac.yaml"
Grants = dict[tuple[str, str], frozenset[str]]


def grants(roles: Iterable[Manifest]) -> Grants:
    """{(apiGroup, resource): verbs} that the roles' rules add up to."""
    granted: Grants = {}
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    key = (group, resource)
                    granted[key] = granted.get(key, frozenset()) | frozenset(rule["verbs"])
    return granted


def reference_grants() -> Grants:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    return grants(d for d in docs if d["kind"] == "ClusterRole")


def roles_of(manifests: list[Manifest], kind: str) -> list[Manifest]:
    """The operator's objects of `kind`: Helm hooks (the CRD upgrade Job's account and role, whose
    grants tests/chart/test_platform.py checks) and the Secret-reading Roles and bindings (see
    `secret_roles`) are left out."""
    return [
        m
        for m in manifests
        if m["kind"] == kind
        and "helm.sh/hook" not in m["metadata"].get("annotations", {})
        and not m["metadata"]["name"].endswith(SECRETS_SUFFIX)
    ]


SECRETS_SUFFIX = "-secrets"
SECRET_GRANTS: Grants = {
    (r.group, r.rbac_resource): verbs for r, verbs in operator_cluster.SECRET_CALLS.items()
}


def secret_roles(manifests: list[Manifest], kind: str = "Role") -> list[Manifest]:
    """The operator's Roles (or RoleBindings) that grant reading the pipelines' Secrets."""
    return [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(SECRETS_SUFFIX)
    ]


def secret_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    """Every rule, of any role the chart renders, that names Secrets."""
    return [
        rule
        for m in manifests
        if m["kind"] in ("Role", "ClusterRole")
        for rule in m["rules"]
        if "secrets" in rule["resources"] or "*" in rule["resources"]
    ]


def test_reference_rbac_grants_something() -> None:
    assert ("docpipe.io", "documentpipelines") in reference_grants()


def test_cluster_scope_grants_exactly_the_reference_rules(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render()
    assert roles_of(objects, "Role") == []
    assert grants(roles_of(objects, "ClusterRole")) == reference_grants()
    assert ("", "secrets") not in reference_grants()


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]])
def test_namespaced_scope_grants_exactly_the_namespaced_calls_in_each_namespace(
    render: Callable[..., list[Manifest]], namespaces: list[str]
) -> None:
    objects = render(**{"rbac.scope": "namespaced", "rbac.watchNamespaces": namespaces})
    expected_namespaces = namespaces or ["docpipe-system"]
    roles = roles_of(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(expected_namespaces)
    # Nothing cluster-wide: the operator then calls nothing without a namespace.
    assert roles_of(objects, "ClusterRole") == []
    assert roles_of(objects, "ClusterRoleBinding") == []
    for role in roles:
        assert grants([role]) == operator_cluster.required_permissions(namespaced=True)
    bindings = roles_of(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(expected_namespaces)


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]])
def test_namespaced_scope_peers_in_each_namespace_the_operator_is_told_to_watch(
    render: Callable[..., list[Manifest]], namespaces: list[str]
) -> None:
    objects = render(**{"rbac.scope": "namespaced", "rbac.watchNamespaces": namespaces})
    expected_namespaces = namespaces or ["docpipe-system"]
    peerings = roles_of(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(expected_namespaces)
    assert {p["metadata"]["name"] for p in peerings} == {"docpipe"}
    assert roles_of(objects, "ClusterKopfPeering") == []
    operator = find(objects, "Deployment", "docpipe-operator")
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    watched = [a.removeprefix("--namespace=") for a in args if a.startswith("--namespace=")]
    assert sorted(watched) == sorted(expected_namespaces)
    # The operator's own parser takes them.
    from docpipe_cli.main import build_argument_parser

    parsed = build_argument_parser().parse_args(["operator", *args])
    assert sorted(parsed.namespace) == sorted(expected_namespaces)


def test_cluster_scope_peers_cluster_wide_and_names_no_namespace(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render()
    assert [p["metadata"]["name"] for p in roles_of(objects, "ClusterKopfPeering")] == ["docpipe"]
    assert roles_of(objects, "KopfPeering") == []
    operator = find(objects, "Deployment", "docpipe-operator")
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")]


@pytest.mark.parametrize(
    ("settings", "expected_namespaces"),
    [
        ({}, ["docpipe-system"]),
        ({"rbac.secrets.namespaces": ["team-a", "team-b"]}, ["team-a", "team-b"]),
        ({"rbac.scope": "namespaced", "rbac.watchNamespaces": ["w1", "w2"]}, ["w1", "w2"]),
    ],
)
def test_secrets_are_readable_by_name_only_in_the_pipelines_namespaces(
    render: Callable[..., list[Manifest]],
    settings: dict[str, Any],
    expected_namespaces: list[str],
) -> None:
    objects = render(**settings)
    roles = secret_roles(objects)
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(expected_namespaces)
    for role in roles:
        assert grants([role]) == SECRET_GRANTS
        assert grants([role]) == {("", "secrets"): frozenset({"get"})}
        assert all("resourceNames" not in rule for rule in role["rules"])
    bindings = secret_roles(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(expected_namespaces)
    for binding in bindings:
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
    # Nothing else names Secrets, and no ClusterRole does.
    assert len(secret_rules(objects)) == len(roles)
    assert all(("", "secrets") not in grants([r]) for r in roles_of(objects, "ClusterRole"))


def test_secret_roles_can_be_limited_to_named_secrets(
    render: Callable[..., list[Manifest]],
) -> None:
    (role,) = secret_roles(render(**{"rbac.secrets.names": ["docpipe-db", "model-apis"]}))
    (rule,) = role["rules"]
    assert rule["resourceNames"] == ["docpipe-db", "model-apis"]
    assert rule["verbs"] == ["get"]


def test_cluster_wide_secret_access_is_one_get_rule_of_the_cluster_role(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render(**{"rbac.secrets.access": "cluster"})
    assert secret_roles(objects) == []
    (role,) = roles_of(objects, "ClusterRole")
    assert grants([role]) == {**reference_grants(), **SECRET_GRANTS}


def test_without_secret_access_nothing_grants_secrets_and_the_operator_reads_none(
    render: Callable[..., list[Manifest]],
) -> None:
    objects = render(**{"rbac.secrets.access": "none"})
    assert secret_rules(objects) == []
    assert secret_roles(objects, "RoleBinding") == []
    operator = find(objects, "Deployment", "docpipe-operator")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DOCPIPE_SECRETS"] == "none"
    from docpipe_operator.runtime import secrets_policy

    assert not secrets_policy(env["DOCPIPE_SECRETS"]).read


@pytest.mark.parametrize("access", ["namespaces", "cluster", "none"])
def test_no_rendering_lists_or_watches_secrets(
    render: Callable[..., list[Manifest]], access: str
) -> None:
    for rule in secret_rules(render(**{"rbac.secrets.access": access})):
        assert rule["verbs"] == ["get"]


def test_cluster_wide_secret_access_is_refused_to_a_namespaced_operator(helm: str) -> None:
    settings = {"rbac.scope": "namespaced", "rbac.secrets.access": "cluster"}
    done = run(helm_template_args(helm, settings=settings), check=False)
    assert done.returncode != 0
    assert "rbac.secrets.access cluster needs rbac.scope cluster" in done.stderr


def test_a_missing_rule_would_be_noticed(render: Callable[..., list[Manifest]]) -> None:
    (role,) = roles_of(render(), "ClusterRole")
    trimmed = {**role, "rules": role["rules"][1:]}
    assert grants([trimmed]) != reference_grants()


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_bindings_name_the_operator_service_account(
    render: Callable[..., list[Manifest]], scope: str
) -> None:
    objects = render(**{"rbac.scope": scope})
    (account_object,) = roles_of(objects, "ServiceAccount")
    account = account_object["metadata"]
    operator = find(objects, "Deployment", "docpipe-operator")
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]
    for binding in roles_of(objects, "ClusterRoleBinding") + roles_of(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
        role_kind = binding["roleRef"]["kind"]
        namespace = binding["metadata"].get("namespace")
        assert any(
            r["metadata"]["name"] == binding["roleRef"]["name"]
            and r["metadata"].get("namespace") == namespace
            for r in roles_of(objects, role_kind)
        )


def test_no_rbac_objects_when_rbac_is_off(render: Callable[..., list[Manifest]]) -> None:
    kinds = {m["kind"] for m in render(**{"rbac.create": False})}
    assert kinds.isdisjoint({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})


def test_kustomize_base_binds_the_rbac_to_the_operator_deployment_account(kubectl: str) -> None:
    objects = kustomize(kubectl, ROOT / "manifests")
    operator = find(objects, "Deployment", "docpipe-operator")
    account = operator["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = operator["metadata"]["namespace"]
    assert find(objects, "ServiceAccount", account)["metadata"]["namespace"] == namespace
    binding = find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    ]
    assert grants(roles_of(objects, "ClusterRole")) == reference_grants()
