"""Keyword and hybrid search, highlights, and document metadata: given at upload, filtered on,
carried by the hits."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from docpipe_api import store
from docpipe_api.ranking import plan_terms
from docpipe_queue.jobs import Executor
from tests.integration.api.conftest import Api, process_pending

SEARCH = "/v1/pipelines/default/search"

PAGES = {
    "errors.md": "# Error codes\n\nThe upload fails with E_QUOTA_7731 when the owner's budget "
    "is spent; raise the budget or wait.",
    "drain.md": "# Shutdown\n\nOn SIGTERM the worker stops claiming and drains the jobs it "
    "holds before it exits.",
    "garden.md": "# Garden\n\nTomatoes need sun, water and a stake to climb along.",
}


async def upload(
    api: Api,
    data: bytes,
    *,
    filename: str,
    subject: str = "alice",
    parts: dict[str, str] | None = None,
    pipeline: str = "default",
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="text/markdown")
    for name, value in (parts or {}).items():
        form.add_field(name, value)
    async with api.session.post(
        f"{api.url}/v1/pipelines/{pipeline}/documents", data=form, headers=api.auth(subject)
    ) as response:
        return response.status, await response.json()


@pytest.fixture
async def pages(api: Api) -> dict[str, str]:
    ids = {}
    for name, text in PAGES.items():
        parts = {
            "tags": json.dumps(["handbook", name.removesuffix(".md")]),
            "source_url": f"https://docs.example.com/{name}",
            "metadata": json.dumps({"team": "ops" if name != "garden.md" else "home"}),
        }
        status, body = await upload(api, text.encode(), filename=name, parts=parts)
        assert status == 201, body
        ids[name] = body["document"]["id"]
    await process_pending(api)
    return ids


async def search(api: Api, subject: str = "alice", **body: Any) -> list[dict[str, Any]]:
    status, result, _ = await api.call("POST", SEARCH, subject=subject, json=body)
    assert status == 200, result
    hits: list[dict[str, Any]] = result["hits"]
    return hits


async def test_keyword_search_finds_an_error_code_and_highlights_it(
    api: Api, pages: dict[str, str]
) -> None:
    hits = await search(api, query="what does E_QUOTA_7731 mean", mode="keyword")

    assert hits[0]["document_id"] == pages["errors.md"]
    assert hits[0]["keyword_score"] > 0
    assert hits[0]["vector_score"] is None
    content = hits[0]["content"]
    marked = {content[h["start"] : h["end"]].lower() for h in hits[0]["highlights"]}
    assert "e_quota_7731" in marked or "7731" in marked


async def test_keyword_search_without_matching_terms_finds_nothing(
    api: Api, pages: dict[str, str]
) -> None:
    assert await search(api, query="photosynthesis chlorophyll", mode="keyword") == []


async def index_scans(conn: Executor) -> int:
    """Scans of the chunks' text index so far, this session's included."""
    await conn.execute("select pg_stat_force_next_flush()")  # flushed when the session idles
    scans = await conn.fetchval(
        "select idx_scan from pg_stat_user_indexes"
        " where schemaname = 'docpipe' and indexrelname = 'chunks_search_text'"
    )
    return int(scans)


async def test_keyword_candidates_come_through_the_text_index_where_a_scan_is_cheaper_on_paper(
    api: Api, pages: dict[str, str]
) -> None:
    async with api.pool.acquire() as conn:
        # On three chunks the planner, left alone, reads the table (and would on a large table
        # too, for a query whose terms are in a few percent of the chunks: see migration 0015).
        alone = await conn.fetchval(
            "explain (format json) select id from docpipe.chunks c"
            " where c.search_text @@ 'sigterm'::tsquery"
            " and c.pipeline || '' = 'default' and c.owner || '' = 'alice'"
        )
        assert "Seq Scan" in alone
        before = await index_scans(conn)

        hits = await store.keyword_ranking(
            conn,
            plan_terms(["sigterm", "worker"], {}),
            pipeline="default",
            owner="alice",
            limit=5,
            documents=store.DocumentFilter(),
        )

        assert [chunk for chunk, _ in hits] == [
            await conn.fetchval(
                "select id from docpipe.chunks where document_id = $1", uuid.UUID(pages["drain.md"])
            )
        ]
        assert await index_scans(conn) == before + 1


async def test_hybrid_is_the_default_and_reports_both_scores(
    api: Api, pages: dict[str, str]
) -> None:
    hits = await search(api, query="how does a worker drain on SIGTERM?")

    assert hits[0]["document_id"] == pages["drain.md"]
    assert hits[0]["vector_score"] is not None
    assert hits[0]["keyword_score"] is not None
    assert hits[0]["score"] > hits[-1]["score"]


async def test_hits_carry_their_documents_metadata(api: Api, pages: dict[str, str]) -> None:
    hit = (await search(api, query="tomatoes stake", top_k=1))[0]

    assert hit["filename"] == "garden.md"
    assert hit["tags"] == ["garden", "handbook"]
    assert hit["source_url"] == "https://docs.example.com/garden.md"
    assert hit["metadata"] == {"team": "home"}
    assert hit["content_type"] == "text/markdown"
    assert hit["uploaded_at"]


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"tags": ["drain"]}, {"drain.md"}),
        ({"tags": ["handbook", "errors"]}, {"errors.md"}),
        ({"metadata": {"team": "home"}}, {"garden.md"}),
        ({"filename": "dr*.MD"}, {"drain.md"}),
        ({"content_types": ["text/html"]}, set()),
        ({"uploaded_before": "2000-01-01T00:00:00Z"}, set()),
        ({"uploaded_after": "2000-01-01T00:00:00Z", "tags": ["garden"]}, {"garden.md"}),
    ],
)
async def test_filters_keep_only_matching_documents(
    api: Api, pages: dict[str, str], mode: str, filter: dict[str, Any], expected: set[str]
) -> None:
    hits = await search(
        api, query="worker jobs tomatoes budget E_QUOTA_7731", mode=mode, filter=filter
    )

    assert {hit["filename"] for hit in hits} == expected


async def test_another_owner_finds_none_of_them_in_any_mode(
    api: Api, pages: dict[str, str]
) -> None:
    for mode in ("vector", "keyword", "hybrid"):
        assert await search(api, subject="bob", query="E_QUOTA_7731 SIGTERM", mode=mode) == []


async def test_the_text_search_configuration_is_per_pipeline(api: Api) -> None:
    await api.pool.execute(
        "insert into docpipe.pipeline_text_search (pipeline, config) values ('other', 'simple')"
    )
    await upload(api, b"# Notes\n\nThe running dogs.", filename="n.md", pipeline="other")
    await upload(api, b"# Notes\n\nThe running dogs.", filename="n.md")
    await process_pending(api, "other")
    await process_pending(api)

    def query(pipeline: str) -> Any:
        body = {"query": "the", "mode": "keyword"}
        return api.call("POST", f"/v1/pipelines/{pipeline}/search", json=body)

    # 'simple' indexes every word; 'english' drops "the" as a stop word.
    assert len((await query("other"))[1]["hits"]) == 1
    assert (await query("default"))[1]["hits"] == []


async def test_metadata_given_again_with_the_same_content_replaces_it(api: Api) -> None:
    await upload(api, b"# A\n\nalpha", filename="a.md", parts={"tags": "one, two"})
    status, body = await upload(api, b"# A\n\nalpha", filename="a.md", parts={"tags": "three"})

    assert status == 200
    assert body["document"]["tags"] == ["three"]


@pytest.mark.parametrize(
    ("parts", "status", "field"),
    [
        ({"metadata": json.dumps({"x": "y" * 9000})}, 413, "metadata"),
        ({"metadata": "{not json"}, 422, "metadata"),
        ({"metadata": "[1, 2]"}, 422, "metadata"),
        ({"tags": '["ok", ""]'}, 422, "tags"),
        ({"tags": json.dumps([f"t{i}" for i in range(40)])}, 422, "tags"),
        ({"source_url": "javascript:alert(1)"}, 422, "source_url"),
        ({"colour": "blue"}, 422, "colour"),
    ],
)
async def test_bad_metadata_gets_a_4xx_naming_the_field(
    api: Api, parts: dict[str, str], status: int, field: str
) -> None:
    got, body = await upload(api, b"# A\n\nalpha", filename="a.md", parts=parts)

    assert got == status, body
    assert body["error"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "weights": {"vector": -1}}, "weights.vector"),
        (
            {"query": "x", "filter": {"uploaded_after": "2024-01-01T00:00:00"}},
            "filter.uploaded_after",
        ),
        ({"query": "x", "filter": {"size": 3}}, "filter.size"),
    ],
)
async def test_an_invalid_search_option_gets_422_naming_it(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, result, _ = await api.call("POST", SEARCH, json=body)

    assert status == 422
    assert result["error"]["field"] == field
