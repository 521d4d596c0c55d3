"""Where the operator's credentials come from, read by the `kubernetes` package: the pod's service
account, kubeconfigs with client certificates, OIDC, token files and exec plugins; and which
source wins. Files and plugin processes only: no server is needed to load credentials."""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docpipe_operator import credentials

SERVER = "https://203.0.113.10:6443"


def _kubeconfig(path: Path, user: dict[str, Any], server: str = SERVER) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def _certificate() -> tuple[bytes, bytes]:
    """A self-signed client certificate and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docpipe-operator")])
    now = datetime.now(tz=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_kubeconfig_with_a_client_certificate_logs_in_with_it(tmp_path: Path) -> None:
    cert, key = _certificate()
    path = _kubeconfig(
        tmp_path / "config",
        {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)},
    )
    login = credentials.load_kubeconfig(str(path))
    assert login.info.token is None
    assert login.info.certificate_path
    assert login.info.private_key_path
    assert Path(login.info.certificate_path).read_bytes() == cert  # type: ignore[arg-type]
    login.info.as_ssl_context()  # the pair loads: it is what TLS will present


def test_an_oidc_kubeconfig_sends_its_id_token(tmp_path: Path) -> None:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    exp = int((datetime.now(tz=UTC) + timedelta(hours=1)).timestamp())
    id_token = f"{part({'alg': 'none'})}.{part({'sub': 'ops', 'exp': exp})}.c2ln"
    provider = {
        "name": "oidc",
        "config": {
            "client-id": "docpipe",
            "id-token": id_token,
            "idp-issuer-url": "https://idp.invalid",
            "refresh-token": "r",
        },
    }
    login = credentials.load_kubeconfig(
        str(_kubeconfig(tmp_path / "config", {"auth-provider": provider}))
    )
    assert login.info.as_http_headers() == {"Authorization": f"Bearer {id_token}"}


def test_a_token_file_is_found_beside_the_kubeconfig_and_watched(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-the-file\n")
    login = credentials.load_kubeconfig(
        str(_kubeconfig(tmp_path / "config", {"tokenFile": "token"}))
    )
    assert login.info.token == "from-the-file"
    assert login.token_file == str(tmp_path / "token")


def test_a_missing_token_file_is_a_login_error_naming_it(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "config", {"tokenFile": "absent"})
    with pytest.raises(kopf.LoginError, match=str(tmp_path / "absent")):
        credentials.load_kubeconfig(str(path))


def test_an_exec_plugin_credential_is_renewed_at_eighty_percent_of_its_lifetime(
    tmp_path: Path,
) -> None:
    expires = (datetime.now(tz=UTC) + timedelta(minutes=15)).replace(microsecond=0)
    status = {"token": "t0k", "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
    output = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import json; print(json.dumps({json.dumps({**output, 'status': status})}))")
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    now = datetime.now(tz=UTC)
    login = credentials.load_kubeconfig(str(_kubeconfig(tmp_path / "config", user)), now=now)
    assert login.info.token == "t0k"
    assert login.info.expiration == credentials.refresh_time(now, expires)
    assert "exec plugin" in login.origin


def test_an_exec_plugin_credential_already_expired_is_a_login_error(tmp_path: Path) -> None:
    expired = datetime.now(tz=UTC) - timedelta(minutes=1)
    status = {"token": "old", "expirationTimestamp": expired.strftime("%Y-%m-%dT%H:%M:%SZ")}
    output = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import json; print(json.dumps({json.dumps({**output, 'status': status})}))")
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    with pytest.raises(kopf.LoginError, match="expired at"):
        credentials.load_kubeconfig(str(_kubeconfig(tmp_path / "config", user)))


def _service_account(directory: Path, token: str = "sa-token") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(_certificate()[0])
    (directory / "namespace").write_text("docpipe-system\n")
    return directory


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_the_service_account_token_is_used_and_read_again_when_rotated(
    tmp_path: Path,
) -> None:
    directory = _service_account(tmp_path / "sa")
    source = credentials.Credentials(
        lambda: credentials.load_in_cluster(IN_CLUSTER, directory=directory)
    )
    info = source.info
    assert info.server == "https://10.96.0.1:443"
    assert info.ca_path == str(directory / "ca.crt")
    assert info.as_http_headers() == {"Authorization": "Bearer sa-token"}
    assert info.default_namespace == "docpipe-system"
    assert not source.due()
    # The kubelet refreshes the projected token: a new file swapped in.
    rotated = directory / "token.new"
    rotated.write_text("sa-token-2")
    rotated.replace(directory / "token")
    assert source.due()
    assert source.current().token == "sa-token-2"


def test_an_empty_service_account_token_is_a_login_error(tmp_path: Path) -> None:
    directory = _service_account(tmp_path / "sa", token="")
    with pytest.raises(kopf.LoginError, match="empty"):
        credentials.load_in_cluster(IN_CLUSTER, directory=directory)


def test_kubeconfig_first_then_the_service_account_then_the_home_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _service_account(tmp_path / "sa")
    explicit = _kubeconfig(tmp_path / "explicit", {"token": "explicit"})
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    _kubeconfig(home / ".kube" / "config", {"token": "home"})
    monkeypatch.setenv("HOME", str(home))

    def token(environ: dict[str, str]) -> str | None:
        return credentials.load(environ, service_account=directory).info.token

    assert token({**IN_CLUSTER, "KUBECONFIG": str(explicit)}) == "explicit"
    assert token(IN_CLUSTER) == "sa-token"
    assert token({}) == "home"
    (home / ".kube" / "config").unlink()
    with pytest.raises(kopf.LoginError, match="no kubeconfig"):
        credentials.load({}, service_account=directory)
