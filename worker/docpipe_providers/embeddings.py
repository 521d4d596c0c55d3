"""A client of the OpenAI embeddings API: batches texts, embeds them concurrently within the
quota, checks the vectors fit the database column."""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import sys
from collections.abc import Awaitable, Sequence
from typing import Protocol

import aiohttp
from pydantic import BaseModel

from docpipe_contracts.errors import JobError, PermanentError, TransientError
from docpipe_providers import usage
from docpipe_providers.batching import Embedded, SharedRequests
from docpipe_providers.external_requests import request_model
from docpipe_providers.quota_calls import QuotaGate, estimate_tokens

SERVICE = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "text-embedding-3-small"

# The API refuses more than 2048 inputs or 300,000 tokens per request. A token is at least one
# character, so this many characters can never exceed the token limit, whatever the language.
DEFAULT_MAX_BATCH_CHARS = 300_000


OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class Embedder(Protocol):
    """What the ingest pipeline and the intake API's search need of an embeddings client."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class _Embedding(BaseModel):
    index: int
    # base64 (little-endian float32) when we asked for it; a list from servers that ignore
    # `encoding_format`.
    embedding: list[float] | str


class _Usage(BaseModel):
    prompt_tokens: int | None = None
    total_tokens: int | None = None


class _EmbeddingList(BaseModel):
    data: list[_Embedding]
    usage: _Usage | None = None

    @property
    def tokens(self) -> int | None:
        """The tokens the provider billed for the request, when it said."""
        if self.usage is None:
            return None
        if self.usage.total_tokens is not None:
            return self.usage.total_tokens
        return self.usage.prompt_tokens


def plan_batches(lengths: Sequence[int], *, max_inputs: int, max_chars: int) -> list[range]:
    """Split consecutive inputs of the given lengths into batches within both limits.

    An input longer than `max_chars` gets a batch of its own (the service then judges it).
    """
    batches: list[range] = []
    start = 0
    chars = 0
    for position, length in enumerate(lengths):
        size = position - start
        if size and (size >= max_inputs or chars + length > max_chars):
            batches.append(range(start, position))
            start, chars = position, 0
        chars += length
    if start < len(lengths):
        batches.append(range(start, len(lengths)))
    return batches


def _decode_base64(encoded: str) -> list[float]:
    values = array.array("f")
    values.frombytes(base64.b64decode(encoded, validate=True))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _most_telling(failures: ExceptionGroup[Exception]) -> Exception:
    # Batches fail together only by bad luck; report the failure that should decide the job's
    # fate: a permanent one first, else the one asking for the longest wait.
    errors = failures.exceptions
    if not all(isinstance(error, JobError) for error in errors):
        return failures
    for error in errors:
        if isinstance(error, PermanentError):
            return error
    return max(
        errors,
        key=lambda error: (error.retry_after or 0.0) if isinstance(error, TransientError) else 0.0,
    )


class OpenAIEmbedder:
    """Embeds texts with the OpenAI embeddings API (or `docpipe mocks`) over a shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        dimensions: int = 1536,
        base_url: str = DEFAULT_BASE_URL,
        max_batch_inputs: int = 256,
        max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS,
        max_concurrency: int = 4,
        request_timeout: float = 60.0,
        send_dimensions: bool = True,
        quota: QuotaGate | None = None,
    ) -> None:
        """`send_dimensions=False` omits `dimensions` for models that refuse it (ada-002); the
        vectors must then have `dimensions` components natively.

        With a `quota`, each request first waits for its budget (1 request, its inputs' estimated
        tokens), and a 429 waits and is sent again instead of raising (see `quota_calls`);
        without one (the intake API's searches), a 429 raises `TransientError`."""
        for name, value in (
            ("dimensions", dimensions),
            ("max_batch_inputs", max_batch_inputs),
            ("max_batch_chars", max_batch_chars),
            ("max_concurrency", max_concurrency),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")
        self._session = session
        self._url = f"{base_url.rstrip('/')}/embeddings"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._model = model
        self._dimensions = dimensions
        self._max_batch_inputs = max_batch_inputs
        self._max_batch_chars = max_batch_chars
        # One bound for the whole embedder, so that concurrent jobs share the rate limit politely.
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._request_timeout = request_timeout
        self._send_dimensions = send_dimensions
        self._quota = quota

    def shared(self, *, window_s: float, max_inputs: int, max_tokens: int) -> SharedRequests:
        """This client behind cross-document batching: concurrent callers' texts share requests
        (`batching`), as many at once as this client's concurrency."""
        return SharedRequests(
            self.request,
            max_inputs=min(max_inputs, self._max_batch_inputs),
            max_tokens=max_tokens,
            window_s=window_s,
            max_in_flight=self._max_concurrency,
            model=self._model,
        )

    @property
    def dimensions(self) -> int:
        """The number of components every returned vector has."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one embedding per text, in input order."""
        for index, text in enumerate(texts):
            if not text:
                raise PermanentError(
                    f"{SERVICE}: text {index} is empty; the embeddings API refuses empty input"
                )
        batches = plan_batches(
            [len(text) for text in texts],
            max_inputs=self._max_batch_inputs,
            max_chars=self._max_batch_chars,
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._embed_batch([texts[i] for i in batch]))
                    for batch in batches
                ]
        except ExceptionGroup as failures:
            raise _most_telling(failures) from None
        return [vector for task in tasks for vector in task.result()]

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        embedded = await self.request(batch)
        if embedded.tokens is not None:
            usage.record_tokens(self._model, embedded.tokens)
        return embedded.vectors

    async def request(self, batch: list[str]) -> Embedded:
        """One embeddings request for `batch` (within the per-request limits), within the quota;
        the billed tokens are returned, not recorded (`batching` shares them out)."""
        # float32 in base64 is a third of the size of JSON numbers, and pgvector stores float32.
        body: dict[str, object] = {
            "model": self._model,
            "input": batch,
            "encoding_format": "base64",
        }
        if self._send_dimensions:
            body["dimensions"] = self._dimensions
        quota = self._quota

        def send() -> Awaitable[_EmbeddingList]:
            return request_model(
                self._session,
                "POST",
                self._url,
                _EmbeddingList,
                service=SERVICE,
                request_timeout=self._request_timeout,
                headers=self._headers,
                json_body=body,
                headers_seen=quota.observe if quota is not None else None,
                span_attributes={
                    "gen_ai.operation.name": "embeddings",
                    "gen_ai.request.model": self._model,
                    "docpipe.embedding.inputs": len(batch),
                    "docpipe.embedding.dimensions": self._dimensions,
                },
            )

        async with self._slots:
            if quota is None:
                response = await send()
            else:
                response = await quota.call(send, requests=1, tokens=estimate_tokens(batch))
        return Embedded(self._vectors_in_order(response, len(batch)), response.tokens, self._model)

    def _vectors_in_order(self, response: _EmbeddingList, count: int) -> list[list[float]]:
        if len(response.data) != count:
            raise TransientError(
                f"{SERVICE}: malformed response: {len(response.data)} embeddings for {count} inputs"
            )
        if sorted(item.index for item in response.data) != list(range(count)):
            raise TransientError(
                f"{SERVICE}: malformed response: embedding indices are not 0 to {count - 1}"
            )
        vectors: list[list[float]] = [[] for _ in range(count)]
        for item in response.data:
            if isinstance(item.embedding, str):
                try:
                    vector = _decode_base64(item.embedding)
                except (binascii.Error, ValueError) as exc:
                    raise TransientError(
                        f"{SERVICE}: malformed base64 embedding {item.index}: {exc}"
                    ) from None
            else:
                vector = item.embedding
            if len(vector) != self._dimensions:
                raise PermanentError(
                    f"{SERVICE}: model {self._model!r} returned {len(vector)}-dimensional "
                    f"embeddings, but {self._dimensions} are configured (the vector column's "
                    "size); set the dimensions to match the model"
                )
            vectors[item.index] = vector
        return vectors
