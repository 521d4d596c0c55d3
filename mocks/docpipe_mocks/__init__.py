"""docpipe mocks: LlamaParse- and OpenAI-compatible servers with fault injection."""
