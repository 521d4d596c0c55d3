"""Sharing embeddings requests between concurrent callers (cross-document batching).

One request per document would make the provider's requests-per-minute limit the document rate,
and costs a round trip per document. So the inputs of every caller (a worker's jobs in flight,
the intake API's searches) wait in one queue and leave together, packed in arrival order up to
the provider's per-request limits (inputs and estimated tokens). A request goes out when the
queue fills one, or `window_s` after its first input arrived, and at most `max_in_flight`
requests run at once: while all of them are out, the queue keeps filling the next one. With
`window_s=0` a lone caller never waits (the intake API's searches); a worker waits a few
milliseconds so that the documents finishing their parse at about the same time travel together.

A caller's failure stays that caller's: a shared request the service refuses for what it holds
(400, 413, 422) is sent again one caller at a time, and a caller's inputs refused alone are
halved until the refusal is pinned to one input, whose caller alone fails. Refusals that do not
depend on the input (a wrong key, an unknown model, a 5xx) fail every caller of the request.

Usage: the provider bills a request as a whole; each caller's meter (`usage.metering`, found in
the caller's context) is charged its share of the billed tokens, in proportion to its inputs'
estimated tokens, and one request for every request that carried its inputs.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from docpipe_contracts import correlation, tracing
from docpipe_contracts.errors import PermanentError
from docpipe_providers import usage
from docpipe_providers.quota_calls import JOBS_WAITING, estimate_tokens

# Statuses by which a service refuses a request for what it holds: worth finding whose input it was.
INPUT_REFUSED = frozenset({400, 413, 422})

# OpenAI's per-request limits: 2048 inputs, 300,000 tokens. Tokens are estimated (characters / 4)
# before sending, so the default leaves room for text that tokenizes denser than the estimate; a
# request refused anyway is split.
DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_TOKENS = 240_000


@dataclass(frozen=True, slots=True)
class Embedded:
    """One request's answer: a vector per input, in order, and the tokens billed (None: unsaid)."""

    vectors: list[list[float]]
    tokens: int | None
    model: str | None = None


Send = Callable[[list[str]], Awaitable[Embedded]]


@dataclass(eq=False)
class _Caller:
    texts: Sequence[str]
    meter: usage.Usage | None
    correlation_id: str | None
    future: asyncio.Future[list[list[float]]]
    # The caller's trace context (its job's embed stage, or a search): the shared request's span
    # is a child of the first caller's and links to every caller's (None: tracing off).
    trace_context: tracing.Context | None = None
    vectors: list[list[float] | None] = field(init=False)
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.texts)
        self.remaining = len(self.texts)


@dataclass(frozen=True, slots=True)
class _Input:
    caller: _Caller
    index: int
    tokens: int

    @property
    def text(self) -> str:
        return self.caller.texts[self.index]


def pack(tokens: Sequence[int], *, max_inputs: int, max_tokens: int) -> int:
    """How many of the queued inputs (their estimated tokens, in order) the next request takes:
    as many as fit both limits, and at least one (the service then judges an oversized one)."""
    total = 0
    for count, cost in enumerate(tokens[:max_inputs]):
        if count and total + cost > max_tokens:
            return count
        total += cost
    return min(len(tokens), max_inputs)


def shares(billed: int, weights: Sequence[int]) -> list[int]:
    """`billed` split in proportion to `weights`, in whole units that add up to `billed` exactly
    (largest remainders get the units rounding left over)."""
    if not weights:
        return []
    total = sum(weights)
    if total <= 0:
        weights, total = [1] * len(weights), len(weights)
    exact = [billed * weight / total for weight in weights]
    parts = [int(value) for value in exact]
    leftover = billed - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in order[:leftover]:
        parts[i] += 1
    return parts


