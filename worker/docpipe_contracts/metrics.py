"""Every metric docpipe exports: names, types, labels, buckets. The worker and the intake API write
them, the operator, the dashboard and the alerts read them; this module is the one place that names
them. It holds descriptions only: each process builds its instruments with `instrument()` in the
layer that writes them (`docpipe_queue.metrics`, `docpipe_providers.metrics`, ...), so reading a
name (the operator) never registers a metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

Kind = Literal["counter", "gauge", "histogram", "info"]

# The suffix prometheus-client adds to the family name in the exposition, by type.
_EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family as the exposition shows it."""

    kind: Kind
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def sample_name(self) -> str:
        """The name a scrape shows for the family's main series (`_total` for a counter)."""
        return self.name + _EXPOSED_SUFFIX.get(self.kind, "")


# Labels shared by the job metrics: the pipeline a job belongs to and the worker revision that
# handled it (the operator compares revisions during a canary rollout).
JOB_LABELS = ("pipeline", "revision")
PIPELINE_LABEL, REVISION_LABEL = JOB_LABELS

JOBS_CLAIMED = MetricSpec(
    "counter", "docpipe_jobs_claimed", "Jobs claimed from the queue.", JOB_LABELS
)
JOBS_SUCCEEDED = MetricSpec(
    "counter", "docpipe_jobs_succeeded", "Jobs completed successfully.", JOB_LABELS
)
JOBS_RETRIED = MetricSpec(
    "counter",
    "docpipe_jobs_retried",
    "Jobs that failed and went back to the queue with backoff.",
    JOB_LABELS,
)
JOBS_DEAD = MetricSpec(
    "counter",
    "docpipe_jobs_dead",
    "Jobs that failed permanently or ran out of attempts.",
    JOB_LABELS,
)
JOBS_LEASE_LOST = MetricSpec(
    "counter",
    "docpipe_jobs_lease_lost",
    "Completions or failures refused because the worker no longer held the job's lease.",
    JOB_LABELS,
)
JOBS_IN_FLIGHT = MetricSpec(
    "gauge", "docpipe_jobs_in_flight", "Jobs this worker is processing now.", JOB_LABELS
)

