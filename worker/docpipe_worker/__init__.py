"""docpipe worker: the data plane (queue, pipeline, clients, metrics, intake API)."""
