"""Clients of the external providers: the OpenAI embeddings API and the LlamaParse API."""
