"""Per-owner limits at the intake API: uploads per minute (429 with Retry-After), documents and
bytes stored (403 naming the limit and the current use), overrides per owner, and GET /v1/usage."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from docpipe_api.server import open_api
from docpipe_api.settings import ApiSettings
from tests.integration.api.conftest import Api, api_settings, unique_markdown


@pytest.fixture
async def limited(database_url: str, pool: asyncpg.Pool, mocks: str) -> AsyncIterator[Api]:
    settings = api_settings(
        database_url,
        mocks,
        owner_max_documents=3,
        owner_max_bytes=10_000,
        owner_uploads_per_minute=5,
        owner_limits=json.dumps(
            {
                "bulk": {"max_documents": 0, "uploads_per_minute": 600},
                "tiny": {"max_bytes": 100},
                "bob": {"uploads_per_minute": 600},
            }
        ),
    )
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, pool, running)


async def test_uploads_over_the_owners_rate_get_429_with_retry_after(limited: Api) -> None:
    form_statuses = []
    for _ in range(5):
        status, _ = await limited.upload(unique_markdown(), subject="rater")
        form_statuses.append(status)
    # The documents limit (3) answers 403 before the rate runs out; the rate counts every upload.
    assert form_statuses == [201, 201, 201, 403, 403]
    form = aiohttp.FormData()
    form.add_field("file", unique_markdown(), filename="n.md", content_type="text/markdown")
    async with limited.session.post(
        f"{limited.url}/v1/pipelines/default/documents", data=form, headers=limited.auth("rater")
    ) as response:
        body = await response.json()
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "upload_rate_limited"
    assert "5 per minute" in body["error"]["message"]
    # Another owner has a bucket of its own.
    status, _ = await limited.upload(unique_markdown(), subject="someone-else")
    assert status == 201


async def test_over_the_documents_limit_403_names_the_limit_and_the_use(limited: Api) -> None:
    for _ in range(3):
        status, _ = await limited.upload(unique_markdown(), subject="bob", pipeline="other")
        assert status == 201
    # Counted across pipelines.
    status, body = await limited.upload(unique_markdown(), subject="bob")
    assert status == 403
    assert body["error"]["code"] == "storage_limit_documents"
    assert "3 documents stored, at most 3" in body["error"]["message"]
    # The same content again stores nothing new: it passes.
    data = unique_markdown("Again")
    await limited.pool.execute(
        "delete from docpipe.documents where id = (select id from docpipe.documents"
        " where owner = 'bob' limit 1)"
    )
    assert (await limited.upload(data, subject="bob"))[0] == 201
    assert (await limited.upload(data, subject="bob"))[0] == 200


async def test_over_the_bytes_limit_403_names_the_limit_and_the_use(limited: Api) -> None:
    first = unique_markdown(sentence="x" * 60)
    assert (await limited.upload(first, subject="tiny"))[0] == 201
    status, body = await limited.upload(unique_markdown(sentence="y" * 60), subject="tiny")
    assert status == 403
    assert body["error"]["code"] == "storage_limit_bytes"
    assert f"{len(first)} bytes stored, at most 100" in body["error"]["message"]


async def test_an_override_lifts_a_limit_for_its_owner(limited: Api) -> None:
    for _ in range(6):
        status, _ = await limited.upload(unique_markdown(), subject="bulk")
        assert status == 201


async def test_usage_shows_the_callers_documents_bytes_and_limits(limited: Api) -> None:
    sizes = []
    for _ in range(2):
        data = unique_markdown()
        sizes.append(len(data))
        assert (await limited.upload(data, subject="carol"))[0] == 201
    await limited.upload(unique_markdown(), subject="dave")
    document_id = await limited.pool.fetchval(
        "select id from docpipe.documents where owner = 'carol' limit 1"
    )
    await limited.pool.execute(
        "insert into docpipe.document_usage (document_id, pipeline, owner, embedding_tokens,"
        " parsed_pages, provider_requests) values ($1, 'default', 'carol', 1234, 2, 3)",
        document_id,
    )
    status, body, _ = await limited.call("GET", "/v1/usage", subject="carol", scopes="read")
    assert status == 200
    assert body == {
        "owner": "carol",
        "documents": 2,
        "bytes": sum(sizes),
        "embedding_tokens": 1234,
        "parsed_pages": 2,
        "provider_requests": 3,
        "limits": {"max_documents": 3, "max_bytes": 10_000, "uploads_per_minute": 5.0},
    }
    status, body, _ = await limited.call("GET", "/v1/usage", subject="bulk", scopes="read")
    assert body["documents"] == 0
    assert body["limits"] == {
        "max_documents": None,
        "max_bytes": 10_000,
        "uploads_per_minute": 600.0,
    }


async def test_usage_needs_the_read_scope(limited: Api) -> None:
    status, body, _ = await limited.call("GET", "/v1/usage", scopes="write")
    assert status == 403
    assert body["error"]["code"] == "insufficient_scope"


def test_overrides_that_are_not_a_json_object_of_limits_are_refused() -> None:
    def settings(owner_limits: str) -> ApiSettings:
        values: dict[str, Any] = {
            "dev_mode": True,
            "openai_base_url": "http://127.0.0.1:9/v1",
            "owner_limits": owner_limits,
        }
        return ApiSettings(**values)

    for bad in ('["alice"]', '{"alice": {"max_docs": 1}}', '{"alice": {"max_bytes": -1}}', "{"):
        with pytest.raises(ValueError, match="JSON object of owner to limits"):
            settings(bad)
    quotas = settings('{"a": {"max_documents": 0}}').owner_quotas()
    assert quotas.limits("a").max_documents is None
    assert quotas.limits(str(uuid.uuid4())) == quotas.default
