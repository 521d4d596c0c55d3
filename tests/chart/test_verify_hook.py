"""The chart's `helm test` hook (`docpipe verify` against the release's API) and the CA mount of
databaseTls: rendered only when they can work, with commands the docpipe CLI accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docpipe_cli.main import build_argument_parser
from tests.chart.rendering import Manifest

ALL_OPTIONS = str(Path(__file__).resolve().parent / "values-all-options.yaml")
API = {
    "api.enabled": True,
    "api.databaseUrlSecretRef.name": "db",
    "api.openaiApiKeySecretRef.name": "oa",
}


def hook_pods(manifests: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == "Pod" and m["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]


def _container(pod: Manifest) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def test_verify_hook_runs_docpipe_verify_against_the_release_api(
    render: Callable[..., list[Manifest]],
) -> None:
    [pod] = hook_pods(render(ALL_OPTIONS))
    container = _container(pod)
    args = build_argument_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "verify"
    assert args.api_url == "http://docpipe-dp-api.docpipe-system.svc:443"
    assert (args.pipeline, args.timeout) == ("docs", 300.0)
    env = {e["name"]: e for e in container["env"]}
    # Minted in the Pod from the API's own secret, with the API's issuer.
    assert env["DOCPIPE_API_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "docpipe-api",
        "key": "jwt-secret",
    }
    assert env["DOCPIPE_API_JWT_ISSUER"]["value"] == "https://auth.example.com"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "limits" in container["resources"]


def test_verify_hook_takes_tokens_from_a_secret_when_named(
    render: Callable[..., list[Manifest]],
) -> None:
    [pod] = hook_pods(
        render(**{**API, "api.jwtSecretRef.name": "jwt", "tests.verify.tokenSecretRef.name": "vt"})
    )
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in _container(pod)["env"]}
    assert env == {
        "DOCPIPE_API_TOKEN": {"name": "vt", "key": "token"},
        "DOCPIPE_VERIFY_READ_ONLY_TOKEN": {
            "name": "vt",
            "key": "read-only-token",
            "optional": True,
        },
    }


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the API is off by default
        {**API, "api.jwtSecretRef.name": "jwt", "tests.verify.enabled": False},
        {  # RS256 keys and no token Secret: nothing to authenticate with
            **API,
            "api.extraEnv[0].name": "DOCPIPE_API_JWT_JWKS_FILE",
            "api.extraEnv[0].value": "/keys/jwks.json",
        },
    ],
    ids=["api-off", "disabled", "no-token-source"],
)
def test_no_verify_hook_when_it_cannot_run(
    render: Callable[..., list[Manifest]], settings: dict[str, Any]
) -> None:
    assert hook_pods(render(**settings)) == []


def test_database_ca_is_mounted_into_the_api_and_migrate_pods(
    render: Callable[..., list[Manifest]],
) -> None:
    manifests = render(ALL_OPTIONS)
    for kind, name in (("Deployment", "docpipe-dp-api"), ("Job", "docpipe-dp-migrate")):
        [workload] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["postgres-ca"]["secret"] == {
            "secretName": "docpipe-db-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["postgres-ca"] == {
            "name": "postgres-ca",
            "mountPath": "/etc/docpipe/postgres-ca",
            "readOnly": True,
        }
    defaults = render(**{**API, "api.jwtSecretRef.name": "jwt"})
    api = next(
        m for m in defaults if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-api")
    )
    # Without databaseTls, no CA (the HS256 key is mounted: tests/chart/test_secret_files.py).
    assert [v["name"] for v in api["spec"]["template"]["spec"]["volumes"]] == ["tmp", "jwt-secret"]
