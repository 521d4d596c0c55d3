"""Search through the API: the query is embedded by the (mock) embeddings service and the
closest chunks come back first, with their positions."""

from __future__ import annotations

import pytest

from docpipe_mocks.faults import FaultConfig, ServiceFaults
from tests.integration.api.conftest import Api, process_pending

SEARCH = "/v1/pipelines/default/search"

PARAGRAPHS = {
    "seals.md": "Harbour seals rest on sandbanks at low tide and hunt flatfish at high water.",
    "bread.md": "Sourdough bread needs a lively starter, patience and a very hot oven.",
    "bikes.md": "Replace a bicycle chain when it stretches beyond half a percent of its length.",
}


@pytest.fixture
async def corpus(api: Api) -> dict[str, str]:
    ids = {}
    for name, text in PARAGRAPHS.items():
        _, body = await api.upload(f"# {name}\n\n{text}\n".encode(), filename=name)
        ids[name] = body["document"]["id"]
    await process_pending(api)
    return ids


async def test_a_documents_own_sentence_finds_its_chunk_first(
    api: Api, corpus: dict[str, str]
) -> None:
    status, result, _ = await api.call(
        "POST", SEARCH, json={"query": PARAGRAPHS["bread.md"], "top_k": 3}
    )
    assert status == 200
    first = result["hits"][0]
    assert first["document_id"] == corpus["bread.md"]
    assert PARAGRAPHS["bread.md"] in first["content"]
    assert first["score"] > result["hits"][1]["score"]
    assert first["ordinal"] == 0
    assert first["char_end"] > first["char_start"] >= 0


async def test_top_k_bounds_the_hits(api: Api, corpus: dict[str, str]) -> None:
    _, result, _ = await api.call("POST", SEARCH, json={"query": "tide", "top_k": 2})
    assert len(result["hits"]) == 2


async def test_a_document_filter_searches_only_those_documents(
    api: Api, corpus: dict[str, str]
) -> None:
    query = {"query": PARAGRAPHS["bread.md"], "document_ids": [corpus["bikes.md"]]}
    _, result, _ = await api.call("POST", SEARCH, json=query)
    assert [hit["document_id"] for hit in result["hits"]] == [corpus["bikes.md"]]


async def test_the_search_query_carries_the_request_id_to_the_embeddings_service(
    api: Api,
) -> None:
    status, _, _ = await api.call(
        "POST", SEARCH, json={"query": "anything"}, headers={"X-Request-ID": "search-trace-1"}
    )
    assert status == 200
    async with api.session.get(f"{api.mocks}/_admin/stats") as response:
        stats = await response.json()
    assert stats["request_ids"].get("search-trace-1") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "top_k": 51}, "top_k"),
        ({"query": "x", "document_ids": ["nope"]}, "document_ids.0"),
        ({"query": "x", "extra": 1}, "extra"),
        ({}, "query"),
    ],
)
async def test_an_invalid_search_body_gets_422_naming_the_field(
    api: Api, body: dict[str, object], field: str
) -> None:
    status, result, _ = await api.call("POST", SEARCH, json=body)
    assert status == 422
    assert result["error"]["field"] == field


async def test_a_body_that_is_not_json_gets_400(api: Api) -> None:
    headers = {**api.auth(), "Content-Type": "application/json"}
    async with api.session.post(api.url + SEARCH, data=b"{nope", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "malformed_json"


async def test_a_failing_embeddings_service_gets_503_with_retry_after(api: Api) -> None:
    faults = FaultConfig(openai=ServiceFaults(error_rate=1.0))
    async with api.session.put(
        f"{api.mocks}/_admin/faults", data=faults.model_dump_json()
    ) as response:
        assert response.status == 200
    status, body, headers = await api.call("POST", SEARCH, json={"query": "tide"})
    assert status == 503
    assert body["error"]["code"] == "embedding_unavailable"
    assert int(headers["Retry-After"]) >= 1


async def _exact_searches(api: Api) -> dict[str, float]:
    async with api.session.get(f"{api.url}/metrics") as response:
        text = await response.text()
    counts = {"too_few_hits": 0.0, "document_filter": 0.0}
    for line in text.splitlines():
        for reason in counts:
            if line.startswith(f'docpipe_api_search_exact_total{{reason="{reason}"}}'):
                counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_searches_answered_by_the_exact_scan_are_counted_by_reason(
    api: Api, corpus: dict[str, str]
) -> None:
    before = await _exact_searches(api)
    # Three chunks in all: the index finds both of two, but not five of three.
    await api.call("POST", SEARCH, json={"query": "tide", "top_k": 2, "mode": "vector"})
    assert await _exact_searches(api) == before
    await api.call("POST", SEARCH, json={"query": "tide", "top_k": 5, "mode": "vector"})
    query = {"query": "tide", "document_ids": [corpus["bikes.md"]], "mode": "vector"}
    await api.call("POST", SEARCH, json=query)
    after = await _exact_searches(api)
    assert after["too_few_hits"] == before["too_few_hits"] + 1
    assert after["document_filter"] == before["document_filter"] + 1
