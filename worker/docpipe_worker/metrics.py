"""Every metric the worker exports: names, labels, buckets. The worker writes them, the operator,
the dashboard and the alerts read them; this module is the one place that names them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

# Labels shared by the job metrics: the pipeline a job belongs to and the worker revision that
# handled it (the operator compares revisions during a canary rollout).
JOB_LABELS = ("pipeline", "revision")

JOBS_CLAIMED = Counter("docpipe_jobs_claimed", "Jobs claimed from the queue.", JOB_LABELS)
JOBS_SUCCEEDED = Counter("docpipe_jobs_succeeded", "Jobs completed successfully.", JOB_LABELS)
JOBS_RETRIED = Counter(
    "docpipe_jobs_retried", "Jobs that failed and went back to the queue with backoff.", JOB_LABELS
)
JOBS_DEAD = Counter(
    "docpipe_jobs_dead", "Jobs that failed permanently or ran out of attempts.", JOB_LABELS
)
JOBS_LEASE_LOST = Counter(
    "docpipe_jobs_lease_lost",
    "Completions or failures refused because the worker no longer held the job's lease.",
    JOB_LABELS,
)
JOBS_IN_FLIGHT = Gauge("docpipe_jobs_in_flight", "Jobs this worker is processing now.", JOB_LABELS)

STAGE_SECONDS = Histogram(
    "docpipe_stage_duration_seconds",
    "Time spent in each pipeline stage.",
    (*JOB_LABELS, "stage"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

QUEUE_READY = Gauge(
    "docpipe_queue_ready_jobs",
    "Jobs of the pipeline ready to run now (all workers).",
    ("pipeline",),
)
QUEUE_OLDEST_READY_AGE = Gauge(
    "docpipe_queue_oldest_ready_age_seconds",
    "How long the oldest ready job of the pipeline has waited.",
    ("pipeline",),
)

EXTERNAL_REQUESTS = Counter(
    "docpipe_external_requests",
    "HTTP requests to external services, by outcome (HTTP status, or 'timeout'/'error').",
    ("service", "status"),
)

# The intake API (`docpipe api`). `route` is the matched path template
# (`/v1/documents/{document_id}`), never the raw path, so ids do not multiply the series;
# `unmatched` for paths with no route.
API_REQUESTS = Counter(
    "docpipe_api_requests",
    "Requests the intake API answered, by route, method and HTTP status.",
    ("route", "method", "status"),
)
API_REQUEST_SECONDS = Histogram(
    "docpipe_api_request_duration_seconds",
    "Time the intake API took to answer, by route and method.",
    ("route", "method"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Searches answered by computing every candidate's distance instead of by the HNSW index: asked
# to (`document_filter`), or because the index's candidates held fewer than top_k of the owner's
# chunks after the owner filter (`too_few_hits`). Many of the latter mean hnsw.ef_search is low
# for how the chunks are spread over owners.
API_SEARCH_EXACT = Counter(
    "docpipe_api_search_exact",
    "Searches the intake API answered with an exact scan instead of the HNSW index, by reason.",
    ("reason",),
)

BUILD_INFO = Info("docpipe_build", "Version and revision of the running docpipe build.")
