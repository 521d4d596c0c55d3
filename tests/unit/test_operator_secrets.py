"""The pure parts of Secret rotation and of the workers' database CA: which Secret keys a
pipeline's workers read, the versions of their values, the template annotations that roll the
workers, the CA mount, and the operator's settings for reading Secrets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator import cluster
from docpipe_operator.decision import (
    SECRET_UNREADABLE,
    Children,
    secret_warnings,
    secrets_hash_of,
)
from docpipe_operator.model import SecretKeyRef, parse_spec
from docpipe_operator.observation import (
    FORBIDDEN,
    FOUND,
    MISSING,
    MISSING_SECRET_TTL_SECONDS,
    UNKNOWN,
    SecretRead,
    key_version,
    key_versions,
    read_expiry,
    refresh_due,
    url_with_ca,
)
from docpipe_operator.rendering import (
    DATABASE_CA_PATH,
    LABEL_REVISION,
    SECRETS_HASH_ANNOTATION,
    SECRETS_VERSION_ANNOTATION,
    hash_secret_versions,
    referenced_secret_keys,
    render_canary_deployment,
    render_deployment,
    render_pod_template,
)
from docpipe_operator.runtime import SECRETS_ENV, SECRETS_REFRESH_ENV, secrets_policy

NAME = "docs"


def make_spec(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "worker": {"image": "docpipe:1"},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "embedder": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    return parse_spec(spec)


def _revision(template: dict[str, Any]) -> str:
    return str(template["metadata"]["labels"][LABEL_REVISION])


def _annotations(template: dict[str, Any]) -> dict[str, str]:
    return dict(template["metadata"].get("annotations") or {})


# ---- which Secret keys the workers read ----


def test_referenced_keys_are_every_secret_key_the_workers_read_once_each() -> None:
    spec = make_spec(
        database={"caSecretRef": {"name": "db-ca", "key": "ca.crt"}},
        parser={"kind": "llamaparse", "apiKeySecretRef": {"name": "openai", "key": "llama"}},
        worker={
            "extraEnv": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "extra", "key": "a"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "b"}}},
                {"name": "C", "value": "plain"},
                {"name": "D", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            ]
        },
    )
    assert [(r.name, r.key) for r in referenced_secret_keys(spec)] == [
        ("db", "url"),
        ("db-ca", "ca.crt"),
        ("extra", "a"),
        ("openai", "api-key"),
        ("openai", "llama"),
    ]


# ---- versions of the values ----


def _found(**data: str) -> SecretRead:
    return SecretRead(FOUND, expires=0.0, data=data)


def test_a_key_version_follows_its_value_and_nothing_else() -> None:
    before = key_version(_found(url="dXJs", other="MQ=="), "url")
    assert before == key_version(_found(url="dXJs", other="Mg=="), "url")
    assert before != key_version(_found(url="dXJsMg=="), "url")
    assert key_version(_found(other="MQ=="), "url") == "no-key"


def test_missing_and_forbidden_secrets_have_steady_versions_and_a_failed_read_none() -> None:
    assert key_version(SecretRead(MISSING, 0.0), "url") == "missing"
    assert key_version(SecretRead(FORBIDDEN, 0.0), "url") == SECRET_UNREADABLE
    assert key_version(SecretRead(UNKNOWN, 0.0), "url") is None
    assert key_version(None, "url") is None


def test_string_data_counts_where_an_api_returns_it() -> None:
    read = SecretRead(FOUND, 0.0, data={}, string_data={"url": "postgresql://x"})
    assert key_version(read, "url") not in (None, "no-key")


def test_key_versions_map_each_reference_to_its_secrets_read() -> None:
    refs = [SecretKeyRef(name="db", key="url"), SecretKeyRef(name="openai", key="k")]
    versions = key_versions({"db": _found(url="YQ=="), "openai": None}, refs)
    assert versions[("db", "url")] == key_version(_found(url="YQ=="), "url")
    assert versions[("openai", "k")] is None


def test_reads_go_stale_after_the_refresh_interval_and_misses_sooner() -> None:
    assert read_expiry(FOUND, 100.0, 60.0) == 160.0
    assert read_expiry(FORBIDDEN, 100.0, 60.0) == 160.0
    assert read_expiry(MISSING, 100.0, 60.0) == 100.0 + MISSING_SECRET_TTL_SECONDS
    assert read_expiry(UNKNOWN, 100.0, 5.0) == 105.0


@given(
    st.dictionaries(
        st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)),
        st.text(max_size=16),
        max_size=6,
    )
)
def test_the_hash_of_versions_ignores_their_order_and_sees_any_change(
    versions: dict[tuple[str, str], str],
) -> None:
    reordered = dict(reversed(list(versions.items())))
    assert hash_secret_versions(versions) == hash_secret_versions(reordered)
    for key in versions:
        changed = {**versions, key: versions[key] + "x"}
        assert hash_secret_versions(changed) != hash_secret_versions(versions)


# ---- the template annotations ----


def test_the_secrets_hash_is_an_annotation_that_makes_a_new_revision() -> None:
    spec = make_spec()
    plain = render_pod_template(NAME, spec)
    first = render_pod_template(NAME, spec, secrets_hash="aaa")
    second = render_pod_template(NAME, spec, secrets_hash="bbb")
    assert "annotations" not in plain["metadata"]
    assert _annotations(first) == {SECRETS_HASH_ANNOTATION: "aaa"}
    assert len({_revision(plain), _revision(first), _revision(second)}) == 3
    assert render_pod_template(NAME, spec, secrets_hash="aaa") == first


def test_secrets_version_of_the_spec_is_an_annotation_that_makes_a_new_revision() -> None:
    one = render_pod_template(NAME, make_spec(worker={"secretsVersion": "1"}))
    two = render_pod_template(NAME, make_spec(worker={"secretsVersion": "2"}))
    assert _annotations(one) == {SECRETS_VERSION_ANNOTATION: "1"}
    assert _revision(one) != _revision(two)


def test_stable_and_canary_deployments_carry_the_hash_they_are_given() -> None:
    spec = make_spec()
    stable = render_deployment(NAME, "ns", spec, replicas=2, secrets_hash="h1")
    canary = render_canary_deployment(
        NAME, "ns", spec, replicas=1, canary_weight=0.2, secrets_hash="h1"
    )
    assert _annotations(stable["spec"]["template"])[SECRETS_HASH_ANNOTATION] == "h1"
    assert _revision(canary["spec"]["template"]) == _revision(stable["spec"]["template"])


def _deployment_with_hash(name: str, value: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": {SECRETS_HASH_ANNOTATION: value}}}},
    }


def test_the_hash_holds_what_the_workers_run_while_a_version_is_unknown() -> None:
    stable = _deployment_with_hash("docs-worker", "running")
    canary = _deployment_with_hash("docs-worker-canary", "trying")
    known = {("db", "url"): "v1", ("openai", "k"): "v2"}
    unknown = {("db", "url"): "v1", ("openai", "k"): None}
    only_stable = Children({("Deployment", "docs-worker"): stable})
    both = Children(
        {("Deployment", "docs-worker"): stable, ("Deployment", "docs-worker-canary"): canary}
    )
    assert secrets_hash_of(known, only_stable, NAME) == hash_secret_versions(known)
    assert secrets_hash_of(unknown, only_stable, NAME) == "running"
    assert secrets_hash_of(unknown, both, NAME) == "trying"
    assert secrets_hash_of(unknown, Children(), NAME) is None
    assert secrets_hash_of(None, only_stable, NAME) is None


def test_only_unreadable_secrets_are_warned_of() -> None:
    assert secret_warnings(None) == []
    assert secret_warnings({("db", "url"): "missing", ("a", "k"): "v"}) == []
    (warning,) = secret_warnings(
        {("db", "url"): SECRET_UNREADABLE, ("db", "x"): SECRET_UNREADABLE, ("b", "k"): "v"}
    )
    assert "Secret(s) db:" in warning


# ---- the database CA ----


def test_a_database_ca_is_mounted_read_only_and_named_by_libpq_variables() -> None:
    spec = make_spec(database={"caSecretRef": {"name": "db-ca", "key": "ca.crt"}})
    template = render_pod_template(NAME, spec)
    pod = template["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGSSLROOTCERT"] == f"{DATABASE_CA_PATH}/ca.crt"
    assert env["PGSSLMODE"] == "verify-full"
    assert {"name": "postgres-ca", "mountPath": DATABASE_CA_PATH, "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {
        "name": "postgres-ca",
        "secret": {"secretName": "db-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]


def test_without_a_database_ca_nothing_is_mounted_and_extra_env_wins_with_one() -> None:
    template = render_pod_template(NAME, make_spec())
    names = {e["name"] for e in template["spec"]["containers"][0]["env"]}
    assert not names & {"PGSSLROOTCERT", "PGSSLMODE"}
    assert [v["name"] for v in template["spec"]["volumes"]] == ["tmp"]
    spec = make_spec(
        database={"caSecretRef": {"name": "db-ca", "key": "ca.crt"}},
        worker={"extraEnv": [{"name": "PGSSLMODE", "value": "verify-ca"}]},
    )
    env = render_pod_template(NAME, spec)["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "PGSSLMODE"] == ["verify-ca"]


# ---- the operator's settings and permissions ----


def test_secret_reads_are_granted_apart_from_the_rest() -> None:
    assert ("", "secrets") not in cluster.required_permissions()
    assert ("", "secrets") not in cluster.required_permissions(namespaced=True)
    assert cluster.required_permissions(secrets=True)[("", "secrets")] == frozenset({"get"})


def test_secrets_policy_comes_from_arguments_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    monkeypatch.delenv(SECRETS_REFRESH_ENV, raising=False)
    default = secrets_policy()
    assert default.read
    assert default.refresh_seconds == 60.0
    monkeypatch.setenv(SECRETS_ENV, "none")
    monkeypatch.setenv(SECRETS_REFRESH_ENV, "120")
    assert secrets_policy() == secrets_policy("none", 120.0)
    assert not secrets_policy().read
    assert secrets_policy("read").read


@pytest.mark.parametrize(
    ("mode", "refresh", "message"),
    [("all", None, "expected `read` or `none`"), ("read", 0.5, "expected 1 to 3600 seconds")],
)
def test_secrets_policy_refuses_what_it_cannot_use(
    mode: str, refresh: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        secrets_policy(mode, refresh)


def test_the_operator_verifies_the_database_with_the_pipelines_ca_unless_the_url_says() -> None:
    url = url_with_ca("postgresql://u@db:5432/docpipe?application_name=op", "/tmp/ca.crt")
    assert parse_qs(urlsplit(url).query) == {
        "application_name": ["op"],
        "sslrootcert": ["/tmp/ca.crt"],
        "sslmode": ["verify-full"],
    }
    own = url_with_ca("postgresql://u@db/d?sslmode=verify-ca&sslrootcert=/own.pem", "/tmp/ca.crt")
    assert parse_qs(urlsplit(own).query) == {"sslmode": ["verify-ca"], "sslrootcert": ["/own.pem"]}


def test_a_pipeline_reads_again_its_stalest_expired_secret_at_most_once_per_interval() -> None:
    reads = {
        "fresh": SecretRead(FOUND, expires=200.0),
        "old": SecretRead(FOUND, expires=90.0),
        "older": SecretRead(MISSING, expires=80.0),
        "never": None,
    }
    assert refresh_due(reads, None, 100.0, 60.0) == "older"
    assert refresh_due(reads, 50.0, 100.0, 60.0) is None  # one read again 50 s ago
    assert refresh_due(reads, 40.0, 100.0, 60.0) == "older"
    assert refresh_due({"fresh": reads["fresh"], "never": None}, None, 100.0, 60.0) is None
