"""The job and queue instruments of a worker process (names from `docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names

JOBS_CLAIMED = names.counter(names.JOBS_CLAIMED)
JOBS_SUCCEEDED = names.counter(names.JOBS_SUCCEEDED)
JOBS_RETRIED = names.counter(names.JOBS_RETRIED)
JOBS_DEAD = names.counter(names.JOBS_DEAD)
JOBS_LEASE_LOST = names.counter(names.JOBS_LEASE_LOST)
JOBS_IN_FLIGHT = names.gauge(names.JOBS_IN_FLIGHT)
QUEUE_READY = names.gauge(names.QUEUE_READY)
QUEUE_OLDEST_READY_AGE = names.gauge(names.QUEUE_OLDEST_READY_AGE)
# Every docpipe process (worker, API) sets it once at start.
BUILD_INFO = names.info(names.BUILD_INFO)
