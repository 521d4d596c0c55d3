"""The operator logs in as a real cluster's kubeconfig says, renews its credentials, and never
calls the API unauthenticated: an exec credential plugin (how EKS, GKE, AKS and OIDC logins work),
a rotated token file, a failed or empty login. The emulator accepts only the expected tokens."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from docpipe_operator import cluster
from docpipe_operator.credentials import Credentials, Login
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.polling import eventually
from tests.support.ports import free_port

EXEC_API = "client.authentication.k8s.io/v1"
# A credential plugin as cloud CLIs are: prints an ExecCredential with a token that expires soon,
# and writes each token it issues, with its expiry, to a ledger (the API server's view).
PLUGIN = """\
import datetime, json, sys
ledger, lifetime, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if mode == "fail":
    sys.stderr.write("the SSO session has expired: log in again\\n")
    sys.exit(1)
with open(ledger, "a+") as f:
    f.seek(0)
    token = f"exec-token-{len(f.read().splitlines()) + 1}"
    expires = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expires += datetime.timedelta(seconds=lifetime)
    f.write(f"{token} {expires.timestamp()}\\n")
status = {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
if mode == "empty":
    status = {}
print(json.dumps({"apiVersion": "API", "kind": "ExecCredential", "status": status}))
""".replace("API", EXEC_API)
# Long enough for a plugin call on a busy machine, short enough to expire within a test.
LIFETIME_SECONDS = 5.0


class IssuedTokens:
    """The tokens the plugin issued that have not expired yet: all the API server accepts."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger

    def issued(self) -> dict[str, float]:
        if not self.ledger.exists():
            return {}
        lines = self.ledger.read_text().splitlines()
        return {token: float(expires) for token, expires in (line.split() for line in lines)}

    def __contains__(self, token: object) -> bool:
        expires = self.issued().get(str(token))
        return expires is not None and time.time() < expires


def _kubeconfig(api: KubernetesApi, path: Path, user: dict[str, Any]) -> Path:
    """The emulator's kubeconfig with `user` as its user."""
    assert api.kubeconfig is not None
    config = yaml.safe_load(api.kubeconfig.read_text())
    config["users"] = [{"name": "u", "user": user}]
    path.write_text(yaml.safe_dump(config))
    return path


def _exec_user(tmp_path: Path, mode: str = "ok") -> dict[str, Any]:
    plugin = tmp_path / "credential-plugin.py"
    plugin.write_text(PLUGIN)
    args = [str(plugin), str(tmp_path / "ledger"), str(LIFETIME_SECONDS), mode]
    exec_config = {"apiVersion": EXEC_API, "command": sys.executable, "args": args}
    return {"exec": {**exec_config, "interactiveMode": "Never"}}


def _image(api: KubernetesApi) -> str | None:
    deployment = api.read_object(DEPLOYMENTS, NAMESPACE, "docs-worker")
    if deployment is None:
        return None
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def _set_image(api: KubernetesApi, image: str) -> None:
    def change(o: dict[str, Any]) -> dict[str, Any]:
        worker = {**o["spec"]["worker"], "image": image}
        return {**o, "spec": {**o["spec"], "worker": worker}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", change)


@pytest.fixture
async def started() -> Any:
    """Start an operator (stopped at the end of the test); raises what stopped it at startup."""
    processes: list[OperatorProcess] = []

    async def start() -> OperatorProcess:
        process = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
        await process.start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        await process.halt()


async def test_an_exec_plugin_login_is_renewed_when_it_expires_for_both_clients(
    api: KubernetesApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: Any
) -> None:
    kubeconfig = _kubeconfig(api, tmp_path / "kubeconfig", _exec_user(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    accepted = IssuedTokens(tmp_path / "ledger")
    api.expected_tokens = accepted
    await started()
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(rollout={"strategy": "Rolling"}))
    await eventually(lambda: _image(api) == "docpipe:1", what="the Deployment")
    (first, expires), *_ = accepted.issued().items()
    await asyncio.sleep(expires - time.time() + 0.1)
    assert first not in accepted
    # The first token expired: the operator's own writes go on with a renewed one...
    _set_image(api, "docpipe:2")
    await eventually(lambda: _image(api) == "docpipe:2", what="the new image")
    # ... and Kopf's (releasing the finalizer) with the same renewal.
    api.delete_object(DOCPIPE_RESOURCE, NAMESPACE, "docs")
    await eventually(lambda: pipeline(api) is None, what="the finalizer to be released")
    assert api.tokens[""] == 0, "a request went out unauthenticated"
    assert set(api.tokens) <= set(accepted.issued())
    assert len(api.tokens) >= 2
    # Renewed ahead of the expiry (at 80% of the lifetime), so the API server refused nothing.
    assert api.answers[401] == 0


async def test_a_rotated_token_file_is_read_again_and_the_operator_keeps_working(
    api: KubernetesApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: Any
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    token_file = secrets / "token"
    token_file.write_text("first-token\n")
    # A path relative to the kubeconfig, as kubectl reads it.
    kubeconfig = _kubeconfig(api, tmp_path / "kubeconfig", {"tokenFile": "secrets/token"})
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    api.expected_tokens = {"first-token"}
    await started()
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body(rollout={"strategy": "Rolling"}))
    await eventually(lambda: _image(api) == "docpipe:1", what="the Deployment")

    # Rotated as the kubelet does a projected token: a new file put in place at once.
    fresh = secrets / "token.new"
    fresh.write_text("second-token")
    os.replace(fresh, token_file)
    api.expected_tokens = {"second-token"}
    _set_image(api, "docpipe:2")
    await eventually(lambda: _image(api) == "docpipe:2", what="the new image")
    # Kopf's own requests: releasing the finalizer needs its re-login with the new token.
    api.delete_object(DOCPIPE_RESOURCE, NAMESPACE, "docs")
    await eventually(lambda: pipeline(api) is None, what="the finalizer to be released")
    assert api.tokens["second-token"] > 0
    assert set(api.tokens) <= {"first-token", "second-token"}


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("fail", "the SSO session has expired: log in again"),
        ("empty", "missing token or clientCertificateData"),
    ],
)
async def test_a_failed_or_empty_exec_login_stops_the_operator_before_any_request(
    api: KubernetesApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: Any,
    mode: str,
    said: str,
) -> None:
    kubeconfig = _kubeconfig(api, tmp_path / "kubeconfig", _exec_user(tmp_path, mode))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    before = api.request_count
    with pytest.raises(kopf.LoginError) as failure:
        await started()
    message = str(failure.value)
    assert "cannot log in to the Kubernetes API" in message
    assert "exec plugin" in message
    assert said in message
    await asyncio.sleep(0.2)
    assert api.request_count == before


async def test_a_kubeconfig_user_without_credentials_is_refused_not_sent_anonymously(
    api: KubernetesApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: Any
) -> None:
    kubeconfig = _kubeconfig(api, tmp_path / "kubeconfig", {})
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    before = api.request_count
    with pytest.raises(kopf.LoginError, match="gave no credentials"):
        await started()
    await asyncio.sleep(0.2)
    assert api.request_count == before


def _server(api: KubernetesApi) -> str:
    assert api.kubeconfig is not None
    config = yaml.safe_load(api.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


async def test_the_operator_client_logs_in_again_after_a_401_and_retries_once(
    api: KubernetesApi,
) -> None:
    given = iter(["revoked", "renewed"])

    def load() -> Login:
        info = kopf.ConnectionInfo(server=_server(api), token=next(given))
        return Login(info, "the test's loader")

    api.expected_tokens = {"renewed"}
    client = cluster.KubeClient(Credentials(load))
    try:
        assert await client.get(cluster.SECRETS, NAMESPACE, "db") is None  # 404 after the retry
    finally:
        await client.close()
    assert api.tokens == {"revoked": 1, "renewed": 1}


async def test_the_operator_client_does_not_retry_a_401_with_the_same_credentials(
    api: KubernetesApi,
) -> None:
    info = kopf.ConnectionInfo(server=_server(api), token="revoked")
    api.expected_tokens = {"renewed"}
    client = cluster.KubeClient(Credentials(lambda: Login(info, "the test's loader")))
    try:
        with pytest.raises(cluster.ApiError) as refused:
            await client.get(cluster.SECRETS, NAMESPACE, "db")
    finally:
        await client.close()
    assert refused.value.status == 401
    assert api.tokens == {"revoked": 1}