class SharedRequests:
    """An `Embedder` whose concurrent callers' texts travel in shared requests sent by `send`."""

    def __init__(
        self,
        send: Send,
        *,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        window_s: float = 0.0,
        max_in_flight: int = 4,
        model: str | None = None,
    ) -> None:
        if max_inputs < 1 or max_tokens < 1 or max_in_flight < 1:
            raise ValueError("max_inputs, max_tokens and max_in_flight must be at least 1")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s!r}")
        self._send = send
        self._max_inputs = max_inputs
        self._max_tokens = max_tokens
        self._window_s = window_s
        self._max_in_flight = max_in_flight
        self._model = model
        self._queue: list[_Input] = []
        self._queued_tokens = 0
        self._timer: asyncio.TimerHandle | None = None
        self._window_over = False
        self._requests: set[asyncio.Task[None]] = set()
        self.requests_sent = 0

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
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        caller = _Caller(
            texts,
            usage.current(),
            correlation.CURRENT.get(),
            loop.create_future(),
            tracing.current_context(),
        )
        for index, text in enumerate(texts):
            cost = estimate_tokens([text])
            self._queue.append(_Input(caller, index, cost))
            self._queued_tokens += cost
        self._dispatch()
        try:
            return await caller.future
        finally:
            # A caller that gives up (cancelled) takes its unsent inputs back.
            if not caller.future.done():
                caller.future.cancel()
            self._drop_finished()

    # -- sending ----------------------------------------------------------------------------

    def _drop_finished(self) -> None:
        if any(item.caller.future.done() for item in self._queue):
            self._queue = [item for item in self._queue if not item.caller.future.done()]
            self._queued_tokens = sum(item.tokens for item in self._queue)

    def _full(self) -> bool:
        return len(self._queue) >= self._max_inputs or self._queued_tokens >= self._max_tokens

    def _dispatch(self) -> None:
        self._drop_finished()
        while self._queue and len(self._requests) < self._max_in_flight:
            if not (self._window_s == 0 or self._window_over or self._full()):
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._window_s, self._window_ended
                    )
                return
            count = pack(
                [item.tokens for item in self._queue],
                max_inputs=self._max_inputs,
                max_tokens=self._max_tokens,
            )
            batch = self._queue[:count]
            del self._queue[:count]
            self._queued_tokens -= sum(item.tokens for item in batch)
            # A fresh context: the request must not record into the meter of whichever caller
            # happened to start it (usage is shared out below).
            task = asyncio.get_running_loop().create_task(
                self._answer(batch), context=contextvars.Context()
            )
            self._requests.add(task)
            task.add_done_callback(self._finished)
        # What is left once the window is over waits for a free request slot, not a new window.
        if not self._queue:
            self._reset_window()

    def _window_ended(self) -> None:
        self._timer = None
        self._window_over = True
        self._dispatch()

    def _reset_window(self) -> None:
        self._window_over = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        self._dispatch()

    async def _answer(self, batch: list[_Input]) -> None:
        try:
            await self._answer_split(batch)
        finally:
            # Interrupted (shutdown): whoever still waits is told, instead of waiting forever.
            for item in batch:
                if not item.caller.future.done() and item.caller.vectors[item.index] is None:
                    item.caller.future.cancel()

    async def _answer_split(self, batch: list[_Input]) -> None:
        # Inputs of callers that gave up (or already failed) are not sent.
        batch = [item for item in batch if not item.caller.future.done()]
        if not batch:
            return
        try:
            embedded = await self._request(batch)
        except PermanentError as refused:
            if refused.status not in INPUT_REFUSED or len(batch) == 1:
                _fail(batch, refused)
                return
            callers = list(dict.fromkeys(item.caller for item in batch))
            if len(callers) > 1:
                # Refused as a whole: find out whose inputs it was by sending each caller's alone.
                for caller in callers:
                    await self._answer_split([item for item in batch if item.caller is caller])
                return
            # One caller's inputs refused together (too large for a request after all): halve.
            middle = len(batch) // 2
            await self._answer_split(batch[:middle])
            await self._answer_split(batch[middle:])
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        self._settle(batch, embedded)

    async def _request(self, batch: list[_Input]) -> Embedded:
        # The request carries the correlation ids of every caller it serves (a list, as HTTP
        # writes repeated header values), so the service's logs still match each of them.
        ids = list(dict.fromkeys(i.caller.correlation_id for i in batch if i.caller.correlation_id))
        correlation.CURRENT.set(", ".join(ids) if ids else None)
        callers = list(dict.fromkeys(item.caller for item in batch))
        JOBS_WAITING.set(len(callers))
        self.requests_sent += 1
        with tracing.span(
            "embeddings shared request",
            parent=callers[0].trace_context,
            links=[caller.trace_context for caller in callers],
            attributes={
                "docpipe.embedding.callers": len(callers),
                "docpipe.embedding.inputs": len(batch),
            },
        ):
            embedded = await self._send([item.text for item in batch])
        if len(embedded.vectors) != len(batch):
            raise PermanentError(
                f"embeddings: {len(embedded.vectors)} vectors for {len(batch)} inputs"
            )
        return embedded

    def _settle(self, batch: list[_Input], embedded: Embedded) -> None:
        callers = list(dict.fromkeys(item.caller for item in batch))
        if embedded.tokens is not None:
            weights = [sum(i.tokens for i in batch if i.caller is c) for c in callers]
            model = embedded.model or self._model or "unknown"
            for caller, tokens in zip(callers, shares(embedded.tokens, weights), strict=True):
                if caller.meter is not None:
                    usage.record_share(caller.meter, model, tokens)
        for item, vector in zip(batch, embedded.vectors, strict=True):
            caller = item.caller
            if caller.future.done():
                continue  # it gave up, or another of its inputs failed
            caller.vectors[item.index] = vector
            caller.remaining -= 1
            if caller.remaining == 0:
                caller.future.set_result([v for v in caller.vectors if v is not None])


def _fail(batch: list[_Input], error: BaseException) -> None:
    for item in batch:
        if not item.caller.future.done():
            item.caller.future.set_exception(error)
