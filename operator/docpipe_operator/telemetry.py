"""Reading the workers' load: their /metrics, Prometheus, or the queue table itself.

Metric names come from `docpipe_contracts.metrics` (the one module that names them); this module
only fetches and parses, and returns the `MetricsSnapshot` the pure scaling decision takes.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from docpipe_contracts import metrics
from docpipe_operator.quality import GoldenFigures, OutputCounters
from docpipe_operator.rendering import LABEL_REVISION, LABEL_TRACK, TRACK_CANARY
from docpipe_operator.rollout import RevisionCounters
from docpipe_operator.scaling import MetricsSnapshot, PodMetrics, QueueMetrics, QuotaKey
from docpipe_queue import reprocessing, statistics

IN_FLIGHT = metrics.JOBS_IN_FLIGHT.name
SUCCEEDED = metrics.JOBS_SUCCEEDED.name
QUEUE_READY = metrics.QUEUE_READY.name
QUEUE_OLDEST = metrics.QUEUE_OLDEST_READY_AGE.name
CLAIMED = metrics.JOBS_CLAIMED.name
RETRIED = metrics.JOBS_RETRIED.name
DEAD = metrics.JOBS_DEAD.name
STAGE_SECONDS = metrics.STAGE_SECONDS.name
QUOTA_LIMIT = metrics.QUOTA_LIMIT_PER_MINUTE.name
QUOTA_USED = metrics.QUOTA_USED.name
QUOTA_WAIT = metrics.QUOTA_WAIT_SECONDS.name
QUOTA_HELD = metrics.QUOTA_HELD.name
PIPELINE_LABEL = metrics.PIPELINE_LABEL
REVISION_LABEL = metrics.REVISION_LABEL
# The output counters (family name → OutputCounters field) the output analysis compares.
OUTPUT_FIELDS = {
    metrics.OUTPUT_DOCUMENTS.name: "documents",
    metrics.OUTPUT_INPUT_BYTES.name: "input_bytes",
    metrics.OUTPUT_EXTRACTED_CHARS.name: "extracted_chars",
    metrics.OUTPUT_CHUNKS.name: "chunks",
    metrics.OUTPUT_EMPTY_DOCUMENTS.name: "empty_documents",
    metrics.OUTPUT_VECTORS.name: "vectors",
    metrics.OUTPUT_DEGENERATE_VECTORS.name: "degenerate_vectors",
}
VECTOR_NORM = metrics.OUTPUT_VECTOR_NORM.name
# The golden set gauges a canary worker exports (family name → GoldenFigures field).
GOLDEN_FIELDS = {
    metrics.GOLDEN_TEXT_OVERLAP.name: "text_overlap",
    metrics.GOLDEN_CHUNK_RATIO.name: "chunk_ratio",
    metrics.GOLDEN_COSINE.name: "cosine",
    metrics.GOLDEN_RECALL.name: "recall",
    metrics.GOLDEN_STABLE_RECALL.name: "stable_recall",
}


def golden_figures(values: Mapping[str, float]) -> GoldenFigures | None:
    """The figures of the golden gauges read (field → value); None without the three that are
    always set."""
    if not {"text_overlap", "chunk_ratio", "cosine"} <= set(values):
        return None
    return GoldenFigures(
        text_overlap=values["text_overlap"],
        chunk_ratio=values["chunk_ratio"],
        cosine=values["cosine"],
        recall=values.get("recall"),
        stable_recall=values.get("stable_recall"),
    )


@dataclass(frozen=True)
class PodTarget:
    """A worker pod as the API lists it: where to scrape it and whether it is ready."""

    name: str
    ip: str | None
    ready: bool
    revision: str | None = None
    restarts: int = 0  # container restarts, summed over the pod's containers
    canary: bool = False  # a pod of the canary Deployment


def pod_targets(pods: Iterable[Mapping[str, Any]]) -> list[PodTarget]:
    """The worker pods that count: not being deleted, not finished."""
    targets = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses", []))
        labels = meta.get("labels") or {}
        canary = labels.get(LABEL_TRACK) == TRACK_CANARY
        targets.append(
            PodTarget(
                meta["name"],
                status.get("podIP"),
                ready,
                labels.get(LABEL_REVISION),
                restarts,
                canary,
            )
        )
    return targets


@dataclass(frozen=True)
class WorkerReading:
    """What one worker's /metrics says about a pipeline."""

    in_flight: float
    succeeded: float
    queue: QueueMetrics | None
    # Revision → the canary analysis' counters of that revision in this worker.
    revisions: dict[str, RevisionCounters] = field(default_factory=dict)
    quota_limits: dict[QuotaKey, float] = field(default_factory=dict)  # per minute
    quota_used: dict[QuotaKey, float] = field(default_factory=dict)  # counters
    quota_wait_seconds: float = 0.0  # counter, summed over quotas
    quota_held: tuple[str, ...] = ()  # "provider/quota" held for lack of credit


