"""The intake API's instruments (names from `docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names

API_REQUESTS = names.counter(names.API_REQUESTS)
API_REQUEST_SECONDS = names.histogram(names.API_REQUEST_SECONDS)
API_SEARCH_EXACT = names.counter(names.API_SEARCH_EXACT)
