"""The ingest pipeline: load, parse, chunk, embed and store a document; the worker process that
runs it over the queue, and its health endpoints."""
