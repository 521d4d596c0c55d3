"""The instruments of the ingest pipeline's stages and output (names from
`docpipe_contracts.metrics`)."""

from __future__ import annotations

from docpipe_contracts import metrics as names
from docpipe_ingest.output_quality import DEGENERATE_KINDS, DocumentOutput, VectorMeasure

STAGE_SECONDS = names.histogram(names.STAGE_SECONDS)

OUTPUT_DOCUMENTS = names.counter(names.OUTPUT_DOCUMENTS)
OUTPUT_INPUT_BYTES = names.counter(names.OUTPUT_INPUT_BYTES)
OUTPUT_EXTRACTED_CHARS = names.counter(names.OUTPUT_EXTRACTED_CHARS)
OUTPUT_CHUNKS = names.counter(names.OUTPUT_CHUNKS)
OUTPUT_EMPTY_DOCUMENTS = names.counter(names.OUTPUT_EMPTY_DOCUMENTS)
OUTPUT_VECTORS = names.counter(names.OUTPUT_VECTORS)
OUTPUT_DEGENERATE_VECTORS = names.counter(names.OUTPUT_DEGENERATE_VECTORS)
OUTPUT_VECTOR_NORM = names.histogram(names.OUTPUT_VECTOR_NORM)

# The golden set comparison a canary worker exports (docpipe_ingest.golden).
GOLDEN_TEXT_OVERLAP = names.gauge(names.GOLDEN_TEXT_OVERLAP)
GOLDEN_CHUNK_RATIO = names.gauge(names.GOLDEN_CHUNK_RATIO)
GOLDEN_COSINE = names.gauge(names.GOLDEN_COSINE)
GOLDEN_RECALL = names.gauge(names.GOLDEN_RECALL)
GOLDEN_STABLE_RECALL = names.gauge(names.GOLDEN_STABLE_RECALL)


def expose_output(pipeline: str, revision: str) -> None:
    """Show the output series of `pipeline` and `revision` at zero from the start, so that a
    reader differencing two scrapes sees the first document counted, not a series appearing."""
    for counter in (
        OUTPUT_DOCUMENTS,
        OUTPUT_INPUT_BYTES,
        OUTPUT_EXTRACTED_CHARS,
        OUTPUT_CHUNKS,
        OUTPUT_EMPTY_DOCUMENTS,
        OUTPUT_VECTORS,
    ):
        counter.labels(pipeline, revision)
    for kind in DEGENERATE_KINDS:
        OUTPUT_DEGENERATE_VECTORS.labels(pipeline, revision, kind)
    OUTPUT_VECTOR_NORM.labels(pipeline, revision)


def count_document(pipeline: str, revision: str, output: DocumentOutput) -> None:
    """A completed document into the output counters of its pipeline and revision."""
    OUTPUT_DOCUMENTS.labels(pipeline, revision).inc()
    OUTPUT_INPUT_BYTES.labels(pipeline, revision).inc(output.input_bytes)
    OUTPUT_EXTRACTED_CHARS.labels(pipeline, revision).inc(output.extracted_chars)
    OUTPUT_CHUNKS.labels(pipeline, revision).inc(output.chunks)


def count_vectors(pipeline: str, revision: str, measure: VectorMeasure) -> None:
    """Stored vectors into the output counters: how many, their norms, the degenerate ones."""
    OUTPUT_VECTORS.labels(pipeline, revision).inc(measure.count)
    for kind in DEGENERATE_KINDS:
        if measure.degenerate(kind):
            OUTPUT_DEGENERATE_VECTORS.labels(pipeline, revision, kind).inc(measure.degenerate(kind))
    histogram = OUTPUT_VECTOR_NORM.labels(pipeline, revision)
    for norm in measure.norms:
        histogram.observe(norm)


def count_refused_vectors(pipeline: str, revision: str, measure: VectorMeasure) -> None:
    """Vectors refused before the store for their non-finite components (the job is retried)."""
    OUTPUT_DEGENERATE_VECTORS.labels(pipeline, revision, "non_finite").inc(measure.non_finite)


def count_empty_document(pipeline: str, revision: str) -> None:
    """A document whose extracted text was empty (its job fails)."""
    OUTPUT_EMPTY_DOCUMENTS.labels(pipeline, revision).inc()
