"""What a round observes: a pipeline's children from the indexes its watches keep, and the
workers' load (each pod's /metrics, Prometheus batched per namespace, or the queue table).

Nothing here reads a child from the API: the watches (Kopf indexes, see `handlers`) hold them.
The only reads are of load, at most once per interval per pipeline, and of the database
Secret of a pipeline with no ready worker (cached).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from docpipe_operator import cluster, telemetry
from docpipe_operator.decision import Children, Load, Memory, Pipeline, analysis_due
from docpipe_operator.model import DocumentPipelineSpec
from docpipe_operator.scaling import MetricsSnapshot

log = logging.getLogger(__name__)

MONITORING_GROUP = "monitoring.coreos.com"
# A missing monitoring API is re-checked this often, so installing it later is noticed.
DISCOVERY_TTL_SECONDS = 60.0
# A pipeline's database Secret is read again after this long (found) or this long (missing).
SECRET_TTL_SECONDS = 60.0
MISSING_SECRET_TTL_SECONDS = 10.0
# With the Prometheus source, the rounds of a namespace's pipelines fall on the same tick (see
# `reconciler.next_reading`); one batch of queries answers every round within this long.
BATCH_REUSE_SECONDS = 1.0

# What a pipeline's child indexes map: the child kind → the objects of each (namespace, pipeline).
ChildIndexes = Mapping[str, Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]]
PODS = "Pod"


def children_of(
    indexes: ChildIndexes,
    namespace: str,
    name: str,
    shown: Mapping[tuple[str, str], str] | None = None,
) -> Children:
    """A pipeline's children as the watches last saw them (`shown`: the uid of the last object
    of each (kind, name) the watches showed, deleted since or not)."""
    key = (namespace, name)
    objects: dict[tuple[str, str], Mapping[str, Any]] = {}
    pods: tuple[Mapping[str, Any], ...] = ()
    for kind, index in indexes.items():
        found = index.get(key) or ()
        if kind == PODS:
            pods = tuple(sorted(found, key=lambda p: str(p["metadata"]["name"])))
            continue
        for obj in found:
            objects[(kind, obj["metadata"]["name"])] = obj
    return Children(objects, pods, dict(shown or {}))


def pod_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the rounds need of a pod (kept in the index in place of the whole object)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return {
        "metadata": {
            k: meta[k] for k in ("name", "labels", "annotations", "deletionTimestamp") if k in meta
        },
        "status": {
            k: status[k]
            for k in ("phase", "podIP", "conditions", "containerStatuses")
            if k in status
        },
    }


@dataclass
class _Batch:
    started: float
    answer: asyncio.Future[dict[str, telemetry.LoadRows] | None]


class Observer:
    """Reads the load of pipelines, with the caches that keep the API and Prometheus quiet."""

    def __init__(self, client: cluster.KubeClient, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.http = http
        self.queues = telemetry.QueueReader()
        self._monitoring: tuple[float, bool] | None = None
        self._secrets: dict[tuple[str, str, str], tuple[float, str | None]] = {}
        self._batches: dict[tuple[str, str], _Batch] = {}
        self.prometheus_batches = 0  # batches queried (for the benchmark and the tests)

    async def has_monitoring(self) -> bool:
        """Whether the cluster serves PodMonitors (cached for a minute)."""
        now = time.monotonic()
        if self._monitoring is None or now - self._monitoring[0] > DISCOVERY_TTL_SECONDS:
            self._monitoring = (now, await self.client.has_api_group(MONITORING_GROUP))
        return self._monitoring[1]

    async def read_load(
        self,
        pipeline: Pipeline,
        spec: DocumentPipelineSpec,
        children: Children,
        memory: Memory,
        *,
        at: float,
    ) -> Load:
        """Scrape (or query) the workers; with none ready, read the queue from the database.
        `at`: the round's time (monotonic), which the reading carries."""
        now = at
        name, namespace = pipeline.name, pipeline.namespace
        targets = tuple(telemetry.pod_targets(children.pods))
        timeout = float(spec.metrics.scrape_timeout_seconds)
        prometheus = spec.metrics.prometheus if spec.metrics.source == "prometheus" else None
        snapshot: MetricsSnapshot | None
        readings: tuple[telemetry.WorkerReading | None, ...] = ()
        increases = None
        if prometheus is not None:
            rows = await self._namespace_rows(prometheus.url, namespace, timeout, now)
            snapshot = (
                None if rows is None else telemetry.snapshot_from_rows(rows.get(name, {}), targets)
            )
            due = analysis_due(memory, pipeline, now)
            if due is not None:
                increases = await telemetry.query_revision_increases(
                    self.http,
                    prometheus.url,
                    window_s=due[1],
                    timeout_s=timeout,
                    namespace=namespace,
                    pipeline=name,
                )
        else:
            readings = tuple(
                await telemetry.scrape_readings(
                    self.http,
                    targets,
                    port=spec.worker.metrics_port,
                    timeout_s=timeout,
                    pipeline=name,
                )
            )
            snapshot = telemetry.snapshot_of(targets, readings)
        if snapshot is not None and snapshot.queue is None and not any(t.ready for t in targets):
            # No worker to report the queue: read it from the database (scale from zero).
            snapshot = await self._with_queue(snapshot, namespace, name, spec, timeout)
        return Load(
            at=now,
            snapshot=snapshot,
            targets=targets,
            readings=readings,
            prometheus=prometheus is not None,
            increases=increases,
        )

    async def _with_queue(
        self,
        snapshot: MetricsSnapshot,
        namespace: str,
        name: str,
        spec: DocumentPipelineSpec,
        timeout_s: float,
    ) -> MetricsSnapshot:
        ref = spec.database.url_secret_ref
        url = await self._secret(namespace, ref.name, ref.key)
        if url is None:
            return snapshot
        try:
            return replace(snapshot, queue=await self.queues.read(url, name, timeout_s=timeout_s))
        except Exception as exc:  # OSError, TimeoutError, ValueError, asyncpg's many errors
            log.warning("pipeline %s/%s: reading the queue failed: %s", namespace, name, exc)
            return snapshot

    async def _secret(self, namespace: str, name: str, key: str) -> str | None:
        now = time.monotonic()
        cached = self._secrets.get((namespace, name, key))
        if cached is not None:
            ttl = SECRET_TTL_SECONDS if cached[1] is not None else MISSING_SECRET_TTL_SECONDS
            if now - cached[0] < ttl:
                return cached[1]
        secret = await self.client.get(cluster.SECRETS, namespace, name)
        value = telemetry.secret_value(secret, key) if secret is not None else None
        self._secrets[(namespace, name, key)] = (now, value)
        return value

    async def _namespace_rows(
        self, url: str, namespace: str, timeout_s: float, now: float
    ) -> dict[str, telemetry.LoadRows] | None:
        """The namespace's batch of load queries: one per tick, shared by its pipelines."""
        key = (url, namespace)
        batch = self._batches.get(key)
        if batch is None or now - batch.started > BATCH_REUSE_SECONDS:
            self.prometheus_batches += 1
            answer = asyncio.ensure_future(
                telemetry.query_namespace_load(
                    self.http, url, timeout_s=timeout_s, namespace=namespace
                )
            )
            batch = self._batches[key] = _Batch(now, answer)
        return await asyncio.shield(batch.answer)

    async def close(self) -> None:
        """Release the database pools; forget pending batches."""
        for batch in self._batches.values():
            batch.answer.cancel()
        self._batches.clear()
        await self.queues.close()
