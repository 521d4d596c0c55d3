"""How the operator runs: Kopf's settings for production, and the entry point `docpipe operator`."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Sequence

import kopf

from docpipe_operator import handlers
from docpipe_operator.observation import SECRET_TTL_SECONDS, SecretsPolicy

PEERING_NAME = "docpipe"
# The peering object's name, when not the default: the Helm chart names it after its release
# (two releases must not meet in one peering) and tells the operator here.
PEERING_NAME_ENV = "DOCPIPE_PEERING_NAME"
# Whether the operator reads the Secrets pipelines reference (`read`, the default, or `none`), and
# how often it reads each again: the chart sets these from rbac.secrets.
SECRETS_ENV = "DOCPIPE_SECRETS"
SECRETS_REFRESH_ENV = "DOCPIPE_SECRETS_REFRESH_SECONDS"
PREFIX = "docpipe.io"
FINALIZER = f"{PREFIX}/operator"
LIVENESS_ENDPOINT = "http://0.0.0.0:8080/healthz"

# A watch that stays silent is closed by the API server after SERVER_TIMEOUT and by the client
# after CLIENT_TIMEOUT, then re-opened: a hung connection (a known Kopf failure behind load
# balancers) can never stall the operator for longer.
WATCH_SERVER_TIMEOUT = 300.0
WATCH_CLIENT_TIMEOUT = 330.0
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0


def configure(
    settings: kopf.OperatorSettings, *, namespaces: Sequence[str] = ()
) -> kopf.OperatorSettings:
    """Production settings: watch timeouts, own finalizer and annotation prefix, quiet Events.

    With `namespaces`, the operator serves only those (peering in a KopfPeering in each) and
    neither lists namespaces nor follows CRDs: a namespaced install grants neither.
    """
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.networking.request_timeout = REQUEST_TIMEOUT
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # Handler logs become Events only from warnings up; the operator posts its own Events.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "docpipe-operator"
    settings.peering.clusterwide = not namespaces
    # The children's watches ask the API server only for what the operator manages.
    for resource in handlers.WATCHED_CHILDREN.values():
        key = (resource.group, resource.version, resource.plural)
        settings.watching.label_selectors[key] = handlers.MANAGED_SELECTOR
    settings.scanning.disabled = bool(namespaces)
    return settings


def peering_name() -> str:
    """The (Cluster)KopfPeering the replicas meet in: $DOCPIPE_PEERING_NAME, else `docpipe`."""
    return os.environ.get(PEERING_NAME_ENV, "").strip() or PEERING_NAME


def secrets_policy(mode: str | None = None, refresh_seconds: float | None = None) -> SecretsPolicy:
    """The Secret reads: `mode` (`read` or `none`) and the refresh interval, each else from the
    environment ($DOCPIPE_SECRETS, $DOCPIPE_SECRETS_REFRESH_SECONDS), else the defaults."""
    mode = (mode or os.environ.get(SECRETS_ENV, "") or "read").strip().lower()
    if mode not in ("read", "none"):
        raise ValueError(f"{SECRETS_ENV}={mode!r}: expected `read` or `none`")
    if refresh_seconds is None:
        raw = os.environ.get(SECRETS_REFRESH_ENV, "").strip()
        try:
            refresh_seconds = float(raw) if raw else SECRET_TTL_SECONDS
        except ValueError:
            raise ValueError(f"{SECRETS_REFRESH_ENV}={raw!r}: expected seconds") from None
    if not 1 <= refresh_seconds <= 3600:
        raise ValueError(f"{SECRETS_REFRESH_ENV}={refresh_seconds:g}: expected 1 to 3600 seconds")
    return SecretsPolicy(read=mode == "read", refresh_seconds=refresh_seconds)


def build_registry() -> kopf.OperatorRegistry:
    """A registry holding the operator's handlers (not Kopf's global one: tests run several)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    return registry


async def run_operator(
    *,
    liveness_endpoint: str | None = LIVENESS_ENDPOINT,
    standalone: bool = False,
    priority: int | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    namespaces: Sequence[str] = (),
    secret_reads: SecretsPolicy | None = None,
) -> None:
    """Run the operator over `namespaces` (every namespace if none) until stopped or signalled;
    `secret_reads`: whether it reads the pipelines' Secrets (default: `secrets_policy()`)."""
    try:
        await _operator(
            liveness_endpoint=liveness_endpoint,
            standalone=standalone,
            priority=priority,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            namespaces=namespaces,
            secret_reads=secret_reads,
        )
    except Exception as error:
        # A failed login stops the operator at startup (handlers.start): say why, plainly.
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, kopf.LoginError):
            cause = cause.__cause__
        if cause is not None:
            raise kopf.LoginError(f"cannot log in to the Kubernetes API: {cause}") from None
        raise


async def _operator(
    *,
    liveness_endpoint: str | None,
    standalone: bool,
    priority: int | None,
    stop_flag: asyncio.Event | None,
    ready_flag: asyncio.Event | None,
    namespaces: Sequence[str],
    secret_reads: SecretsPolicy | None,
) -> None:
    await kopf.operator(
        registry=build_registry(),
        settings=configure(kopf.OperatorSettings(), namespaces=namespaces),
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        # Peering: replicas of equal priority would all pause, so each picks its own at random;
        # the highest one acts, the others stand by until its heartbeat stops.
        peering_name=None if standalone else peering_name(),
        priority=priority if priority is not None else secrets.randbelow(1_000_000),
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(secret_reads=secret_reads or secrets_policy()),
    )
