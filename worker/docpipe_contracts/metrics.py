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

# What the pipeline wrote, per revision (issue 18): a revision that completes every job but writes
# worse output (drops text, shreds it, stores degenerate vectors) shows here. Counters, so the
# operator differences them between two rounds and compares revisions' ratios (characters per
# input byte, chunks per document, degenerate vectors per vector). Counted when a document's
# chunks are stored under the job's lease; an empty document is counted when its job fails.
OUTPUT_DOCUMENTS = MetricSpec(
    "counter", "docpipe_output_documents", "Documents completed (chunks stored).", JOB_LABELS
)
OUTPUT_INPUT_BYTES = MetricSpec(
    "counter",
    "docpipe_output_input_bytes",
    "Bytes of the originals of the documents completed.",
    JOB_LABELS,
)
OUTPUT_EXTRACTED_CHARS = MetricSpec(
    "counter",
    "docpipe_output_extracted_chars",
    "Characters of text extracted from the documents completed.",
    JOB_LABELS,
)
OUTPUT_CHUNKS = MetricSpec(
    "counter", "docpipe_output_chunks", "Chunks stored for the documents completed.", JOB_LABELS
)
OUTPUT_EMPTY_DOCUMENTS = MetricSpec(
    "counter",
    "docpipe_output_empty_documents",
    "Documents whose extracted text was empty or whitespace (their jobs fail, per attempt).",
    JOB_LABELS,
)
OUTPUT_VECTORS = MetricSpec("counter", "docpipe_output_vectors", "Vectors stored.", JOB_LABELS)
DEGENERATE_KIND_LABEL = "kind"
OUTPUT_DEGENERATE_VECTORS = MetricSpec(
    "counter",
    "docpipe_output_degenerate_vectors",
    "Vectors unusable for search, by kind: zero (stored) or non_finite (refused, job retried).",
    (*JOB_LABELS, DEGENERATE_KIND_LABEL),
)
OUTPUT_VECTOR_NORM = MetricSpec(
    "histogram",
    "docpipe_output_vector_norm",
    "L2 norm of the vectors stored (OpenAI's embeddings are unit length).",
    JOB_LABELS,
    buckets=(0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.001, 1.01, 1.1, 2, 10, 100),
)

# The golden set (issue 18, spec.rollout.goldenSet): a canary worker's comparison of its revision's
# latest shadow run over the pipeline's sample documents with the stable revision's
# (docpipe_ingest.golden). Gauges, labelled with the canary's revision; absent until both
# revisions have run the set.
GOLDEN_TEXT_OVERLAP = MetricSpec(
    "gauge",
    "docpipe_golden_text_overlap",
    "Share of the stable revision's parsed words (as a multiset) found in the canary's, 0..1.",
    JOB_LABELS,
)
GOLDEN_CHUNK_RATIO = MetricSpec(
    "gauge",
    "docpipe_golden_chunk_ratio",
    "The canary's chunk count over the stable revision's, on the golden documents.",
    JOB_LABELS,
)
GOLDEN_COSINE = MetricSpec(
    "gauge",
    "docpipe_golden_cosine",
    "Mean cosine similarity of the two revisions' embeddings of the same chunks (0: none match).",
    JOB_LABELS,
)
GOLDEN_RECALL = MetricSpec(
    "gauge",
    "docpipe_golden_recall",
    "Recall@k of the golden questions over the canary's chunks, 0..1.",
    JOB_LABELS,
)
GOLDEN_STABLE_RECALL = MetricSpec(
    "gauge",
    "docpipe_golden_stable_recall",
    "Recall@k of the golden questions over the stable revision's chunks, 0..1.",
    JOB_LABELS,
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

# Originals in object storage deleted with their documents (docpipe_providers.original_purge):
# by the intake API right after a delete, and by the workers' sweep.
ORIGINALS_DELETED = MetricSpec(
    "counter",
    "docpipe_originals_deleted",
    "Originals of deleted documents removed from object storage.",
)
ORIGINAL_DELETION_FAILURES = MetricSpec(
    "counter",
    "docpipe_original_deletion_failures",
    "Failed attempts to remove a deleted document's original from object storage (retried).",
)
ORIGINAL_DELETIONS_PENDING = MetricSpec(
    "gauge",
    "docpipe_original_deletions_pending",
    "Originals of the pipeline's deleted documents not yet removed from object storage.",
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
