"""Every way a request can fail authentication or authorization, over HTTP: 401 with a
WWW-Authenticate challenge, 403 for a missing scope, 429 past the rate limit."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import jwt
import pytest

from docpipe_api.server import open_api
from tests.integration.api.conftest import SECRET, Api, api_settings

DOCS = "/v1/pipelines/default/documents"


async def get_with(api: Api, authorization: str | None) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api.session.get(api.url + DOCS, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


def signed(secret: str = SECRET, **claims: object) -> str:
    payload = {"sub": "alice", "scope": "read", "exp": int(time.time()) + 60, **claims}
    return "Bearer " + jwt.encode(payload, secret, algorithm="HS256")


def alg_none() -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    body = {"sub": "alice", "scope": "read", "exp": int(time.time()) + 60}
    return f"Bearer {part({'alg': 'none'})}.{part(body)}."


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (alg_none(), "algorithm"),
        (signed(secret="a-different-secret-of-sufficient-length"), "signature"),
        (signed(exp=int(time.time()) - 120), "expired"),
        (signed(nbf=int(time.time()) + 600), "not valid yet"),
        ("Bearer " + jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "'exp'"),
        ("Bearer not.a.token", "malformed"),
    ],
    ids=["alg-none", "wrong-key", "expired", "not-yet-valid", "no-exp", "garbage"],
)
async def test_an_invalid_token_gets_401_with_an_invalid_token_challenge(
    api: Api, authorization: str, reason: str
) -> None:
    status, headers, body = await get_with(api, authorization)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer realm="docpipe", error="invalid_token"')
    assert body["error"]["code"] == "unauthorized"
    assert reason in body["error"]["message"]


async def test_a_request_without_a_token_gets_401_with_a_bare_challenge(api: Api) -> None:
    status, headers, _ = await get_with(api, None)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="docpipe"'


@pytest.fixture
async def audience_api(database_url: str, mocks: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, mocks, jwt_audience="docpipe", jwt_issuer="issuer")
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, running.context.pool, running)


async def test_a_token_for_another_audience_gets_401(audience_api: Api) -> None:
    status, headers, body = await get_with(audience_api, signed(aud="someone-else", iss="issuer"))
    assert status == 401
    assert "audience" in body["error"]["message"]
    assert "invalid_token" in headers["WWW-Authenticate"]


async def test_a_token_from_another_issuer_gets_401(audience_api: Api) -> None:
    status, _, body = await get_with(audience_api, signed(aud="docpipe", iss="mallory"))
    assert status == 401
    assert "issuer" in body["error"]["message"]


async def test_a_token_with_the_right_audience_and_issuer_is_accepted(audience_api: Api) -> None:
    status, _, _ = await get_with(audience_api, signed(aud="docpipe", iss="issuer"))
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", DOCS, "read"),
        ("GET", "/v1/documents/00000000-0000-0000-0000-000000000001", "read"),
        ("GET", "/v1/jobs/1", "read"),
        ("DELETE", "/v1/documents/00000000-0000-0000-0000-000000000001", "write"),
        ("POST", "/v1/jobs/1/retry", "write"),
        ("POST", "/v1/pipelines/default/search", "search"),
    ],
)
async def test_a_token_without_the_endpoints_scope_gets_403(
    api: Api, method: str, path: str, needed: str
) -> None:
    others = " ".join(s for s in ("read", "write", "search") if s != needed)
    status, body, headers = await api.call(method, path, scopes=others, json={"query": "x"})
    assert status == 403
    assert body["error"]["code"] == "insufficient_scope"
    assert f'scope="{needed}"' in headers["WWW-Authenticate"]


async def test_an_upload_without_the_write_scope_gets_403(api: Api) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"# x\n\ntext\n", filename="x.md", content_type="text/markdown")
    async with api.session.post(
        api.url + DOCS, data=form, headers=api.auth(scopes="read search")
    ) as response:
        assert response.status == 403


@pytest.fixture
async def limited_api(database_url: str, mocks: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, mocks, rate_limit_per_second=0.5, rate_limit_burst=3)
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, running.context.pool, running)


async def test_a_subject_past_its_rate_limit_gets_429_with_retry_after(
    limited_api: Api, pool: asyncpg.Pool
) -> None:
    statuses = [(await limited_api.call("GET", DOCS))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, body, headers = await limited_api.call("GET", DOCS)
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1
    # Another subject has its own budget.
    assert (await limited_api.call("GET", DOCS, subject="bob"))[0] == 200
