"""Secrets the chart hands its pods as files, so that a rotated Secret takes effect without a
restart: the API's HS256 key (which `docpipe api` reloads), and the database CA, which the chart
mounts in its own pods and passes to the example pipeline, whose workers the operator renders with
it mounted; and the operator's settings for reading the pipelines' Secrets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docpipe_operator import rendering as worker_rendering
from docpipe_operator.model import DocumentPipelineSpec
from docpipe_operator.runtime import secrets_policy
from tests.chart.rendering import Manifest, find

ALL_OPTIONS = str(Path(__file__).resolve().parent / "values-all-options.yaml")
HS256 = {
    "api.enabled": True,
    "api.databaseUrlSecretRef.name": "db",
    "api.jwtSecretRef.name": "jwt",
    "api.jwtSecretRef.key": "hs256",
    "api.useMocks": True,
    "mocks.enabled": True,
}
# A stand-in for the key: long enough for HS256, not the development secret.
KEY_STAND_IN = "chart-test-jwt-key-" + "x" * 45


def _api_pod(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = next(
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-api")
    )
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _mounted_secret(pod: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mount holding `path` and its Secret volume; the mount must follow the Secret."""
    (container,) = pod["containers"]
    mounts = [
        m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert len(mounts) == 1, mounts
    (mount,) = mounts
    assert mount.get("readOnly") is True
    # A subPath mount is never updated when its Secret changes.
    assert "subPath" not in mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume["secret"]


def test_the_api_reads_its_hs256_key_from_a_mounted_file_not_the_environment(
    render: Callable[..., list[Manifest]],
) -> None:
    pod = _api_pod(render(**HS256))
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "DOCPIPE_API_JWT_SECRET" not in env
    path = env["DOCPIPE_API_JWT_SECRET_FILE"]["value"]
    mount, secret = _mounted_secret(pod, path)
    assert secret["secretName"] == "jwt"
    relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    assert secret["items"] == [{"key": "hs256", "path": relative}]


def test_the_api_takes_the_key_file_the_chart_mounts(
    render: Callable[..., list[Manifest]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from docpipe_api.settings import ApiSettings
    from docpipe_contracts.configuration import load_settings

    pod = _api_pod(render(**HS256))
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    path = env["DOCPIPE_API_JWT_SECRET_FILE"]["value"]
    # The kubelet's part: the Secret's key as a file where the pod mounts it (under tmp_path).
    key_file = tmp_path / path.lstrip("/")
    key_file.parent.mkdir(parents=True)
    key_file.write_text(KEY_STAND_IN)
    for name in list(os.environ):
        if name.startswith(("DOCPIPE_", "OPENAI_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, entry in env.items():
        monkeypatch.setenv(name, entry.get("value", "postgresql://stand-in/db"))
    monkeypatch.setenv("DOCPIPE_API_JWT_SECRET_FILE", str(key_file))

    api = load_settings(ApiSettings)
    keys = api.verification_keys()
    assert keys is not None


def test_the_all_options_api_mounts_its_key_and_the_database_ca(
    render: Callable[..., list[Manifest]],
) -> None:
    pod = _api_pod(render(ALL_OPTIONS))
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    _, jwt = _mounted_secret(pod, str(env["DOCPIPE_API_JWT_SECRET_FILE"]))
    assert jwt["secretName"] == "docpipe-api"
    _, ca = _mounted_secret(pod, "/etc/docpipe/postgres-ca/ca.crt")
    assert ca["secretName"] == "docpipe-db-ca"


def test_the_example_pipelines_workers_mount_the_charts_database_ca(
    render: Callable[..., list[Manifest]],
) -> None:
    pipeline = find(render(ALL_OPTIONS), "DocumentPipeline")
    assert pipeline["spec"]["database"]["caSecretRef"] == {
        "name": "docpipe-db-ca",
        "key": "ca.crt",
    }
    spec = DocumentPipelineSpec.model_validate(pipeline["spec"])
    pod = worker_rendering.render_pod_template(pipeline["metadata"]["name"], spec)["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    # The same file the chart's own pods see, named for libpq (and asyncpg) with verify-full.
    assert env["PGSSLROOTCERT"] == "/etc/docpipe/postgres-ca/ca.crt"
    assert env["PGSSLMODE"] == "verify-full"
    _, ca = _mounted_secret(pod, str(env["PGSSLROOTCERT"]))
    assert ca == {"secretName": "docpipe-db-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}


def test_without_a_database_ca_the_example_pipeline_names_none(
    render: Callable[..., list[Manifest]],
) -> None:
    pipeline = find(
        render(**{"examplePipeline.enabled": True, "mocks.enabled": True}), "DocumentPipeline"
    )
    assert "caSecretRef" not in pipeline["spec"]["database"]


def test_the_operator_mounts_the_database_ca_to_read_queues_and_is_told_how_to_read_secrets(
    render: Callable[..., list[Manifest]],
) -> None:
    manifests = render(ALL_OPTIONS)
    pod = find(manifests, "Deployment", "docpipe-dp-operator")["spec"]["template"]["spec"]
    _, ca = _mounted_secret(pod, "/etc/docpipe/postgres-ca/ca.crt")
    assert ca["secretName"] == "docpipe-db-ca"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    policy = secrets_policy(env["DOCPIPE_SECRETS"], float(env["DOCPIPE_SECRETS_REFRESH_SECONDS"]))
    assert policy.read
    assert policy.refresh_seconds == 120
