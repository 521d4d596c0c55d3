"""The LlamaParse and OpenAI clients against `docpipe mocks` over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from docpipe_api.query_batching import BatchingEmbedder
from docpipe_contracts import correlation
from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_mocks.embedding import embed_text
from docpipe_mocks.llamaparse import LlamaParseSettings
from docpipe_mocks.openai import OpenAISettings
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from tests.support.mocks import serve

API_KEY = "sk-test-key"
CONFIG = MockConfig(
    llamaparse=LlamaParseSettings(api_key=API_KEY, pending_polls=2),
    openai=OpenAISettings(api_key=API_KEY),
)

MARKDOWN = b"# Quarterly report\n\nRevenue grew by twelve percent in Europe.\n"


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, CONFIG) as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def parser(session: aiohttp.ClientSession, url: str, **options: Any) -> LlamaParseClient:
    settings: dict[str, Any] = {"api_key": API_KEY, "poll_interval": 0.01, "timeout": 10.0}
    return LlamaParseClient(session, base_url=url, **(settings | options))


def embedder(session: aiohttp.ClientSession, url: str, **options: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(session, **({"api_key": API_KEY, "base_url": f"{url}/v1"} | options))


async def put_faults(session: aiohttp.ClientSession, url: str, faults: dict[str, Any]) -> None:
    async with session.put(f"{url}/_admin/faults", json=faults) as response:
        assert response.status == 200, await response.text()


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, int]]:
    async with session.get(f"{url}/_admin/stats") as response:
        body: dict[str, dict[str, dict[str, int]]] = await response.json()
    return body["requests"]


def requests_counted(service: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "docpipe_external_requests_total", {"service": service, "status": status}
    )
    return value or 0.0


async def parse_markdown(session: aiohttp.ClientSession, url: str, **options: Any) -> str:
    return await parser(session, url, **options).parse(
        MARKDOWN, filename="report.md", content_type="text/markdown"
    )


# --- LlamaParse ---------------------------------------------------------------------------------


async def test_parse_returns_the_text_of_the_uploaded_document(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    markdown = await parse_markdown(session, mock_url)

    assert "Revenue grew by twelve percent in Europe." in markdown
    assert "Quarterly report" in markdown


async def test_parse_polls_the_job_until_it_succeeds(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await parse_markdown(session, mock_url)

    # pending_polls=2: two PENDING answers, then SUCCESS.
    assert (await stats(session, mock_url))["GET /api/parsing/job/{job_id}"] == {"200": 3}


async def test_parse_of_an_unsupported_document_raises_permanent_error_with_the_reason(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    client = parser(session, mock_url)

    with pytest.raises(PermanentError, match=r"ended ERROR.*'photo\.xyz'.*not supported"):
        await client.parse(
            b"\x00\x01binary", filename="photo.xyz", content_type="application/x-unknown"
        )


async def test_parse_gives_up_with_transient_error_when_the_job_stays_pending(
    session: aiohttp.ClientSession,
) -> None:
    config = CONFIG.model_copy(update={"llamaparse": LlamaParseSettings(pending_polls=1000)})
    async with serve("127.0.0.1", 0, config) as url:
        client = parser(session, url, timeout=0.3)

        with pytest.raises(TransientError, match=r"still PENDING after the 0\.3s timeout"):
            await client.parse(MARKDOWN, filename="report.md", content_type="text/markdown")


async def test_parse_with_a_wrong_api_key_raises_permanent_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    with pytest.raises(PermanentError, match="returned 401"):
        await parse_markdown(session, mock_url, api_key="wrong")


async def test_parse_rate_limited_raises_transient_error_carrying_retry_after(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(
        session, mock_url, {"llamaparse": {"rate_limit_rate": 1.0, "retry_after_seconds": 9}}
    )

    with pytest.raises(TransientError, match="returned 429") as caught:
        await parse_markdown(session, mock_url)

    assert caught.value.retry_after == 9.0


async def test_parse_server_error_raises_transient_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"llamaparse": {"error_rate": 1.0}})

    with pytest.raises(TransientError, match="llamaparse: POST /api/parsing/upload returned 500"):
        await parse_markdown(session, mock_url)


async def test_parse_hung_request_raises_transient_error_after_the_request_timeout(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"llamaparse": {"hang_rate": 1.0}})
    started = time.monotonic()

    with pytest.raises(TransientError, match=r"llamaparse: no response .* within the 0\.2s"):
        await parse_markdown(session, mock_url, request_timeout=0.2)

    assert time.monotonic() - started < 2.0


# --- OpenAI embeddings --------------------------------------------------------------------------

TEXTS = [f"chunk {number}: the invoice number {number} is due in March" for number in range(10)]


async def test_embed_returns_the_mock_embedding_of_each_text_in_input_order(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    client = embedder(session, mock_url, max_batch_inputs=3, max_concurrency=2)

    vectors = await client.embed(TEXTS)

    assert len(vectors) == len(TEXTS)
    for text, vector in zip(TEXTS, vectors, strict=True):
        # The client asks for float32 (base64), so equal to float32 precision.
        assert vector == pytest.approx(embed_text(text, 1536), abs=1e-6)


async def test_embed_sends_one_request_per_batch_of_inputs(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await embedder(session, mock_url, max_batch_inputs=4).embed(TEXTS)

    assert (await stats(session, mock_url))["POST /v1/embeddings"] == {"200": 3}


async def test_embed_cuts_batches_by_total_characters(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    texts = ["x" * 400] * 5

    await embedder(session, mock_url, max_batch_chars=1000).embed(texts)

    assert (await stats(session, mock_url))["POST /v1/embeddings"] == {"200": 3}


async def test_embed_of_nothing_sends_no_request(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    assert await embedder(session, mock_url).embed([]) == []

    assert await stats(session, mock_url) == {}


async def test_embed_of_an_empty_text_raises_permanent_error_naming_it(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    with pytest.raises(PermanentError, match="text 1 is empty"):
        await embedder(session, mock_url).embed(["fine", ""])


async def test_embed_of_a_batch_larger_than_the_service_allows_raises_the_services_message(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    client = embedder(session, mock_url, max_batch_inputs=3000)

    with pytest.raises(PermanentError, match=r"returned 400.*maximum array length is 2048"):
        await client.embed([f"text {number}" for number in range(2049)])


async def test_embed_with_out_of_range_dimensions_raises_the_services_message(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    with pytest.raises(PermanentError, match=r"'dimensions': 4096 is out of range"):
        await embedder(session, mock_url, dimensions=4096).embed(TEXTS)


async def test_embed_of_vectors_of_another_dimension_raises_permanent_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    client = embedder(
        session, mock_url, model="text-embedding-3-large", dimensions=1536, send_dimensions=False
    )

    with pytest.raises(PermanentError, match="returned 3072-dimensional embeddings, but 1536"):
        await client.embed(TEXTS)


async def test_embed_without_the_api_key_raises_permanent_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    with pytest.raises(PermanentError, match=r"returned 401.*Incorrect API key"):
        await embedder(session, mock_url, api_key="wrong").embed(TEXTS)


async def test_embed_rate_limited_raises_transient_error_carrying_retry_after(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(
        session, mock_url, {"openai": {"rate_limit_rate": 1.0, "retry_after_seconds": 7}}
    )

    with pytest.raises(TransientError, match="returned 429") as caught:
        await embedder(session, mock_url).embed(TEXTS)

    assert caught.value.retry_after == 7.0


async def test_embed_server_error_raises_transient_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"openai": {"error_rate": 1.0}})

    with pytest.raises(TransientError, match="openai: POST /v1/embeddings returned 500"):
        await embedder(session, mock_url).embed(TEXTS)


async def test_embed_hung_request_raises_transient_error_after_the_request_timeout(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"openai": {"hang_rate": 1.0}})
    started = time.monotonic()

    with pytest.raises(TransientError, match=r"openai: no response .* within the 0\.2s timeout"):
        await embedder(session, mock_url, request_timeout=0.2).embed(TEXTS)

    assert time.monotonic() - started < 2.0


async def test_embed_malformed_responses_raise_transient_error(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"openai": {"malformed_rate": 1.0}})
    client = embedder(session, mock_url)

    # Both kinds of malformed body (not JSON, JSON of the wrong shape) turn up in eight requests.
    for _ in range(8):
        with pytest.raises(TransientError, match="malformed response"):
            await client.embed(TEXTS[:1])


async def test_embed_of_an_unreachable_service_raises_transient_error(
    session: aiohttp.ClientSession,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    client = embedder(session, f"http://127.0.0.1:{port}")

    with pytest.raises(TransientError, match="openai: POST /v1/embeddings failed"):
        await client.embed(TEXTS)


async def test_external_requests_are_counted_by_service_and_outcome(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    before_ok = requests_counted("openai", "200")
    before_limited = requests_counted("openai", "429")

    await embedder(session, mock_url, max_batch_inputs=5).embed(TEXTS)
    await put_faults(session, mock_url, {"openai": {"rate_limit_rate": 1.0}})
    with pytest.raises(TransientError):
        await embedder(session, mock_url).embed(TEXTS)

    assert requests_counted("openai", "200") - before_ok == 2
    assert requests_counted("openai", "429") - before_limited == 1


# --- The mock's admin API and protocol ----------------------------------------------------------


async def test_faults_changed_through_the_admin_api_apply_to_the_next_request(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    client = embedder(session, mock_url)
    await client.embed(TEXTS)

    await put_faults(session, mock_url, {"openai": {"error_rate": 1.0}})
    with pytest.raises(TransientError):
        await client.embed(TEXTS)

    await put_faults(session, mock_url, {})
    assert len(await client.embed(TEXTS)) == len(TEXTS)


async def test_admin_api_returns_the_current_fault_configuration(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"seed": 5, "openai": {"latency_ms": 10}})

    async with session.get(f"{mock_url}/_admin/faults") as response:
        faults = await response.json()

    assert faults["seed"] == 5
    assert faults["openai"]["latency_ms"] == 10
    assert faults["llamaparse"]["latency_ms"] == 0


async def test_admin_api_refuses_invalid_faults_naming_the_field(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    async with session.put(
        f"{mock_url}/_admin/faults", json={"openai": {"error_rate": 2}}
    ) as response:
        body = await response.json()

    assert response.status == 422
    assert [error["field"] for error in body["fields"]] == ["openai.error_rate"]


async def test_admin_api_counts_requests_per_endpoint_and_status(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await embedder(session, mock_url).embed(TEXTS)
    with pytest.raises(PermanentError):
        await embedder(session, mock_url, api_key="wrong").embed(TEXTS)

    assert (await stats(session, mock_url)) == {"POST /v1/embeddings": {"200": 1, "401": 1}}


async def test_latency_fault_delays_each_response(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"openai": {"latency_ms": 300}})
    started = time.monotonic()

    await embedder(session, mock_url).embed(TEXTS[:1])

    assert time.monotonic() - started >= 0.3


async def test_mock_embeddings_endpoint_answers_in_the_openai_shape(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    async with session.post(
        f"{mock_url}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello world", "dimensions": 8},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        body = await response.json()

    assert body["object"] == "list"
    assert body["model"] == "text-embedding-3-small"
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["index"] == 0
    assert body["data"][0]["embedding"] == pytest.approx(embed_text("hello world", 8), abs=1e-8)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_a_hung_request_is_released_when_the_client_gives_up(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    await put_faults(session, mock_url, {"openai": {"hang_rate": 1.0}})
    with pytest.raises(TransientError):
        await embedder(session, mock_url, request_timeout=0.1).embed(TEXTS[:1])

    # The server cancels the handler once the client disconnects; it then counts no answer.
    for _ in range(50):
        if (await stats(session, mock_url)).get("POST /v1/embeddings"):
            break
        await asyncio.sleep(0.02)
    assert (await stats(session, mock_url))["POST /v1/embeddings"] == {"no_response": 1}


async def test_shared_query_embeddings_reach_the_mock_with_every_searchs_request_id(
    session: aiohttp.ClientSession, mock_url: str
) -> None:
    # One request under way at a time: the mock's latency holds it out while the others queue.
    await put_faults(session, mock_url, {"openai": {"latency_ms": 200}})
    batcher = BatchingEmbedder(embedder(session, mock_url, dimensions=64), max_in_flight=1)

    async def search(request_id: str, text: str) -> list[list[float]]:
        correlation.CURRENT.set(request_id)
        return await batcher.embed([text])

    texts = [f"question number {i} about lanterns" for i in range(6)]
    vectors = await asyncio.gather(*(search(f"search-{i}", t) for i, t in enumerate(texts)))

    assert [v[0] for v in vectors] == [pytest.approx(embed_text(t, 64), abs=1e-6) for t in texts]
    async with session.get(f"{mock_url}/_admin/stats") as response:
        body = await response.json()
    assert body["requests"] == {"POST /v1/embeddings": {"200": 2}}  # the first, then the rest
    assert body["request_ids"] == {f"search-{i}": 1 for i in range(6)}
