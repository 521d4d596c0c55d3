"""The instruments of the ingest pipeline's stages (names from `docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names

STAGE_SECONDS = names.histogram(names.STAGE_SECONDS)
