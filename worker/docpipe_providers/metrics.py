"""The instruments of outbound provider requests, provider quotas and provider usage (names from
`docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names

EXTERNAL_REQUESTS = names.counter(names.EXTERNAL_REQUESTS)

QUOTA_LIMIT_PER_MINUTE = names.gauge(names.QUOTA_LIMIT_PER_MINUTE)
QUOTA_USED = names.counter(names.QUOTA_USED)
QUOTA_WAIT_SECONDS = names.counter(names.QUOTA_WAIT_SECONDS)
QUOTA_RATE_LIMITED = names.counter(names.QUOTA_RATE_LIMITED)
QUOTA_HELD = names.gauge(names.QUOTA_HELD)

USAGE_TOKENS = names.counter(names.USAGE_TOKENS)
USAGE_PAGES = names.counter(names.USAGE_PAGES)

ORIGINALS_DELETED = names.counter(names.ORIGINALS_DELETED)
ORIGINAL_DELETION_FAILURES = names.counter(names.ORIGINAL_DELETION_FAILURES)
ORIGINAL_DELETIONS_PENDING = names.gauge(names.ORIGINAL_DELETIONS_PENDING)
