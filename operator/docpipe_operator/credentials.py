"""Logins to the Kubernetes API: one source of credentials for Kopf's client and the operator's own.

Where the credentials come from (controller-runtime's order): the kubeconfig(s) in $KUBECONFIG;
else, in a pod, its service account; else ~/.kube/config. The `kubernetes` package reads them,
with everything a kubeconfig user can be: an exec credential plugin (how EKS, GKE and AKS
kubeconfigs and most OIDC logins work), the `oidc` auth provider, client certificates, a token or
a token file, a user name and password.

A login that yields nothing to authenticate with is an error (`kopf.LoginError`, with what the
plugin or the loader said): the operator never sends an unauthenticated request.

Credentials are renewed, not read once at start:
- one with an expiry (an exec plugin's `expirationTimestamp`) is fetched again after
  `REFRESH_FRACTION` of its lifetime; Kopf is given that moment as the `expiration` of its
  connection info, so both clients renew at the same time, with one call of the plugin;
- a token file (the service account's projected token, rotated by the kubelet; a kubeconfig's
  `tokenFile`) is read again when it changes on disk;
- credentials the API server rejects (401) are loaded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
# A credential with an expiry is renewed after this share of its lifetime (the kubelet renews
# projected service-account tokens at the same point): early enough that no request is refused.
REFRESH_FRACTION = 0.8


@dataclass(frozen=True)
class Login:
    """What one login yielded: Kopf's connection info, where it came from, the token file to
    watch (if the token is read from one)."""

    info: kopf.ConnectionInfo
    origin: str
    token_file: str | None = None


def refresh_time(loaded_at: datetime, expires_at: datetime) -> datetime:
    """When a credential loaded at `loaded_at` and valid until `expires_at` is fetched again."""
    return loaded_at + (expires_at - loaded_at) * REFRESH_FRACTION


def has_credentials(info: kopf.ConnectionInfo) -> bool:
    """Whether `info` authenticates at all: a token, a user name and password, or a client
    certificate with its key."""
    certificate = info.certificate_path or info.certificate_data
    key = info.private_key_path or info.private_key_data
    return bool(info.token or (info.username and info.password) or (certificate and key))


def same_credentials(a: kopf.ConnectionInfo, b: kopf.ConnectionInfo) -> bool:
    """Whether `a` and `b` authenticate the same way (whatever their expirations)."""

    def identity(info: kopf.ConnectionInfo) -> tuple[Any, ...]:
        return (
            info.server,
            info.scheme,
            info.token,
            info.username,
            info.password,
            info.certificate_path,
            info.certificate_data,
            info.private_key_path,
            info.private_key_data,
        )

    return identity(a) == identity(b)


def connection_info(
    configuration: Any,
    *,
    expiration: datetime | None = None,
    default_namespace: str | None = None,
    trust_env: bool = False,
) -> kopf.ConnectionInfo:
    """Kopf's connection info from a `kubernetes.client.Configuration` the package loaded."""
    header = str(
        configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization") or ""
    ).strip()
    scheme, _, token = header.partition(" ")
    if not token:  # a bare token, without its scheme
        scheme, token = "Bearer", scheme
    return kopf.ConnectionInfo(
        server=str(configuration.host).rstrip("/"),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        scheme=scheme.capitalize() if token.strip() else None,
        token=token.strip() or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        default_namespace=default_namespace,
        trust_env=trust_env,
        expiration=expiration,
    )


@contextlib.contextmanager
def _errors_logged() -> Iterator[list[str]]:
    """The errors logged in this thread meanwhile: the `kubernetes` package logs a failed exec
    plugin instead of raising."""
    messages: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                messages.append(record.getMessage())

    handler = Collect(level=logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)


def _checked(login: Login, errors: list[str]) -> Login:
    if not has_credentials(login.info):
        said = f": {'; '.join(errors)}" if errors else ""
        raise kopf.LoginError(
            f"{login.origin} gave no credentials (no token, client certificate or password)"
            f"{said}; refusing to send unauthenticated requests"
        )
    return login


def load_kubeconfig(
    paths: str, *, context: str | None = None, trust_env: bool = False, now: datetime | None = None
) -> Login:
    """Log in with the kubeconfig file(s) `paths` (separated by ':', as in $KUBECONFIG)."""
    from kubernetes.client import Configuration
    from kubernetes.config import ConfigException, kube_config

    try:
        merger = kube_config.KubeConfigMerger(paths)
        if merger.config is None:
            raise kopf.LoginError(f"kubeconfig {paths}: no such file or no configuration in it")
        loader = kube_config.KubeConfigLoader(
            config_dict=merger.config,
            active_context=context,
            config_base_path=None,
            # A refreshed OIDC token is written back, as kubectl does.
            config_persister=merger.save_changes,
        )
        current = loader.current_context
        user_name = current["context"].get("user")
        user = merger.config["users"].get_with_name(user_name, safe=True) if user_name else None
        fields = dict(user["user"].value) if user is not None else {}
        origin = f"kubeconfig {paths} (context {current['name']!r}, user {user_name!r}"
        if "exec" in fields:
            origin += f", exec plugin {fields['exec'].get('command')!r}"
        origin += ")"
        configuration = Configuration()
        loaded_at = now or datetime.now(tz=UTC)
        with _errors_logged() as errors:
            loader.load_and_set(configuration)
    except (ConfigException, OSError, yaml.YAMLError) as error:
        # A broken kubeconfig, a missing token or certificate file, an unwritable OIDC refresh.
        raise kopf.LoginError(f"kubeconfig {paths}: {error}") from error
    token_file = None
    if fields.get("tokenFile") and not fields.get("token") and user is not None:
        base = os.path.dirname(user["user"].path or paths.split(os.pathsep)[0])
        token_file = os.path.normpath(os.path.join(base, fields["tokenFile"]))
    expires_at: datetime | None = getattr(loader, "expiry", None)
    expiration = None
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= loaded_at:
            raise kopf.LoginError(f"{origin} gave a credential that expired at {expires_at}")
        expiration = refresh_time(loaded_at, expires_at)
    info = connection_info(configuration, expiration=expiration, trust_env=trust_env)
    return _checked(Login(info, origin, token_file), errors)


