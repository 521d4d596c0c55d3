"""The RBAC in the repository grants exactly the calls the operator's code makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from docpipe_operator import cluster

RBAC_PATH = Path(__file__).resolve().parents[2] / "manifests" / "base" / "rbac.yaml"
EXAMPLE_SECRETS_RBAC_PATH = (
    Path(__file__).resolve().parents[2] / "manifests" / "examples" / "operator-secrets-rbac.yaml"
)


def _granted() -> dict[tuple[str, str], frozenset[str]]:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(RBAC_PATH.read_text()) if d]
    roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(roles) == 1
    granted: dict[tuple[str, str], frozenset[str]] = {}
    for rule in roles[0]["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                granted[key] = granted.get(key, frozenset()) | frozenset(rule["verbs"])
    return granted


def test_cluster_role_grants_exactly_the_calls_the_code_makes() -> None:
    assert _granted() == cluster.required_permissions()


def test_cluster_role_grants_no_secret() -> None:
    assert not [key for key in _granted() if key[1] == "secrets"]


def test_the_example_namespace_role_grants_exactly_the_secret_reads_by_name() -> None:
    docs: list[dict[str, Any]] = [
        d for d in yaml.safe_load_all(EXAMPLE_SECRETS_RBAC_PATH.read_text()) if d
    ]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (rule,) = role["rules"]
    wanted = {(r.group, r.rbac_resource): v for r, v in cluster.SECRET_CALLS.items()}
    assert {
        (g, r): frozenset(rule["verbs"]) for g in rule["apiGroups"] for r in rule["resources"]
    } == wanted
    assert rule["resourceNames"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "docpipe-operator"


def test_the_code_never_lists_or_watches_secrets() -> None:
    tables = (
        cluster.OPERATOR_CALLS,
        cluster.SECRET_CALLS,
        cluster.FRAMEWORK_CALLS,
        cluster.NAMESPACED_FRAMEWORK_CALLS,
    )
    verbs = {v for table in tables for r, vs in table.items() if r == cluster.SECRETS for v in vs}
    assert verbs == {"get"}


def test_cluster_role_grants_no_wildcards() -> None:
    for (group, resource), verbs in _granted().items():
        assert "*" not in verbs, (group, resource)
        assert "*" not in (group, resource)


def test_binding_names_the_operator_service_account() -> None:
    docs = [d for d in yaml.safe_load_all(RBAC_PATH.read_text()) if d]
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert account["metadata"]["name"] == "docpipe-operator"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "docpipe-operator",
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert (
        binding["roleRef"]["name"]
        == next(d for d in docs if d["kind"] == "ClusterRole")["metadata"]["name"]
    )


async def test_client_refuses_a_call_the_table_does_not_list() -> None:
    client = cluster.KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9"))
    with pytest.raises(cluster.CallNotAllowedError, match="create secrets"):
        await client._call("create", cluster.SECRETS, namespace="default", body={})
    with pytest.raises(cluster.CallNotAllowedError, match="list secrets"):
        await client._call("list", cluster.SECRETS, namespace="default")
    await client.close()
