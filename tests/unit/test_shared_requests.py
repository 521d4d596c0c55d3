"""The pure parts of cross-document batching: how many queued inputs the next request takes, and
how a request's billed tokens are shared between the callers it carried."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from docpipe_providers.batching import Embedded, SharedRequests, pack, shares


def test_pack_takes_inputs_up_to_the_token_limit() -> None:
    assert pack([40, 40, 40], max_inputs=10, max_tokens=100) == 2


def test_pack_takes_inputs_up_to_the_input_limit() -> None:
    assert pack([1] * 10, max_inputs=4, max_tokens=100) == 4


def test_pack_sends_an_oversized_input_alone() -> None:
    assert pack([500, 1], max_inputs=10, max_tokens=100) == 1


def test_shares_follow_the_callers_estimated_tokens() -> None:
    assert shares(100, [30, 10]) == [75, 25]


def test_shares_of_callers_with_no_weight_are_equal() -> None:
    assert shares(9, [0, 0, 0]) == [3, 3, 3]


@given(
    st.integers(min_value=0, max_value=10**7),
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=50),
)
def test_shares_add_up_to_the_billed_tokens(billed: int, weights: list[int]) -> None:
    parts = shares(billed, weights)
    assert sum(parts) == billed
    assert all(part >= 0 for part in parts)
    # Each share is within one token of its exact proportion.
    total = sum(weights)
    assert all(abs(p - billed * w / total) < 1 for p, w in zip(parts, weights, strict=True))


class FakeService:
    """Answers each request with one vector per input; requests wait for `gate` when set."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def send(self, texts: list[str]) -> Embedded:
        self.requests.append(texts)
        if self.gate is not None:
            await self.gate.wait()
        return Embedded([[float(len(t))] for t in texts], tokens=len(texts), model="m")


async def test_callers_within_the_window_share_a_request() -> None:
    service = FakeService()
    shared = SharedRequests(service.send, window_s=0.05)
    first = asyncio.create_task(shared.embed(["a", "bb"]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(shared.embed(["ccc"]))
    assert await first == [[1.0], [2.0]]
    assert await second == [[3.0]]
    assert service.requests == [["a", "bb", "ccc"]]


async def test_a_full_request_does_not_wait_for_the_window() -> None:
    service = FakeService()
    shared = SharedRequests(service.send, window_s=60, max_inputs=2)
    assert await asyncio.wait_for(shared.embed(["a", "b"]), 5) == [[1.0], [1.0]]


async def test_a_caller_that_gives_up_leaves_the_others_served() -> None:
    service = FakeService()
    shared = SharedRequests(service.send, window_s=0.05)
    quitter = asyncio.create_task(shared.embed(["gone"]))
    stayer = asyncio.create_task(shared.embed(["here"]))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer == [[4.0]]
    assert service.requests == [["here"]]


async def test_a_large_caller_spans_several_requests_in_order() -> None:
    service = FakeService()
    shared = SharedRequests(service.send, window_s=0.0, max_inputs=2, max_in_flight=1)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert await shared.embed(texts) == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    assert [len(r) for r in service.requests] == [2, 2, 1]