def load_in_cluster(
    environ: Mapping[str, str] = os.environ,
    *,
    directory: Path = SERVICE_ACCOUNT_DIR,
    trust_env: bool = False,
) -> Login:
    """Log in as the pod's service account (its token file is watched for rotation)."""
    from kubernetes.client import Configuration
    from kubernetes.config import ConfigException, incluster_config

    token_file = directory / "token"
    origin = f"the service account token {token_file}"
    configuration = Configuration()
    try:
        incluster_config.InClusterConfigLoader(
            token_filename=str(token_file),
            cert_filename=str(directory / "ca.crt"),
            # Not the package's own once-a-minute re-read: Credentials re-reads on change.
            try_refresh_token=False,
            environ=environ,
        ).load_and_set(configuration)
    except (ConfigException, OSError) as error:
        raise kopf.LoginError(f"{origin}: {error}") from error
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    info = connection_info(configuration, default_namespace=namespace or None, trust_env=trust_env)
    return _checked(Login(info, origin, str(token_file)), [])


def load(
    environ: Mapping[str, str] = os.environ,
    *,
    service_account: Path = SERVICE_ACCOUNT_DIR,
    trust_env: bool = False,
) -> Login:
    """Log in from $KUBECONFIG; else as the pod's service account; else from ~/.kube/config."""
    if environ.get("KUBECONFIG", "").strip():
        return load_kubeconfig(environ["KUBECONFIG"], trust_env=trust_env)
    if environ.get("KUBERNETES_SERVICE_HOST") and (service_account / "token").is_file():
        return load_in_cluster(environ, directory=service_account, trust_env=trust_env)
    default = os.path.expanduser(DEFAULT_KUBECONFIG)
    if os.path.isfile(default):
        return load_kubeconfig(default, trust_env=trust_env)
    raise kopf.LoginError(
        "no kubeconfig ($KUBECONFIG, ~/.kube/config) and no service account "
        f"({service_account}/token with $KUBERNETES_SERVICE_HOST): cannot log in to the API"
    )


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    """What tells a changed file (a rotated projected token is a new file behind a symlink)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class Credentials:
    """The operator's current credentials, shared by Kopf's client (through the login handler)
    and the operator's own (`cluster.KubeClient`), and renewed for both.

    Thread-safe: Kopf runs the login handler in a thread, and the operator's client loads in one
    (an exec plugin is a process to wait for).
    """

    def __init__(self, load: Callable[[], Login]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._login = load()
        self._stamp = _stamp(self._login.token_file)
        self._given_to_kopf: kopf.ConnectionInfo | None = None
        self.loads = 1  # how many times the credentials were loaded

    @classmethod
    def fixed(cls, info: kopf.ConnectionInfo) -> Credentials:
        """Credentials that never change (a test's, or a caller's own login)."""
        return cls(lambda: Login(info, "given connection info"))

    @property
    def info(self) -> kopf.ConnectionInfo:
        """The credentials last loaded (without checking that they are still current)."""
        return self._login.info

    @property
    def origin(self) -> str:
        """Where the credentials come from, for messages."""
        return self._login.origin

    def due(self, now: datetime | None = None) -> bool:
        """Whether the credentials must be loaded again: their refresh time has come, or their
        token file changed."""
        login = self._login
        expiration = login.info.expiration
        if expiration is not None and (now or datetime.now(tz=UTC)) >= expiration:
            return True
        return login.token_file is not None and _stamp(login.token_file) != self._stamp

    def current(self, rejected: kopf.ConnectionInfo | None = None) -> kopf.ConnectionInfo:
        """The credentials to use, loaded again first if due, or if they are still `rejected`
        (the ones the API server just answered 401 to). Blocking: call it in a thread."""
        with self._lock:
            if self.due() or (rejected is not None and self._login.info is rejected):
                self._reload()
            return self._login.info

    def for_kopf(self) -> kopf.ConnectionInfo:
        """What Kopf's login handler returns. Kopf asks again only when the credentials it has
        expired or were refused: still the current ones, they are loaded again; the same ones
        again after a refusal are an error (Kopf would drop them and wait for nothing)."""
        with self._lock:
            given = self._given_to_kopf
            due = self.due()
            refused = not due and given is not None and self._login.info is given
            if due or refused:
                self._reload()
                if refused and given is not None and same_credentials(given, self._login.info):
                    raise kopf.LoginError(
                        f"the API server refused the credentials of {self._login.origin}, "
                        "and loading them again gave the same ones"
                    )
            self._given_to_kopf = self._login.info
            return self._login.info

    def _reload(self) -> None:
        login = self._load()
        self.loads += 1
        log.info("Credentials loaded again from %s.", login.origin)
        self._login, self._stamp = login, _stamp(login.token_file)
