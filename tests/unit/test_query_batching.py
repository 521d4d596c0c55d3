"""The API's query batching: concurrent searches share embedding requests, nobody else's failure
becomes yours, and a lone search is never held back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from docpipe_api.query_batching import BatchingEmbedder
from docpipe_contracts import correlation
from docpipe_contracts.errors import PermanentError, TransientError


def vector_of(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)))]


class FakeEmbedder:
    """Records each request; requests wait for `gate` when it is set; texts with 'refused' in
    them make the whole request a PermanentError, 'down' a TransientError."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.correlation_ids: list[str | None] = []
        self.gate: asyncio.Event | None = None
        self.concurrent = 0
        self.most_concurrent = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.requests.append(list(texts))
        self.correlation_ids.append(correlation.CURRENT.get())
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if any("down" in text for text in texts):
                raise TransientError("openai: 503")
            if any("refused" in text for text in texts):
                raise PermanentError("openai: 400 input too long", status=400)
            if any("forbidden" in text for text in texts):
                raise PermanentError("openai: 401 wrong key", status=401)
            return [vector_of(text) for text in texts]
        finally:
            self.concurrent -= 1


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_lone_query_is_sent_at_once() -> None:
    fake = FakeEmbedder()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    assert await batcher.embed(["hello"]) == [vector_of("hello")]
    assert fake.requests == [["hello"]]


async def test_queries_arriving_while_requests_are_out_go_together() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    first = asyncio.create_task(batcher.embed(["q0"]))
    await settle()
    rest = [asyncio.create_task(batcher.embed([f"query {i}"])) for i in range(1, 6)]
    await settle()
    assert fake.requests == [["q0"]]  # the others wait for the slot
    fake.gate.set()
    results = await asyncio.gather(first, *rest)
    assert fake.requests == [["q0"], [f"query {i}" for i in range(1, 6)]]
    # Each caller gets its own query's vector.
    assert results == [[vector_of("q0")]] + [[vector_of(f"query {i}")] for i in range(1, 6)]


async def test_in_flight_and_batch_size_are_bounded() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=2, max_batch_inputs=3)
    calls = [asyncio.create_task(batcher.embed([f"q{i}"])) for i in range(12)]
    await settle()
    assert len(fake.requests) == 2
    assert batcher.in_flight == 2
    fake.gate.set()
    results = await asyncio.gather(*calls)
    assert results == [[vector_of(f"q{i}")] for i in range(12)]
    assert fake.most_concurrent == 2
    assert max(len(request) for request in fake.requests) == 3
    assert sorted(text for request in fake.requests for text in request) == sorted(
        f"q{i}" for i in range(12)
    )


async def test_a_refused_query_fails_alone() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    blocker = asyncio.create_task(batcher.embed(["blocker"]))
    await settle()
    good = asyncio.create_task(batcher.embed(["good one"]))
    bad = asyncio.create_task(batcher.embed(["refused " * 3]))
    other = asyncio.create_task(batcher.embed(["another good one"]))
    await settle()
    fake.gate.set()
    assert await good == [vector_of("good one")]
    assert await other == [vector_of("another good one")]
    with pytest.raises(PermanentError, match="input too long"):
        await bad
    await blocker
    # The shared request was refused, then each query went alone.
    assert fake.requests[1] == ["good one", "refused " * 3, "another good one"]
    assert fake.requests[2:] == [["good one"], ["refused " * 3], ["another good one"]]


async def test_a_refusal_that_is_not_about_the_input_fails_the_request_at_once() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    blocker = asyncio.create_task(batcher.embed(["blocker"]))
    await settle()
    shared = [asyncio.create_task(batcher.embed([text])) for text in ("a", "forbidden", "b")]
    await settle()
    fake.gate.set()
    await blocker
    for task in shared:
        with pytest.raises(PermanentError, match="wrong key"):
            await task
    assert len(fake.requests) == 2  # not sent again query by query


async def test_an_interrupted_request_leaves_no_caller_waiting() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    caller = asyncio.create_task(batcher.embed(["stuck"]))
    await settle()
    (request,) = batcher._requests
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 1.0)


async def test_a_service_failure_reaches_every_caller_of_the_request() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    blocker = asyncio.create_task(batcher.embed(["blocker"]))
    await settle()
    shared = [asyncio.create_task(batcher.embed([text])) for text in ("a", "down", "b")]
    await settle()
    fake.gate.set()
    await blocker
    for task in shared:
        with pytest.raises(TransientError):
            await task
    assert len(fake.requests) == 2  # transient: not retried one by one


async def test_the_request_carries_every_callers_correlation_id() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)

    async def search(request_id: str, text: str) -> list[list[float]]:
        correlation.CURRENT.set(request_id)
        return await batcher.embed([text])

    first = asyncio.create_task(search("req-1", "first"))
    await settle()
    later = [asyncio.create_task(search(f"req-{i}", f"text {i}")) for i in (2, 3)]
    await settle()
    fake.gate.set()
    await asyncio.gather(first, *later)
    assert fake.correlation_ids == ["req-1", "req-2, req-3"]
    assert correlation.CURRENT.get() is None  # nothing leaks into the caller's context


async def test_a_caller_that_gives_up_takes_its_query_back() -> None:
    fake = FakeEmbedder()
    fake.gate = asyncio.Event()
    batcher = BatchingEmbedder(fake, max_in_flight=1)
    blocker = asyncio.create_task(batcher.embed(["blocker"]))
    await settle()
    leaving = asyncio.create_task(batcher.embed(["leaving"]))
    staying = asyncio.create_task(batcher.embed(["staying"]))
    await settle()
    leaving.cancel()
    await settle()
    fake.gate.set()
    assert await staying == [vector_of("staying")]
    await blocker
    assert fake.requests == [["blocker"], ["staying"]]
    assert leaving.cancelled()


async def test_an_empty_query_is_refused_before_any_request() -> None:
    fake = FakeEmbedder()
    batcher = BatchingEmbedder(fake)
    with pytest.raises(PermanentError, match="empty"):
        await batcher.embed(["fine", ""])
    assert fake.requests == []
