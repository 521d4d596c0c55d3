"""The Kopf handlers: each reads, calls the reconciler, and reports; no decision is made here."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import kopf

from docpipe_operator import cluster, reconciler
from docpipe_operator.model import GROUP, PLURAL, VERSION


def _state(memo: Any) -> reconciler.OperatorState:
    state: reconciler.OperatorState = memo.state
    return state


def register(registry: kopf.OperatorRegistry) -> None:
    """Register every handler of the operator on `registry`."""

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return cluster.login(settings)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        memo.state = reconciler.OperatorState(
            client=cluster.KubeClient(cluster.login(settings)),
            http=aiohttp.ClientSession(),
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        if "state" in memo:
            await _state(memo).close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        error = await reconciler.reconcile(_state(memo), body)
        if error is not None:
            # Not raised: a retry cannot fix a spec; the user can, told by the condition and Event.
            logger.warning("invalid spec: %s", error)
            kopf.event(body, type="Warning", reason="InvalidSpec", message=error)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=10.0)
    async def autoscale(
        stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        scaler = reconciler.Autoscaler()
        while not stopped:
            started = time.monotonic()
            try:
                await reconciler.tick(_state(memo), body, scaler, now=started)
            except (cluster.ApiError, aiohttp.ClientError, TimeoutError) as exc:
                # The next round retries; a failed round never changes the worker count.
                logger.warning("autoscaling round failed: %s", exc)
            elapsed = time.monotonic() - started
            await stopped.wait(max(0.0, reconciler.interval_of(body) - elapsed))
