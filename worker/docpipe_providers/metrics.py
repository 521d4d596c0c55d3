"""The instruments of outbound provider requests (names from `docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names

EXTERNAL_REQUESTS = names.counter(names.EXTERNAL_REQUESTS)
