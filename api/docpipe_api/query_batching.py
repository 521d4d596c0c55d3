"""Embedding concurrent searches' queries together.

Each search needs its query embedded before the index can be asked. One request to the embeddings
API per search would make the request rate (the scarcest of the API's limits) the search rate, and
costs a round trip's worth of CPU on both ends per query. So at most `max_in_flight` embedding
requests run at once; queries that arrive while all of them are out wait and leave together in
the next one. A lone search never waits: with a request slot free, its query goes at once.

One refused query must not fail the searches it happened to share a request with: a shared request
the service refuses for its input (400, 413, 422) is sent again one query at a time. Refusals that
do not depend on the input (a wrong key, an unknown model) fail every search of the request.

The sharing itself is the providers' (`docpipe_providers.batching`, which the worker's
cross-document batching uses too); searches use it without a window.
"""

from __future__ import annotations

from docpipe_providers.batching import DEFAULT_MAX_TOKENS, Embedded, SharedRequests
from docpipe_providers.embeddings import Embedder


class BatchingEmbedder(SharedRequests):
    """An `Embedder` that sends the queries of concurrent callers in shared requests."""

    def __init__(
        self, embedder: Embedder, *, max_in_flight: int = 4, max_batch_inputs: int = 64
    ) -> None:
        if max_in_flight < 1 or max_batch_inputs < 1:
            raise ValueError("max_in_flight and max_batch_inputs must be at least 1")

        async def send(texts: list[str]) -> Embedded:
            return Embedded(await embedder.embed(texts), None)

        super().__init__(
            send,
            max_inputs=max_batch_inputs,
            max_tokens=DEFAULT_MAX_TOKENS,
            window_s=0.0,
            max_in_flight=max_in_flight,
        )