STAGE_SECONDS = MetricSpec(
    "histogram",
    "docpipe_stage_duration_seconds",
    "Time spent in each pipeline stage.",
    (*JOB_LABELS, "stage"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

QUEUE_READY = MetricSpec(
    "gauge",
    "docpipe_queue_ready_jobs",
    "Jobs of the pipeline ready to run now (all workers).",
    ("pipeline",),
)
QUEUE_OLDEST_READY_AGE = MetricSpec(
    "gauge",
    "docpipe_queue_oldest_ready_age_seconds",
    "How long the oldest ready job of the pipeline has waited.",
    ("pipeline",),
)

EXTERNAL_REQUESTS = MetricSpec(
    "counter",
    "docpipe_external_requests",
    "HTTP requests to external services, by outcome (HTTP status, or 'timeout'/'error').",
    ("service", "status"),
)

# Provider quotas (ADR 0005). `provider` is `openai` or `llamaparse`; `quota` names one budget
# (provider, key and model, hashed: never the key itself); `unit` is `requests` or `tokens` (pages
# for LlamaParse count as requests). The operator reads these to size a fleet no larger than its
# quota can feed.
QUOTA_LABELS = ("pipeline", "provider", "quota", "unit")
QUOTA_LIMIT_PER_MINUTE = MetricSpec(
    "gauge",
    "docpipe_quota_limit_per_minute",
    "The provider quota in force (configured, or learned from the provider's headers), per minute.",
    QUOTA_LABELS,
)
QUOTA_USED = MetricSpec(
    "counter",
    "docpipe_quota_used",
    "Budget this worker drew from the shared quota (requests or tokens).",
    QUOTA_LABELS,
)
QUOTA_WAIT_SECONDS = MetricSpec(
    "counter",
    "docpipe_quota_wait_seconds",
    "Job-seconds this worker's jobs spent waiting for quota budget (a wait shared by n jobs"
    " counts n times).",
    ("pipeline", "provider", "quota"),
)
QUOTA_RATE_LIMITED = MetricSpec(
    "counter",
    "docpipe_quota_rate_limited",
    "Provider answers of 429 rate_limit_exceeded (never counted as job failures).",
    ("pipeline", "provider", "quota"),
)
QUOTA_HELD = MetricSpec(
    "gauge",
    "docpipe_quota_held",
    "1 while the provider refuses work for lack of credit (insufficient_quota); jobs wait.",
    ("pipeline", "provider", "quota"),
)

# Usage for cost accounting: what the providers bill, per pipeline (per owner in the database).
USAGE_TOKENS = MetricSpec(
    "counter",
    "docpipe_usage_tokens",
    "Embedding tokens the provider reported, by pipeline and model.",
    ("pipeline", "model"),
)
USAGE_PAGES = MetricSpec(
    "counter",
    "docpipe_usage_pages",
    "Pages parsed by LlamaParse, by pipeline.",
    ("pipeline",),
)

# The intake API (`docpipe api`). `route` is the matched path template
# (`/v1/documents/{document_id}`), never the raw path, so ids do not multiply the series;
# `unmatched` for paths with no route.
API_REQUESTS = MetricSpec(
    "counter",
    "docpipe_api_requests",
    "Requests the intake API answered, by route, method and HTTP status.",
    ("route", "method", "status"),
)
API_REQUEST_SECONDS = MetricSpec(
    "histogram",
    "docpipe_api_request_duration_seconds",
    "Time the intake API took to answer, by route and method.",
    ("route", "method"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Searches answered by computing every candidate's distance instead of by the HNSW index: asked
# to (`document_filter`), or because the index's candidates held fewer than top_k of the owner's
# chunks after the owner filter (`too_few_hits`). Many of the latter mean hnsw.ef_search is low
# for how the chunks are spread over owners.
API_SEARCH_EXACT = MetricSpec(
    "counter",
    "docpipe_api_search_exact",
    "Searches the intake API answered with an exact scan instead of the HNSW index, by reason.",
    ("reason",),
)

# Set once at start by each process: {"version", "revision"}.
BUILD_INFO = MetricSpec(
    "info", "docpipe_build", "Version and revision of the running docpipe build."
)
BUILD_INFO_KEYS = ("version", "revision")


def all_specs() -> tuple[MetricSpec, ...]:
    """Every metric family this module names."""
    return tuple(v for v in globals().values() if isinstance(v, MetricSpec))


def counter(spec: MetricSpec, registry: CollectorRegistry = REGISTRY) -> Counter:
    """The counter `spec` names, registered in `registry`."""
    assert spec.kind == "counter", spec
    return Counter(spec.name, spec.help, spec.labels, registry=registry)


def gauge(spec: MetricSpec, registry: CollectorRegistry = REGISTRY) -> Gauge:
    """The gauge `spec` names, registered in `registry`."""
    assert spec.kind == "gauge", spec
    return Gauge(spec.name, spec.help, spec.labels, registry=registry)


def histogram(spec: MetricSpec, registry: CollectorRegistry = REGISTRY) -> Histogram:
    """The histogram `spec` names, with its buckets, registered in `registry`."""
    assert spec.kind == "histogram", spec
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)


def info(spec: MetricSpec, registry: CollectorRegistry = REGISTRY) -> Info:
    """The info metric `spec` names, registered in `registry`."""
    assert spec.kind == "info", spec
    return Info(spec.name, spec.help, registry=registry)


def instrument(spec: MetricSpec, registry: CollectorRegistry = REGISTRY) -> MetricWrapperBase:
    """An instrument of whatever type `spec` is, registered in `registry`."""
    build = {"counter": counter, "gauge": gauge, "histogram": histogram, "info": info}[spec.kind]
    return build(spec, registry)
