"""The round loop of a pipeline: observe → decide → apply, woken by any change or by the timer.

Every wake-up of a pipeline (created, updated, resumed, a child changed or vanished, the timer)
runs the same round: `observation` reads the pipeline's children from the indexes its watches keep
(and, when the timer says a reading is due, the workers' load), `decision.decide` computes
everything, `apply` writes only what differs. One task per pipeline runs its rounds one after
another, so no two writers race over its children or its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from docpipe_operator import cluster, decision, rollout, telemetry
from docpipe_operator.apply import apply_round
from docpipe_operator.credentials import Credentials
from docpipe_operator.decision import AnalysisWindow, Memory, revision_counters
from docpipe_operator.observation import ChildIndexes, Observer, SecretsPolicy, children_of

log = logging.getLogger(__name__)

__all__ = ["AnalysisWindow", "OperatorState", "PromqlCounters", "judge", "revision_counters"]

# A round a watch event wakes comes at least this long after the previous one: a burst of events
# (a rolling update) makes one round, not one per event.
SETTLE_SECONDS = 0.02


@dataclass
class OperatorState:
    """What the operator keeps between handler calls (Kopf's memo)."""

    client: cluster.KubeClient
    http: aiohttp.ClientSession
    observer: Observer
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # (namespace, pipeline) → (kind, name) → the uid of the last object the watches showed.
    shown: dict[tuple[str, str], dict[tuple[str, str], str]] = field(default_factory=dict)
    rounds: int = 0  # rounds run (for the benchmark)

    @classmethod
    def connect(
        cls,
        info: Credentials | kopf.ConnectionInfo,
        *,
        secrets: SecretsPolicy | None = None,
    ) -> OperatorState:
        """The state of an operator talking to the API with the credentials `info` (renewed, if
        a `Credentials`); `secrets`: whether (and how often) it reads the Secrets pipelines
        reference."""
        client = cluster.KubeClient(info)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        return cls(client, http, Observer(client, http, secrets=secrets))

    def show(self, namespace: str | None, pipeline: str | None, kind: str, body: Any) -> None:
        """Note that a watch showed a child (added, changed or deleted): its uid satisfies the
        expectation of the round that created it, even if it is gone again by the next round."""
        meta = body.get("metadata") or {}
        uid, name = meta.get("uid"), meta.get("name")
        if namespace is None or pipeline is None or (namespace, pipeline) not in self.wakers:
            return
        if uid and name:
            self.shown.setdefault((namespace, pipeline), {})[(kind, name)] = str(uid)

    def wake(self, namespace: str | None, name: str | None) -> None:
        """Run the pipeline's round soon (a change to it or to one of its children)."""
        if namespace is not None and name is not None:
            waker = self.wakers.get((namespace, name))
            if waker is not None:
                waker.set()

    async def close(self) -> None:
        """Release connections."""
        await self.observer.close()
        await self.client.close()
        await self.http.close()


async def run_round(
    state: OperatorState,
    body: kopf.Body,
    indexes: ChildIndexes,
    memory: Memory,
    *,
    tick: float | None,
) -> Memory:
    """One round of a pipeline. A timer round (`tick`: the time it was due) reads the load if a
    reading is due, and counts its time from the tick: readings are then exactly an interval
    apart, whatever the event loop's delays."""
    state.rounds += 1
    pipeline = decision.read_pipeline(body)
    children = children_of(
        indexes,
        pipeline.namespace,
        pipeline.name,
        state.shown.get((pipeline.namespace, pipeline.name)),
    )
    now = time.monotonic() if tick is None else tick
    spec = pipeline.spec
    load = None
    # First the referenced Secrets (cached; the load's queue read uses the DATABASE_URL read here).
    secrets = None
    if spec is not None:
        secrets = await state.observer.secret_versions(pipeline.namespace, pipeline.name, spec)
    stored = replace(pipeline, status=memory.status or pipeline.status)
    if (
        spec is not None
        and tick is not None
        and decision.reading_due(memory, now, decision.round_interval(stored))
    ):
        load = await state.observer.read_load(pipeline, spec, children, memory, at=now)
    monitoring = True
    if spec is not None and spec.metrics.pod_monitor.enabled:
        monitoring = await state.observer.has_monitoring()
    wall = datetime.now(tz=UTC)
    decided, memory = decision.decide(
        pipeline,
        children,
        memory,
        load=load,
        now=now,
        wall=wall,
        monitoring=monitoring,
        secrets=secrets,
    )
    if decided.undo is not None and spec is not None:
        reprocessed = await state.observer.reprocess(pipeline, spec, decided.undo)
        if reprocessed is not None:
            decided = decided.undone(reprocessed, wall)
    return await apply_round(state.client, body, pipeline, decided, memory, wall)


def next_reading(last: float | None, interval: float, aligned: bool, now: float) -> float:
    """When the timer next wakes the round (monotonic): an interval after the last timer round
    (`last`), or, `aligned`, the first tick of the shared grid (k·interval) at least half an
    interval after it."""
    if last is None:
        return now
    if not aligned:
        return max(now, last + interval)
    earliest = max(now, last + interval / 2)
    return math.ceil(earliest / interval) * interval


def aligned(body: Mapping[str, Any]) -> bool:
    """Whether the pipeline's readings fall on the shared grid: with the Prometheus source, so
    that one batch of queries answers every pipeline of a namespace. Scraping pods, each pipeline
    keeps its own rhythm (from its creation), so the scrapes do not all come at once."""
    metrics = (body.get("spec") or {}).get("metrics") or {}
    return bool(metrics.get("source") == "prometheus")


async def run_pipeline(
    state: OperatorState,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    indexes: ChildIndexes,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Run a pipeline's rounds until its daemon is stopped (deletion or operator exit)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    waker = state.wakers[key] = asyncio.Event()
    memory = Memory()
    stop = asyncio.ensure_future(stopped.wait())
    tick: float | None = time.monotonic()
    last = None
    try:
        while not stopped:
            waker.clear()
            if tick is not None:
                last = tick
            try:
                memory = await run_round(state, body, indexes, memory, tick=tick)
            except (cluster.ApiError, aiohttp.ClientError, TimeoutError, kopf.LoginError) as exc:
                # The next round retries (a failed renewal of the credentials too); a failed
                # round never changes the worker count.
                logger.warning("round failed: %s", exc)
            pipeline = decision.read_pipeline(body)
            interval = decision.round_interval(
                replace(pipeline, status=memory.status or pipeline.status)
            )
            now = time.monotonic()
            due = next_reading(last, interval, aligned(body), now)
            woken = asyncio.ensure_future(waker.wait())
            await asyncio.wait(
                {woken, stop}, timeout=max(0.0, due - now), return_when="FIRST_COMPLETED"
            )
            woken.cancel()
            tick = due if time.monotonic() >= due - 0.001 else None
            if tick is None and not stopped:
                await asyncio.sleep(SETTLE_SECONDS)
    finally:
        stop.cancel()
        if state.wakers.get(key) is waker:
            del state.wakers[key]
            state.shown.pop(key, None)


# The Prometheus source's per-revision readings over the last `window_s` seconds.
PromqlCounters = Callable[[float], Awaitable[dict[str, telemetry.RevisionIncrease] | None]]


async def judge(
    window: AnalysisWindow | None,
    *,
    now: float,
    interval_s: float,
    canary: str,
    stable: str,
    targets: list[telemetry.PodTarget],
    readings: list[telemetry.WorkerReading | None],
    canary_desired: int,
    policy: rollout.RolloutPolicy,
    promql: PromqlCounters | None = None,
) -> tuple[rollout.IntervalResult | None, AnalysisWindow]:
    """`decision.judge`, reading the Prometheus source's increases first when `promql` is given
    and an interval is due (as a round's observation does)."""
    increases = None
    due = window is not None and now - window.started >= interval_s * decision.INTERVAL_SLACK
    if promql is not None and window is not None and due:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            increases = await promql(now - window.started)
    return decision.judge(
        window,
        now=now,
        interval_s=interval_s,
        canary=canary,
        stable=stable,
        targets=targets,
        readings=readings,
        canary_desired=canary_desired,
        policy=policy,
        prometheus=promql is not None,
        increases=increases,
    )
