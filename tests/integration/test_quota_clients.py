"""The provider clients with a quota gate against `docpipe mocks` over real HTTP on 127.0.0.1:
429s are waited out inside the call, limits are learned from the headers, usage is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from docpipe_contracts.errors import PermanentError
from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.quotas import LlamaParseQuotas, OpenAIQuotas, QuotaConfig
from docpipe_mocks.server import MockConfig
from docpipe_providers import usage
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from docpipe_providers.quota import LocalBudget, QuotaKey, QuotaLimits, hash_api_key
from docpipe_providers.quota_calls import QuotaGate, estimate_tokens
from tests.support.mocks import serve

API_KEY = "sk-quota-test"
TEXTS = [f"chunk {number}: the invoice number {number} is due in March" for number in range(10)]


def gate(provider: str, pipeline: str, limits: QuotaLimits | None = None) -> QuotaGate:
    key = QuotaKey(provider, hash_api_key(API_KEY), "m")
    budget = LocalBudget(limits or QuotaLimits.unlimited())
    return QuotaGate(budget, key, pipeline=pipeline, hold_s=0.2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_admin/stats") as response:
        body: dict[str, Any] = await response.json()
    return body


async def test_embeddings_ride_out_a_429_storm_and_record_the_billed_tokens(
    session: aiohttp.ClientSession,
) -> None:
    storm = MockConfig(
        faults=FaultConfig(openai=ServiceFaults(rate_limit_rate=0.7, retry_after_seconds=0))
    )
    async with serve("127.0.0.1", 0, storm) as url:
        client = OpenAIEmbedder(
            session,
            api_key=API_KEY,
            base_url=f"{url}/v1",
            max_batch_inputs=2,
            quota=gate("openai", "storm-embed"),
        )
        with usage.metering() as meter:
            vectors = await client.embed(TEXTS)
        requests = (await stats(session, url))["requests"]["POST /v1/embeddings"]

    assert len(vectors) == len(TEXTS)
    assert requests["429"] >= 3
    assert requests["200"] == 5
    assert meter.tokens == estimate_tokens(TEXTS)
    assert meter.requests == 5


async def test_embeddings_learn_the_limits_the_provider_states(
    session: aiohttp.ClientSession,
) -> None:
    limited = MockConfig(
        quotas=QuotaConfig(
            openai=OpenAIQuotas(requests_per_minute=6000, tokens_per_minute=1_000_000)
        )
    )
    quota = gate("openai", "learn-embed", QuotaLimits(10_000, None))
    async with serve("127.0.0.1", 0, limited) as url:
        client = OpenAIEmbedder(session, api_key=API_KEY, base_url=f"{url}/v1", quota=quota)
        await client.embed(TEXTS)

    assert quota.budget.limits == QuotaLimits(6000, 1_000_000)


async def test_embeddings_hold_while_out_of_credit_and_go_on_when_it_returns(
    session: aiohttp.ClientSession,
) -> None:
    broke = MockConfig(quotas=QuotaConfig(openai=OpenAIQuotas(insufficient_quota=True)))
    quota = gate("openai", "held-embed")
    async with serve("127.0.0.1", 0, broke) as url:
        client = OpenAIEmbedder(session, api_key=API_KEY, base_url=f"{url}/v1", quota=quota)
        task = asyncio.create_task(client.embed(TEXTS))
        await asyncio.sleep(0.5)
        assert not task.done()
        assert quota.held
        async with session.put(f"{url}/_admin/quotas", json={}) as response:
            assert response.status == 200
        vectors = await asyncio.wait_for(task, 5)

    assert len(vectors) == len(TEXTS)
    assert not quota.held


async def test_embeddings_with_a_quota_still_fail_permanently_on_a_4xx(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        client = OpenAIEmbedder(
            session,
            api_key=API_KEY,
            base_url=f"{url}/v1",
            max_batch_inputs=3000,
            quota=gate("openai", "4xx"),
        )
        with pytest.raises(PermanentError, match="returned 400"):
            await client.embed([f"text {number}" for number in range(2049)])


async def test_uploads_wait_out_the_parsers_upload_limit_and_record_pages(
    session: aiohttp.ClientSession,
) -> None:
    limited = MockConfig(
        quotas=QuotaConfig(llamaparse=LlamaParseQuotas(uploads_per_window=2, window_seconds=1))
    )
    async with serve("127.0.0.1", 0, limited) as url:
        # A parse's own timeout (1.5 s) is shorter than its waits for the upload limit.
        client = LlamaParseClient(
            session,
            api_key=API_KEY,
            base_url=url,
            poll_interval=0.01,
            timeout=1.5,
            quota=gate("llamaparse", "parse-limit"),
        )
        with usage.metering() as meter:
            texts = await asyncio.gather(
                *(
                    client.parse(
                        f"# Report {n}\n\nText {n}.\n".encode(),
                        filename=f"r{n}.md",
                        content_type="text/markdown",
                    )
                    for n in range(6)
                )
            )
        uploads = (await stats(session, url))["requests"]["POST /api/parsing/upload"]

    assert all(f"Report {n}" in text for n, text in enumerate(texts))
    assert uploads["200"] == 6
    assert uploads.get("429", 0) >= 1
    assert meter.pages == 6