def _quota_key(labels: dict[str, str]) -> QuotaKey:
    return QuotaKey(labels.get("provider", ""), labels.get("quota", ""), labels.get("unit", ""))


def _held_name(labels: dict[str, str]) -> str:
    return f"{labels.get('provider', '')}/{labels.get('quota', '')}"


def _revision_counters(
    claimed: dict[str, float],
    retried: dict[str, float],
    dead: dict[str, float],
    buckets: dict[str, dict[str, dict[float, float]]],
    sums: dict[str, dict[str, float]],
    output: dict[str, dict[str, float]],
    golden: dict[str, dict[str, float]],
) -> dict[str, RevisionCounters]:
    revisions = set(claimed) | set(retried) | set(dead) | set(buckets) | set(output) | set(golden)
    return {
        r: RevisionCounters(
            claimed=claimed.get(r, 0.0),
            retried=retried.get(r, 0.0),
            dead=dead.get(r, 0.0),
            stage_buckets={
                stage: tuple(sorted(counts.items())) for stage, counts in buckets.get(r, {}).items()
            },
            stage_seconds=dict(sums.get(r, {})),
            output=OutputCounters(**output.get(r, {})),
            golden=golden_figures(golden.get(r, {})),
        )
        for r in revisions
    }


def parse_worker_metrics(text: str, pipeline: str) -> WorkerReading:
    """Jobs in flight, jobs succeeded (summed over revisions), the queue gauges of a pipeline,
    per revision the counters the canary analysis compares, and the provider quotas' figures."""
    in_flight = succeeded = quota_wait = 0.0
    limits: dict[QuotaKey, float] = {}
    used: dict[QuotaKey, float] = {}
    held: set[str] = set()
    ready: float | None = None
    oldest = 0.0
    counters: dict[str, dict[str, float]] = {CLAIMED: {}, RETRIED: {}, DEAD: {}}
    buckets: dict[str, dict[str, dict[float, float]]] = {}
    sums: dict[str, dict[str, float]] = {}
    output: dict[str, dict[str, float]] = {}
    golden: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get(PIPELINE_LABEL) != pipeline:
                continue
            revision = sample.labels.get(REVISION_LABEL, "")
            field_name = OUTPUT_FIELDS.get(family.name)
            if family.name == VECTOR_NORM and sample.name.endswith(("_sum", "_count")):
                field_name = "norm_sum" if sample.name.endswith("_sum") else "norm_count"
            elif field_name is not None and not sample.name.endswith("_total"):
                field_name = None
            if field_name is not None:
                by_field = output.setdefault(revision, {})
                by_field[field_name] = by_field.get(field_name, 0.0) + sample.value
                continue
            if family.name in GOLDEN_FIELDS:
                golden.setdefault(revision, {})[GOLDEN_FIELDS[family.name]] = sample.value
                continue
            if family.name in counters and sample.name.endswith("_total"):
                into = counters[family.name]
                into[revision] = into.get(revision, 0.0) + sample.value
            elif family.name == STAGE_SECONDS and sample.name.endswith("_bucket"):
                stage = buckets.setdefault(revision, {}).setdefault(
                    sample.labels.get("stage", ""), {}
                )
                bound = float(sample.labels["le"])
                stage[bound] = stage.get(bound, 0.0) + sample.value
            elif family.name == STAGE_SECONDS and sample.name.endswith("_sum"):
                by_stage = sums.setdefault(revision, {})
                name = sample.labels.get("stage", "")
                by_stage[name] = by_stage.get(name, 0.0) + sample.value
            if family.name == IN_FLIGHT:
                in_flight += sample.value
            elif family.name == SUCCEEDED and sample.name.endswith("_total"):
                succeeded += sample.value
            elif family.name == QUEUE_READY:
                ready = sample.value
            elif family.name == QUEUE_OLDEST:
                oldest = sample.value
            elif family.name == QUOTA_LIMIT:
                key = _quota_key(sample.labels)
                limits[key] = max(limits.get(key, 0.0), sample.value)
            elif family.name == QUOTA_USED and sample.name.endswith("_total"):
                key = _quota_key(sample.labels)
                used[key] = used.get(key, 0.0) + sample.value
            elif family.name == QUOTA_WAIT and sample.name.endswith("_total"):
                quota_wait += sample.value
            elif family.name == QUOTA_HELD and sample.value > 0:
                held.add(_held_name(sample.labels))
    q = (
        QueueMetrics(ready_jobs=ready, oldest_ready_age_seconds=oldest)
        if ready is not None
        else None
    )
    revisions = _revision_counters(
        counters[CLAIMED], counters[RETRIED], counters[DEAD], buckets, sums, output, golden
    )
    return WorkerReading(
        in_flight,
        succeeded,
        q,
        revisions,
        quota_limits=limits,
        quota_used=used,
        quota_wait_seconds=quota_wait,
        quota_held=tuple(sorted(held)),
    )


