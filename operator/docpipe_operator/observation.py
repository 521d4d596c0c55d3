"""What a round observes: a pipeline's children from the indexes its watches keep, and the
workers' load (each pod's /metrics, Prometheus batched per namespace, or the queue table).

Nothing here reads a child from the API: the watches (Kopf indexes, see `handlers`) hold them.
The only reads are of load, at most once per interval per pipeline, and of the Secrets a
pipeline references: each by name (GET, never a list or a watch), at most once per refresh
interval, shared by every pipeline that references it. Their data's hash rolls the workers when it
changes; the database URL also serves to read the queue of a pipeline with no ready worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from docpipe_operator import cluster, rendering, telemetry
from docpipe_operator.decision import (
    SECRET_MISSING,
    SECRET_UNREADABLE,
    Children,
    Load,
    Memory,
    Pipeline,
    analysis_due,
)
from docpipe_operator.model import DocumentPipelineSpec, SecretKeyRef
from docpipe_operator.scaling import MetricsSnapshot

log = logging.getLogger(__name__)

MONITORING_GROUP = "monitoring.coreos.com"
# A missing monitoring API is re-checked this often, so installing it later is noticed.
DISCOVERY_TTL_SECONDS = 60.0
# A Secret is read again after this long (the default of SecretsPolicy.refresh_seconds), and a
# missing one, or one whose read failed, after this long.
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


@dataclass(frozen=True)
class SecretsPolicy:
    """Whether the operator reads the Secrets pipelines reference (`docpipe operator --secrets`),
    and how often each is read again."""

    read: bool = True
    refresh_seconds: float = SECRET_TTL_SECONDS


# What a read of a Secret found.
FOUND, MISSING, FORBIDDEN, UNKNOWN = "found", "missing", "forbidden", "unknown"


@dataclass(frozen=True)
class SecretRead:
    """One Secret as last read: its data (found), or why there is none; good until `expires`."""

    state: str  # FOUND, MISSING, FORBIDDEN, UNKNOWN (the read failed, nothing read before)
    expires: float  # monotonic
    data: Mapping[str, str] = field(default_factory=dict)  # key → base64, as the API gives it
    # stringData: only where an API (an emulator) returns what it was given.
    string_data: Mapping[str, str] = field(default_factory=dict)


def key_version(read: SecretRead | None, key: str) -> str | None:
    """The version of one key of a Secret: a hash of its value; a fixed word when the Secret is
    missing or may not be read (both steady: no roll until that changes); None when unknown."""
    if read is None or read.state == UNKNOWN:
        return None
    if read.state == MISSING:
        return SECRET_MISSING
    if read.state == FORBIDDEN:
        return SECRET_UNREADABLE
    value = read.data.get(key)
    if value is None:
        value = read.string_data.get(key)
    if value is None:
        return "no-key"
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def key_versions(
    reads: Mapping[str, SecretRead | None], refs: Iterable[SecretKeyRef]
) -> dict[tuple[str, str], str | None]:
    """(Secret, key) → version for each reference, from the reads of the Secrets by name."""
    return {(r.name, r.key): key_version(reads.get(r.name), r.key) for r in refs}


def read_expiry(state: str, now: float, refresh_s: float) -> float:
    """When a read's answer goes stale: found or forbidden after the refresh interval; missing
    or failed sooner, since a fix should show quickly."""
    if state in (FOUND, FORBIDDEN):
        return now + refresh_s
    return now + min(refresh_s, MISSING_SECRET_TTL_SECONDS)


def refresh_due(
    reads: Mapping[str, SecretRead | None], last: float | None, now: float, refresh_s: float
) -> str | None:
    """Which of a pipeline's Secrets (by name → last read) to read again now: the stalest of the
    expired ones, unless the pipeline had one read again less than `refresh_s` ago."""
    if last is not None and now - last < refresh_s:
        return None
    expired = [(r.expires, n) for n, r in reads.items() if r is not None and now >= r.expires]
    return min(expired)[1] if expired else None


# Where the operator keeps the pipelines' database CAs (its /tmp is an emptyDir in the chart).
CA_FOLDER = Path(tempfile.gettempdir()) / "docpipe-database-ca"


def url_with_ca(url: str, ca_file: str) -> str:
    """A postgres URL verifying the server against `ca_file`, as a worker with the CA mounted
    does (PGSSLROOTCERT, PGSSLMODE=verify-full): the URL's own sslrootcert and sslmode win."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {k for k, _ in query}
    if "sslrootcert" not in names:
        query.append(("sslrootcert", ca_file))
    if "sslmode" not in names:
        query.append(("sslmode", "verify-full"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_suffix(".tmp")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)


@dataclass
class _Batch:
    started: float
    answer: asyncio.Future[dict[str, telemetry.LoadRows] | None]


class Observer:
    """Reads the load of pipelines, with the caches that keep the API and Prometheus quiet."""

    def __init__(
        self,
        client: cluster.KubeClient,
        http: aiohttp.ClientSession,
        *,
        secrets: SecretsPolicy | None = None,
    ) -> None:
        self.client = client
        self.http = http
        self.secrets = secrets or SecretsPolicy()
        self.queues = telemetry.QueueReader()
        self._monitoring: tuple[float, bool] | None = None
        self._secrets: dict[tuple[str, str], SecretRead] = {}
        self._secret_reads: dict[tuple[str, str], asyncio.Future[SecretRead]] = {}
        # (namespace, pipeline) → when a stale Secret was last read again for it.
        self._refreshed: dict[tuple[str, str], float] = {}
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

    async def secret_versions(
        self, namespace: str, pipeline: str, spec: DocumentPipelineSpec
    ) -> dict[tuple[str, str], str | None] | None:
        """(Secret, key) → version of every Secret key the pipeline's workers read; None when
        the operator does not read Secrets. A Secret never read is read at once; of the stale
        ones, the stalest is read again, and only if this pipeline has not had one read in the
        last refresh interval: so each Secret costs at most a read per interval, and each pipeline
        too (its own Secrets take turns), whatever it references."""
        if not self.secrets.read:
            return None
        refs = rendering.referenced_secret_keys(spec)
        names = sorted({r.name for r in refs})
        now = time.monotonic()
        due = refresh_due(
            {n: self._secrets.get((namespace, n)) for n in names},
            self._refreshed.get((namespace, pipeline)),
            now,
            self.secrets.refresh_seconds,
        )
        if due is not None:
            self._refreshed[(namespace, pipeline)] = now
        reads = {n: await self._read_secret(namespace, n, refresh=n == due) for n in names}
        return key_versions(reads, refs)

    async def _read_secret(self, namespace: str, name: str, *, refresh: bool = True) -> SecretRead:
        """The Secret as last read, read again when stale (and `refresh`); read now if never
        read; concurrent rounds share one read."""
        key = (namespace, name)
        cached = self._secrets.get(key)
        if cached is not None and (not refresh or time.monotonic() < cached.expires):
            return cached
        pending = self._secret_reads.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_secret(namespace, name, cached))
            self._secret_reads[key] = pending
            pending.add_done_callback(lambda _: self._secret_reads.pop(key, None))
        return await asyncio.shield(pending)

    async def _fetch_secret(
        self, namespace: str, name: str, cached: SecretRead | None
    ) -> SecretRead:
        refresh = self.secrets.refresh_seconds
        try:
            secret = await self.client.get(cluster.SECRETS, namespace, name)
        except cluster.ApiError as exc:
            if exc.status != 403:
                return self._failed(namespace, name, cached, str(exc))
            if cached is None or cached.state != FORBIDDEN:
                log.warning(
                    "Secret %s/%s may not be read (403): a change to it will not roll the "
                    "workers; grant get on it (see docs/kubernetes.md, Secrets)",
                    namespace,
                    name,
                )
            read = SecretRead(FORBIDDEN, read_expiry(FORBIDDEN, time.monotonic(), refresh))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(namespace, name, cached, str(exc) or type(exc).__name__)
        else:
            now = time.monotonic()
            if secret is None:
                read = SecretRead(MISSING, read_expiry(MISSING, now, refresh))
            else:
                read = SecretRead(
                    FOUND,
                    read_expiry(FOUND, now, refresh),
                    {k: str(v) for k, v in (secret.get("data") or {}).items()},
                    {k: str(v) for k, v in (secret.get("stringData") or {}).items()},
                )
        self._secrets[(namespace, name)] = read
        return read

    def _failed(
        self, namespace: str, name: str, cached: SecretRead | None, error: str
    ) -> SecretRead:
        """A read that failed: what was read before holds (unknown if nothing), tried again soon."""
        log.warning("reading Secret %s/%s failed: %s", namespace, name, error)
        expires = read_expiry(UNKNOWN, time.monotonic(), self.secrets.refresh_seconds)
        read = SecretRead(UNKNOWN, expires) if cached is None else replace(cached, expires=expires)
        self._secrets[(namespace, name)] = read
        return read

    async def _with_queue(
        self,
        snapshot: MetricsSnapshot,
        namespace: str,
        name: str,
        spec: DocumentPipelineSpec,
        timeout_s: float,
    ) -> MetricsSnapshot:
        url = await self._database_url(namespace, spec)
        if url is None:
            return snapshot
        try:
            return replace(snapshot, queue=await self.queues.read(url, name, timeout_s=timeout_s))
        except Exception as exc:  # OSError, TimeoutError, ValueError, asyncpg's many errors
            log.warning("pipeline %s/%s: reading the queue failed: %s", namespace, name, exc)
            return snapshot

    async def reprocess(
        self, pipeline: Pipeline, spec: DocumentPipelineSpec, revision: str
    ) -> int | None:
        """Re-enqueue the documents whose chunks a rolled-back `revision` wrote, for the stable
        revision; their number, or None when the database could not be reached (the next round
        tries again: the status records only an undo that was done)."""
        url = await self._database_url(pipeline.namespace, spec)
        if url is None:
            return None
        try:
            return await self.queues.reprocess(url, pipeline.name, revision)
        except Exception as exc:  # OSError, TimeoutError, ValueError, asyncpg's many errors
            log.warning(
                "pipeline %s/%s: re-enqueueing the documents of revision %s failed: %s",
                pipeline.namespace,
                pipeline.name,
                revision,
                exc,
            )
            return None

    async def _database_url(self, namespace: str, spec: DocumentPipelineSpec) -> str | None:
        """The pipeline's DATABASE_URL; with database.caSecretRef, verifying the server against
        that CA as the workers do (the CA written to a file of the operator's /tmp)."""
        ref = spec.database.url_secret_ref
        url = await self._secret(namespace, ref.name, ref.key)
        ca = spec.database.ca_secret_ref
        if url is None or ca is None:
            return url
        pem = await self._secret(namespace, ca.name, ca.key)
        if pem is None:
            return url
        path = CA_FOLDER / f"{hashlib.sha256(pem.encode()).hexdigest()[:16]}.crt"
        if not path.exists():
            await asyncio.to_thread(_write_private, path, pem)
        return url_with_ca(url, str(path))

    async def _secret(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded (the same reads as `secret_versions`); None when the
        operator does not read Secrets, or the Secret or key is not there."""
        if not self.secrets.read:
            return None
        # What `secret_versions` keeps fresh (each round reads them before the load): no read of
        # its own beyond the first.
        read = await self._read_secret(namespace, name, refresh=False)
        if read.state != FOUND:
            return None
        return telemetry.secret_value(
            {"data": dict(read.data), "stringData": dict(read.string_data)}, key
        )

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
