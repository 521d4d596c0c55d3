"""Embedding concurrent searches' queries together.

Each search needs its query embedded before the index can be asked. One request to the embeddings
API per search would make the request rate (the scarcest of the API's limits) the search rate, and
costs a round trip's worth of CPU on both ends per query. So at most `max_in_flight` embedding
requests run at once; queries that arrive while all of them are out wait and leave together in
the next one. A lone search never waits: with a request slot free, its query goes at once.

One refused query must not fail the searches it happened to share a request with: a shared request
the service refuses for its input (400, 413, 422) is sent again one query at a time. Refusals that
do not depend on the input (a wrong key, an unknown model) fail every search of the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from docpipe_contracts import correlation
from docpipe_contracts.errors import PermanentError
from docpipe_providers.embeddings import Embedder

# Statuses by which a service refuses a request for what it holds: worth finding whose query it was.
_INPUT_REFUSED = frozenset({400, 413, 422})


@dataclass(eq=False)
class _Query:
    text: str
    correlation_id: str | None
    future: asyncio.Future[list[float]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class BatchingEmbedder:
    """An `Embedder` that sends the queries of concurrent callers in shared requests."""

    def __init__(
        self, embedder: Embedder, *, max_in_flight: int = 4, max_batch_inputs: int = 64
    ) -> None:
        if max_in_flight < 1 or max_batch_inputs < 1:
            raise ValueError("max_in_flight and max_batch_inputs must be at least 1")
        self._embedder = embedder
        self._max_in_flight = max_in_flight
        self._max_batch_inputs = max_batch_inputs
        self._waiting: list[_Query] = []
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Embedding requests under way."""
        return len(self._requests)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One embedding per text, in order; the texts may travel with other callers' texts."""
        for index, text in enumerate(texts):
            if not text:
                # Refused here, not by the service: it would refuse the whole shared request.
                raise PermanentError(f"text {index} is empty; the embeddings API refuses it")
        caller = correlation.CURRENT.get()
        queries = [_Query(text, caller) for text in texts]
        self._waiting.extend(queries)
        self._send_waiting()
        try:
            return [await query.future for query in queries]
        finally:
            for query in queries:
                # A caller that gives up (cancelled) takes its unsent queries back; a failure
                # it did not get to await is marked as seen (no "never retrieved" warning).
                if not query.future.cancel() and not query.future.cancelled():
                    query.future.exception()

    def _send_waiting(self) -> None:
        self._waiting = [query for query in self._waiting if not query.future.done()]
        while self._waiting and len(self._requests) < self._max_in_flight:
            batch = self._waiting[: self._max_batch_inputs]
            del self._waiting[: self._max_batch_inputs]
            task = asyncio.create_task(self._send(batch))
            self._requests.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        self._send_waiting()

    async def _send(self, batch: list[_Query]) -> None:
        try:
            await self._answer(batch)
        finally:
            # Interrupted (shutdown): whoever still waits is told, instead of waiting forever.
            for query in batch:
                query.future.cancel()

    async def _answer(self, batch: list[_Query]) -> None:
        try:
            vectors = await self._embed(batch)
        except PermanentError as refused:
            if len(batch) == 1 or refused.status not in _INPUT_REFUSED:
                _settle(batch, error=refused)
                return
            # Refused as a whole: find out whose query it was by sending each one alone.
            for query in batch:
                try:
                    (vector,) = await self._embed([query])
                except Exception as exc:
                    _settle([query], error=exc)
                else:
                    _settle([query], vectors=[vector])
            return
        except Exception as exc:
            _settle(batch, error=exc)
            return
        _settle(batch, vectors=vectors)

    async def _embed(self, batch: list[_Query]) -> list[list[float]]:
        # The request carries the correlation ids of every search it serves (a list, as HTTP
        # writes repeated header values), so the service's logs still match each of them.
        ids = list(dict.fromkeys(q.correlation_id for q in batch if q.correlation_id))
        token = correlation.CURRENT.set(", ".join(ids) if ids else None)
        try:
            return await self._embedder.embed([query.text for query in batch])
        finally:
            correlation.CURRENT.reset(token)


def _settle(
    batch: list[_Query],
    *,
    vectors: list[list[float]] | None = None,
    error: BaseException | None = None,
) -> None:
    for index, query in enumerate(batch):
        if query.future.done():
            continue  # its caller gave up
        if error is not None:
            query.future.set_exception(error)
        elif vectors is not None:
            query.future.set_result(vectors[index])