async def _scrape_one(
    session: aiohttp.ClientSession, target: PodTarget, port: int, timeout_s: float, pipeline: str
) -> WorkerReading | None:
    if target.ip is None:
        return None
    try:
        async with session.get(
            f"http://{target.ip}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                return None
            return parse_worker_metrics(await response.text(), pipeline)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def _combine(
    targets: Sequence[PodTarget], readings: Sequence[WorkerReading | None]
) -> MetricsSnapshot:
    pods = []
    queues = []
    limits: dict[QuotaKey, float] = {}
    held: set[str] = set()
    for target, reading in zip(targets, readings, strict=True):
        if reading is None:
            pods.append(PodMetrics(target.name, target.ready))
            continue
        pods.append(
            PodMetrics(
                target.name,
                target.ready,
                reading.in_flight,
                reading.succeeded,
                quota_used=reading.quota_used,
                quota_wait_seconds=reading.quota_wait_seconds,
            )
        )
        if reading.queue is not None:
            queues.append(reading.queue)
        # Every worker of a quota reports the same limit (one learned from headers may lag in
        # some): the highest seen is the one in force.
        for key, limit in reading.quota_limits.items():
            limits[key] = max(limits.get(key, 0.0), limit)
        held.update(reading.quota_held)
    # Every worker exports the same queue gauges, read at slightly different times: the highest
    # figures are the safe ones for sizing.
    merged = (
        QueueMetrics(
            ready_jobs=max(q.ready_jobs for q in queues),
            oldest_ready_age_seconds=max(q.oldest_ready_age_seconds for q in queues),
        )
        if queues
        else None
    )
    return MetricsSnapshot(
        pods=tuple(pods), queue=merged, quota_limits=limits, quota_held=tuple(sorted(held))
    )


async def scrape_readings(
    session: aiohttp.ClientSession,
    targets: Sequence[PodTarget],
    *,
    port: int,
    timeout_s: float,
    pipeline: str,
) -> list[WorkerReading | None]:
    """Every pod's reading, scraped at once, each within `timeout`; None where a scrape failed."""
    return list(
        await asyncio.gather(*(_scrape_one(session, t, port, timeout_s, pipeline) for t in targets))
    )


def snapshot_of(
    targets: Sequence[PodTarget], readings: Sequence[WorkerReading | None]
) -> MetricsSnapshot:
    """The scaling snapshot of scraped readings (`scrape_readings`)."""
    return _combine(targets, readings)


async def scrape_pods(
    session: aiohttp.ClientSession,
    targets: Sequence[PodTarget],
    *,
    port: int,
    timeout_s: float,
    pipeline: str,
) -> MetricsSnapshot:
    """Scrape every pod's /metrics at once, each within `timeout`; failures read as unscraped."""
    readings = await scrape_readings(
        session, targets, port=port, timeout_s=timeout_s, pipeline=pipeline
    )
    return _combine(targets, readings)


def _promql_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _selector(namespace: str, pipeline: str) -> str:
    # The `namespace` and `pod` target labels are the ones a prometheus-operator PodMonitor (and
    # the usual kubernetes_sd relabelling) attaches; without `namespace`, two pipelines of one
    # name in two namespaces would read each other's queue.
    return (
        f'{{namespace="{_promql_label(namespace)}",{PIPELINE_LABEL}="{_promql_label(pipeline)}"}}'
    )


async def _instant(
    session: aiohttp.ClientSession, base_url: str, query: str, timeout_s: float
) -> list[dict[str, Any]]:
    async with session.get(
        f"{base_url.rstrip('/')}/api/v1/query",
        params={"query": query},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        response.raise_for_status()
        answer = await response.json()
    if answer.get("status") != "success" or answer["data"].get("resultType") != "vector":
        raise ValueError(f"unexpected Prometheus answer to {query!r}: {answer!r:.200}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def _instants(
    session: aiohttp.ClientSession, base_url: str, queries: dict[str, str], timeout_s: float
) -> dict[str, list[dict[str, Any]]] | None:
    """Every query's result vector, run at once; None if Prometheus did not answer them all."""
    try:
        answers = await asyncio.gather(
            *(_instant(session, base_url, q, timeout_s) for q in queries.values())
        )
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return None
    return dict(zip(queries, answers, strict=True))


def _value(row: dict[str, Any]) -> float:
    return float(row["value"][1])


def _load_queries(selector: str, by: str = "") -> dict[str, str]:
    """The load's instant queries; `by` adds a grouping label (the namespace's batch adds the
    pipeline's)."""
    extra = f"{by}, " if by else ""
    return {
        "in_flight": f"sum by ({extra}pod) ({IN_FLIGHT}{selector})",
        "succeeded": f"sum by ({extra}pod) ({SUCCEEDED}_total{selector})",
        "ready": f"max{f' by ({by})' if by else ''}({QUEUE_READY}{selector})",
        "oldest": f"max{f' by ({by})' if by else ''}({QUEUE_OLDEST}{selector})",
        "quota_limit": f"max by ({extra}provider, quota, unit) ({QUOTA_LIMIT}{selector})",
        "quota_used": f"sum by ({extra}pod, provider, quota, unit) ({QUOTA_USED}_total{selector})",
        "quota_wait": f"sum by ({extra}pod) ({QUOTA_WAIT}_total{selector})",
        "quota_held": f"max by ({extra}provider, quota) ({QUOTA_HELD}{selector}) > 0",
    }


# One pipeline's rows of each load query (see `_load_queries`).
LoadRows = dict[str, list[dict[str, Any]]]


async def query_prometheus(
    session: aiohttp.ClientSession,
    base_url: str,
    targets: Sequence[PodTarget],
    *,
    timeout_s: float,
    namespace: str,
    pipeline: str,
) -> MetricsSnapshot | None:
    """The same snapshot from PromQL instant queries (pods matched by the `pod` label, the
    pipeline's namespace by `namespace`); None when Prometheus does not answer."""
    results = await _instants(
        session, base_url, _load_queries(_selector(namespace, pipeline)), timeout_s
    )
    return None if results is None else snapshot_from_rows(results, targets)


async def query_namespace_load(
    session: aiohttp.ClientSession, base_url: str, *, timeout_s: float, namespace: str
) -> dict[str, LoadRows] | None:
    """The load queries of every pipeline of a namespace at once (eight queries, whatever the
    number of pipelines), split by pipeline; None when Prometheus does not answer."""
    selector = f'{{namespace="{_promql_label(namespace)}"}}'
    results = await _instants(
        session, base_url, _load_queries(selector, by=PIPELINE_LABEL), timeout_s
    )
    if results is None:
        return None
    split: dict[str, LoadRows] = {}
    for key, rows in results.items():
        for row in rows:
            pipeline = row["metric"].get(PIPELINE_LABEL, "")
            split.setdefault(pipeline, {k: [] for k in results})[key].append(row)
    return split


def snapshot_from_rows(results: LoadRows, targets: Sequence[PodTarget]) -> MetricsSnapshot:
    """The snapshot of one pipeline's rows of the load queries."""

    def rows(key: str) -> list[dict[str, Any]]:
        return results.get(key) or []

    def by_pod(found: list[dict[str, Any]]) -> dict[str, float]:
        return {r["metric"].get("pod", ""): _value(r) for r in found}

    in_flight, succeeded = by_pod(rows("in_flight")), by_pod(rows("succeeded"))
    wait = by_pod(rows("quota_wait"))
    used: dict[str, dict[QuotaKey, float]] = {}
    for row in rows("quota_used"):
        labels = row["metric"]
        used.setdefault(labels.get("pod", ""), {})[_quota_key(labels)] = _value(row)
    limits = {_quota_key(r["metric"]): _value(r) for r in rows("quota_limit")}
    held = tuple(sorted({_held_name(r["metric"]) for r in rows("quota_held")}))
    readings: list[WorkerReading | None] = []
    for target in targets:
        if target.name in in_flight and target.name in succeeded:
            readings.append(
                WorkerReading(
                    in_flight[target.name],
                    succeeded[target.name],
                    None,
                    quota_limits=limits,
                    quota_used=used.get(target.name, {}),
                    quota_wait_seconds=wait.get(target.name, 0.0),
                    quota_held=held,
                )
            )
        else:
            readings.append(None)
    snapshot = _combine(targets, readings)
    if rows("ready"):
        oldest = _value(rows("oldest")[0]) if rows("oldest") else 0.0
        snapshot = replace(snapshot, queue=QueueMetrics(_value(rows("ready")[0]), oldest))
    return snapshot


@dataclass(frozen=True)
class RevisionIncrease:
    """One revision's counters over an analysis interval, as PromQL's increase() gives them."""

    claimed: float = 0.0
    retried: float = 0.0
    dead: float = 0.0
    stage_p95_s: float | None = None  # the slowest stage's p95; None when no stage finished
    output: OutputCounters = field(default_factory=OutputCounters)
    golden: GoldenFigures | None = None  # the canary pods' latest golden set comparison


async def query_revision_increases(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    window_s: float,
    timeout_s: float,
    namespace: str,
    pipeline: str,
) -> dict[str, RevisionIncrease] | None:
    """Per `revision` label: jobs claimed, retried and dead over the last `window_s`, and the
    slowest stage's p95 over it (histogram_quantile of the buckets' increase); None when
    Prometheus does not answer."""
    selector = _selector(namespace, pipeline)
    window = f"[{max(1, round(window_s * 1000))}ms]"
    buckets = (
        f"sum by ({REVISION_LABEL}, stage, le) (increase({STAGE_SECONDS}_bucket{selector}{window}))"
    )
    results = await _instants(
        session,
        base_url,
        {
            **{
                family: f"sum by ({REVISION_LABEL}) (increase({family}_total{selector}{window}))"
                for family in (CLAIMED, RETRIED, DEAD)
            },
            "p95": f"max by ({REVISION_LABEL}) (histogram_quantile(0.95, {buckets}))",
            **{
                family: f"sum by ({REVISION_LABEL}) (increase({family}_total{selector}{window}))"
                for family in OUTPUT_FIELDS
            },
            **{
                f"{VECTOR_NORM}_{part}": f"sum by ({REVISION_LABEL})"
                f" (increase({VECTOR_NORM}_{part}{selector}{window}))"
                for part in ("sum", "count")
            },
            **{
                family: f"max by ({REVISION_LABEL}) ({family}{selector})"
                for family in GOLDEN_FIELDS
            },
        },
        timeout_s,
    )
    if results is None:
        return None
    figures: dict[str, dict[str, float]] = {}
    for key, rows in results.items():
        for row in rows:
            revision = row["metric"].get(REVISION_LABEL, "")
            figures.setdefault(revision, {})[key] = _value(row)
    increases = {}
    for revision, by_key in figures.items():
        p95 = by_key.get("p95")
        output = {name: by_key.get(family, 0.0) for family, name in OUTPUT_FIELDS.items()}
        output["norm_sum"] = by_key.get(f"{VECTOR_NORM}_sum", 0.0)
        output["norm_count"] = by_key.get(f"{VECTOR_NORM}_count", 0.0)
        increases[revision] = RevisionIncrease(
            claimed=by_key.get(CLAIMED, 0.0),
            retried=by_key.get(RETRIED, 0.0),
            dead=by_key.get(DEAD, 0.0),
            # NaN: no observation in the window (histogram_quantile of empty buckets).
            stage_p95_s=p95 if p95 is not None and math.isfinite(p95) else None,
            output=OutputCounters(**output),
            golden=golden_figures(
                {name: by_key[family] for family, name in GOLDEN_FIELDS.items() if family in by_key}
            ),
        )
    return increases


def secret_value(secret: dict[str, Any], key: str) -> str | None:
    """One key of a Secret object, decoded; None if absent."""
    raw = (secret.get("data") or {}).get(key)
    if raw is not None:
        return base64.b64decode(raw).decode("utf-8")
    text: str | None = (secret.get("stringData") or {}).get(key)
    return text


# Re-enqueueing a rolled-back revision's documents may touch many rows: its own timeout.
UNDO_TIMEOUT_SECONDS = 60.0


class QueueReader:
    """Reads a pipeline's ready jobs straight from the queue table, one pool per database; and
    re-enqueues a rolled-back revision's documents (the one write the operator makes there)."""

    def __init__(self) -> None:
        self._pools: dict[str, asyncpg.Pool] = {}
        self._undo_pools: dict[str, asyncpg.Pool] = {}

    async def reprocess(self, database_url: str, pipeline: str, revision: str) -> int:
        """Re-enqueue, for the stable revision, every document of `pipeline` whose chunks
        `revision` wrote; the number of documents."""
        pool = self._undo_pools.get(database_url)
        if pool is None:
            pool = await asyncpg.create_pool(
                database_url,
                min_size=0,
                max_size=1,
                timeout=UNDO_TIMEOUT_SECONDS,
                command_timeout=UNDO_TIMEOUT_SECONDS,
            )
            self._undo_pools[database_url] = pool
        async with pool.acquire(timeout=UNDO_TIMEOUT_SECONDS) as conn:
            return await reprocessing.reprocess_revision(conn, revision=revision, pipeline=pipeline)

    async def read(self, database_url: str, pipeline: str, *, timeout_s: float) -> QueueMetrics:
        """Ready jobs and the oldest ready age of one pipeline (one cheap query)."""
        pool = self._pools.get(database_url)
        if pool is None:
            pool = await asyncpg.create_pool(
                database_url, min_size=0, max_size=1, timeout=timeout_s, command_timeout=timeout_s
            )
            self._pools[database_url] = pool
        async with pool.acquire(timeout=timeout_s) as conn:
            rows = await statistics.stats(conn, [pipeline])
        for row in rows:
            if row.pipeline == pipeline:
                return QueueMetrics(float(row.ready), row.oldest_ready_age_s)
        return QueueMetrics(0.0, 0.0)

    async def close(self) -> None:
        """Close every pool."""
        for pool in (*self._pools.values(), *self._undo_pools.values()):
            await pool.close()
        self._pools.clear()
        self._undo_pools.clear()
