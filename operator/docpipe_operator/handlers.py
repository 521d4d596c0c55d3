"""The Kopf handlers: watches that keep indexes of the children and wake a pipeline's round, and
the daemon that runs a pipeline's rounds. No decision is made here.

Like controller-runtime's `Owns()`: a change to any child (Deployment, Service,
PodDisruptionBudget, PodMonitor, Pod: everything labelled as managed by the operator) updates the
index the rounds read and wakes the round of the pipeline it belongs to.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import kopf

from docpipe_operator import cluster, credentials, reconciler, rendering
from docpipe_operator.model import GROUP, PLURAL, VERSION
from docpipe_operator.observation import PODS, ChildIndexes, pod_essentials

# The child kinds a round reads, each from its own index (named "children_<plural>").
WATCHED_CHILDREN: dict[str, cluster.Resource] = {
    "Deployment": cluster.DEPLOYMENTS,
    "Service": cluster.SERVICES,
    "PodDisruptionBudget": cluster.PODDISRUPTIONBUDGETS,
    "PodMonitor": cluster.PODMONITORS,
    PODS: cluster.PODS,
}
MANAGED = {rendering.LABEL_MANAGED_BY: rendering.MANAGED_BY}
# The same selector, sent to the API server with each list and watch of the children.
MANAGED_SELECTOR = f"{rendering.LABEL_MANAGED_BY}={rendering.MANAGED_BY}"
# A login that fails after the first (a plugin or token file briefly unavailable) is tried again
# this often, Kopf's requests waiting meanwhile.
LOGIN_RETRY_SECONDS = 5.0


def index_name(resource: cluster.Resource) -> str:
    """The Kopf index (and the handler kwarg) of a child resource."""
    return f"children_{resource.plural}"


def _credentials(memo: Any) -> credentials.Credentials:
    source: credentials.Credentials = memo.credentials
    return source


def _state(memo: Any) -> reconciler.OperatorState:
    state: reconciler.OperatorState = memo.state
    return state


def _indexes(kwargs: dict[str, Any]) -> ChildIndexes:
    return {kind: kwargs[index_name(r)] for kind, r in WATCHED_CHILDREN.items()}


def register(registry: kopf.OperatorRegistry) -> None:
    """Register every handler of the operator on `registry`."""

    # Kopf asks when its credentials expired or were refused (401); the same source renews
    # them for the operator's own client. Sync: Kopf runs it in a thread (a plugin may be slow).
    @kopf.on.login(registry=registry, backoff=LOGIN_RETRY_SECONDS)
    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        return _credentials(memo).for_kopf()

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        load = functools.partial(credentials.load, trust_env=settings.networking.trust_env)
        try:
            memo.credentials = await asyncio.to_thread(credentials.Credentials, load)
        except kopf.LoginError as error:
            # Without credentials the operator stops, rather than calling the API unauthenticated.
            raise kopf.PermanentError(f"cannot log in to the Kubernetes API: {error}") from error
        memo.state = reconciler.OperatorState.connect(
            memo.credentials, secrets=memo.get("secret_reads")
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        if "state" in memo:
            await _state(memo).close()

    for kind, resource in WATCHED_CHILDREN.items():
        _watch_children(registry, kind, resource)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def pipeline_changed(
        namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        if "state" in memo:
            _state(memo).wake(namespace, name)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=10.0)
    async def rounds(
        stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any
    ) -> None:
        await reconciler.run_pipeline(_state(memo), body, stopped, _indexes(kwargs), logger)


def _watch_children(registry: kopf.OperatorRegistry, kind: str, resource: cluster.Resource) -> None:
    """An index of a child kind by (namespace, pipeline), and a wake-up of that pipeline's round
    on each change (the index is updated first)."""
    group, version, plural = resource.group, resource.version, resource.plural

    def index(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[tuple[str | None, str], dict[str, Any]] | None:
        pipeline = labels.get(rendering.LABEL_PIPELINE)
        if pipeline is None:
            return None
        value = pod_essentials(body) if kind == PODS else dict(body)
        return {(namespace, pipeline): value}

    def changed(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        if "state" in memo:
            pipeline = labels.get(rendering.LABEL_PIPELINE)
            if kind != PODS:
                _state(memo).show(namespace, pipeline, kind, body)
            _state(memo).wake(namespace, pipeline)

    kopf.index(
        group=group,
        version=version,
        plural=plural,
        id=index_name(resource),
        labels=MANAGED,
        registry=registry,
    )(index)
    kopf.on.event(
        group=group,
        version=version,
        plural=plural,
        id=f"wake_on_{resource.plural}",
        labels=MANAGED,
        registry=registry,
    )(changed)
