"""The mocks' provider quotas over real HTTP on 127.0.0.1: headers, 429s, admin API, the CLI, and
the official `openai` client."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import openai
import pytest
from fpdf import FPDF
from multidict import CIMultiDict

from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.openai import OpenAISettings
from docpipe_mocks.quotas import LlamaParseQuotas, OpenAIQuotas, QuotaConfig
from docpipe_mocks.server import MockConfig, serve

MODEL = "text-embedding-3-small"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
HEADERS = [
    f"x-ratelimit-{what}-{resource}"
    for resource in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


def quotas(**openai_quotas: Any) -> MockConfig:
    return MockConfig(quotas=QuotaConfig(openai=OpenAIQuotas(**openai_quotas)))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def embed(
    session: aiohttp.ClientSession, url: str, text: str | list[str], *, key: str | None = "sk-a"
) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": MODEL, "input": text}
    async with session.post(f"{url}/v1/embeddings", json=body, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def admin(
    session: aiohttp.ClientSession, url: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, f"{url}/_admin/{path}", json=body) as response:
        return response.status, await response.json()


def seconds(duration: str) -> float:
    """The seconds of a duration in OpenAI's format."""
    match = DURATION.match(duration)
    assert match is not None, duration
    hours, minutes, rest = (match.group(1) or "0h"), (match.group(2) or "0m"), match.group(3)
    value = int(hours[:-1]) * 3600 + int(minutes[:-1]) * 60
    return value + (int(rest[:-2]) / 1000 if rest.endswith("ms") else float(rest[:-1]))


def tokens_of(characters: int) -> str:
    """A text the mock counts as `characters / 4` tokens."""
    return "word " * (characters // 5)


# --- OpenAI: headers and 429s -------------------------------------------------------------------


async def test_every_embeddings_response_carries_the_ratelimit_headers(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(requests_per_minute=3, tokens_per_minute=1000)) as url:
        answers = [await embed(session, url, "one two three four") for _ in range(3)]
        refused = await embed(session, url, "one two three four")
        invalid = await embed(session, url, [""])

    for status, headers, _ in [*answers, refused, invalid]:
        assert all(name in headers for name in HEADERS), (status, headers)
        assert DURATION.match(headers["x-ratelimit-reset-requests"])
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [h["x-ratelimit-limit-requests"] for _, h, _ in answers] == ["3"] * 3
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in answers] == ["2", "1", "0"]
    # 18 characters are 5 tokens each.
    assert [h["x-ratelimit-remaining-tokens"] for _, h, _ in answers] == ["995", "990", "985"]
    assert answers[0][1]["x-ratelimit-limit-tokens"] == "1000"
    # One request of 3 per minute is back 20 s after it was spent.
    assert 19.0 < seconds(answers[0][1]["x-ratelimit-reset-requests"]) <= 20.0
    assert refused[0] == 429
    assert invalid[0] == 400


async def test_an_injected_fault_spends_no_quota_but_shows_the_budget(
    session: aiohttp.ClientSession,
) -> None:
    config = MockConfig(
        quotas=QuotaConfig(openai=OpenAIQuotas(requests_per_minute=5)),
        faults=FaultConfig(openai=ServiceFaults(error_rate=1.0)),
    )
    async with serve("127.0.0.1", 0, config) as url:
        status, headers, _ = await embed(session, url, "hello")

    assert status == 500
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "5"


async def test_a_key_over_its_requests_per_minute_gets_429_with_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(requests_per_minute=2)) as url:
        await embed(session, url, "hello")
        await embed(session, url, "hello")
        status, headers, body = await embed(session, url, "hello")
        other_key, _, _ = await embed(session, url, "hello", key="sk-b")

    assert status == 429
    assert headers["retry-after"] == "30"  # one request of 2 per minute: 30 s
    assert 29_000 < int(headers["retry-after-ms"]) <= 30_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in headers  # no token quota configured
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "requests",
        "rate_limit_exceeded",
        None,
    )
    assert "requests per min (RPM): Limit 2, Used 2, Requested 1" in error["message"]
    assert other_key == 200  # every key has its own budget


async def test_a_key_over_its_tokens_per_minute_gets_429_naming_tokens(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(tokens_per_minute=100)) as url:
        accepted, _, _ = await embed(session, url, tokens_of(360))  # 90 tokens
        status, headers, body = await embed(session, url, tokens_of(80))  # 20 tokens

    assert accepted == 200
    assert status == 429
    # 10 tokens short at 100 per minute: 6 s.
    assert headers["retry-after"] == "6"
    assert 5_000 < int(headers["retry-after-ms"]) <= 6_000
    assert headers["x-ratelimit-remaining-tokens"] == "10"
    assert body["error"]["type"] == "tokens"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "Limit 100, Used 90, Requested 20" in body["error"]["message"]


async def test_a_request_larger_than_the_whole_token_quota_gets_429_without_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(tokens_per_minute=10)) as url:
        status, headers, body = await embed(session, url, tokens_of(200))  # 50 tokens
        small, _, _ = await embed(session, url, "fits")

    assert status == 429
    assert "retry-after" not in headers
    assert "retry-after-ms" not in headers
    assert body["error"]["type"] == "tokens"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["message"].startswith(f"Request too large for {MODEL}")
    assert small == 200  # it spent nothing


async def test_requests_without_a_key_share_the_anonymous_budget(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(requests_per_minute=1)) as url:
        first, _, _ = await embed(session, url, "hello", key=None)
        second, _, _ = await embed(session, url, "hello", key=None)
        _, stats = await admin(session, url, "GET", "stats")

    assert (first, second) == (200, 429)
    assert stats["quotas"]["openai"]["anonymous"]["rate_limited"] == 1


async def test_insufficient_quota_mode_answers_every_request_429_without_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(insufficient_quota=True)) as url:
        status, headers, body = await embed(session, url, "hello")
        _, stats = await admin(session, url, "GET", "stats")

    assert status == 429
    assert "retry-after" not in headers
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["code"] == "insufficient_quota"
    assert body["error"]["param"] is None
    assert "exceeded your current quota" in body["error"]["message"]
    assert stats["quotas"]["openai"]["sk-a"]["insufficient_quota"] == 1


# --- the admin API ------------------------------------------------------------------------------


async def test_quotas_changed_through_the_admin_api_apply_to_the_next_request(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        status, headers, _ = await embed(session, url, "hello")
        assert status == 200
        assert not any(name.startswith("x-ratelimit-") for name in headers)

        put_status, config = await admin(
            session, url, "PUT", "quotas", {"openai": {"requests_per_minute": 1}}
        )
        assert put_status == 200
        assert config["openai"]["requests_per_minute"] == 1
        _, current = await admin(session, url, "GET", "quotas")
        assert current == config
        assert current["llamaparse"] == {"uploads_per_window": None, "window_seconds": 10}

        assert (await embed(session, url, "hello"))[0] == 200
        assert (await embed(session, url, "hello"))[0] == 429

        # Without reset, what was spent stays spent; with it, every budget starts full.
        await admin(session, url, "PUT", "quotas", {"openai": {"requests_per_minute": 2}})
        assert (await embed(session, url, "hello"))[0] == 429
        await admin(
            session, url, "PUT", "quotas?reset=true", {"openai": {"requests_per_minute": 2}}
        )
        assert (await embed(session, url, "hello"))[0] == 200

        await admin(session, url, "PUT", "quotas", {"openai": {"insufficient_quota": True}})
        _, _, body = await embed(session, url, "hello")
        assert body["error"]["code"] == "insufficient_quota"

        await admin(session, url, "PUT", "quotas", {})
        assert (await embed(session, url, "hello"))[0] == 200


async def test_the_admin_api_refuses_invalid_quotas_naming_the_field(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        status, body = await admin(
            session,
            url,
            "PUT",
            "quotas",
            {"openai": {"tokens_per_minute": 0}, "llamaparse": {"per_hour": 3}},
        )
        bad_reset, _ = await admin(session, url, "PUT", "quotas?reset=maybe", {})

    assert status == 422
    assert [error["field"] for error in body["fields"]] == [
        "openai.tokens_per_minute",
        "llamaparse.per_hour",
    ]
    assert bad_reset == 422


async def test_stats_count_per_key_what_was_served_refused_and_when(
    session: aiohttp.ClientSession,
) -> None:
    async with serve("127.0.0.1", 0, quotas(requests_per_minute=2)) as url:
        await embed(session, url, ["one two three four", "five"])  # 5 + 1 tokens
        await embed(session, url, "five")
        await embed(session, url, "five")
        _, stats = await admin(session, url, "GET", "stats")

    usage = stats["quotas"]["openai"]["sk-a"]
    assert (usage["requests"], usage["tokens"], usage["rate_limited"]) == (2, 7, 1)
    assert usage["max_requests_in_60s"] == 2
    assert usage["max_tokens_in_60s"] == 7
    assert usage["remaining_requests"] == 0
    assert sum(row[1] for row in usage["history"]) == 2
    assert sum(row[2] for row in usage["history"]) == 7
    assert stats["requests"]["POST /v1/embeddings"] == {"200": 2, "429": 1}


# --- LlamaParse ---------------------------------------------------------------------------------


async def upload(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    *,
    filename: str = "notes.txt",
    key: str = "llx-a",
) -> tuple[int, Mapping[str, str], dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="text/plain")
    async with session.post(
        f"{url}/api/parsing/upload", data=form, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def finished(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        async with session.get(f"{url}/api/parsing/job/{job_id}") as response:
            status: dict[str, Any] = await response.json()
        if status["status"] != "PENDING":
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} stayed PENDING")


async def test_uploads_over_the_window_get_429_with_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    config = MockConfig(
        quotas=QuotaConfig(llamaparse=LlamaParseQuotas(uploads_per_window=2, window_seconds=30))
    )
    async with serve("127.0.0.1", 0, config) as url:
        first = await upload(session, url, b"first")
        second = await upload(session, url, b"second")
        status, headers, body = await upload(session, url, b"third")
        other_key, _, _ = await upload(session, url, b"other", key="llx-b")
        _, stats = await admin(session, url, "GET", "stats")

    assert (first[0], second[0], other_key) == (200, 200, 200)
    assert status == 429
    assert 29 <= int(headers["retry-after"]) <= 30
    assert "retry-after-ms" in headers
    assert "2 uploads per 30 seconds" in body["detail"]
    usage = stats["quotas"]["llamaparse"]["llx-a"]
    assert (usage["uploads"], usage["rate_limited"]) == (2, 1)
    assert usage["max_uploads_in_30s"] == 2
    assert sum(count for _, count in usage["history"]) == 2


def two_page_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in ("first page", "second page"):
        pdf.add_page()
        pdf.cell(text=text)
    return bytes(pdf.output())


def text_of_any_upload(data: bytes, filename: str, content_type: str | None) -> str:
    """Text files as they are (form feeds and all); anything else as a line about it."""
    if filename.endswith(".txt"):
        return data.decode()
    return f"{len(data)} bytes of {filename}"


@pytest.mark.parametrize(
    ("data", "filename", "pages"),
    [
        (b"one page of text", "notes.txt", 1),
        (b"page one\fpage two\fpage three\f", "notes.txt", 3),
        (two_page_pdf(), "report.pdf", 2),
    ],
)
async def test_a_finished_job_reports_its_pages_in_job_metadata(
    session: aiohttp.ClientSession, data: bytes, filename: str, pages: int
) -> None:
    config = MockConfig(quotas=QuotaConfig(llamaparse=LlamaParseQuotas(uploads_per_window=5)))
    async with serve("127.0.0.1", 0, config, text_of_any_upload) as url:
        status, _, job = await upload(session, url, data, filename=filename)
        assert status == 200
        assert set(job) == {"id", "status"}
        result = await finished(session, url, job["id"])
        async with session.get(f"{url}/api/parsing/job/{job['id']}/result/markdown") as response:
            markdown = await response.json()
        _, stats = await admin(session, url, "GET", "stats")

    assert result == {"id": job["id"], "status": "SUCCESS", "job_metadata": {"job_pages": pages}}
    assert markdown["markdown"] == text_of_any_upload(data, filename, None)
    assert markdown["job_metadata"] == {"job_pages": pages}
    assert stats["quotas"]["llamaparse"]["llx-a"]["pages"] == pages


# --- the official openai client -----------------------------------------------------------------


@pytest.fixture
async def limited_url() -> AsyncIterator[str]:
    config = MockConfig(
        openai=OpenAISettings(api_key="sk-live"),
        quotas=QuotaConfig(openai=OpenAIQuotas(requests_per_minute=1, tokens_per_minute=500)),
    )
    async with serve("127.0.0.1", 0, config) as url:
        yield url


async def test_the_openai_client_reads_the_headers_and_sees_rate_limit_error(
    limited_url: str,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{limited_url}/v1", api_key="sk-live", max_retries=0)
    async with client:
        raw = await client.embeddings.with_raw_response.create(model=MODEL, input=["hello world"])
        embeddings = raw.parse()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model=MODEL, input=["hello world"])

    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.headers["x-ratelimit-limit-tokens"] == "500"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "497"
    assert DURATION.match(raw.headers["x-ratelimit-reset-requests"])
    assert len(embeddings.data[0].embedding) == 1536
    assert embeddings.usage.prompt_tokens == 3
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.response.headers["retry-after"] == "60"
    assert int(error.response.headers["retry-after-ms"]) > 59_000


async def test_the_openai_client_sees_insufficient_quota(session: aiohttp.ClientSession) -> None:
    async with serve("127.0.0.1", 0, quotas(insufficient_quota=True)) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-any", max_retries=0)
        async with client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.embeddings.create(model=MODEL, input="hello")

    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


# --- `docpipe mocks` flags ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_docpipe_mocks_takes_the_quotas_from_its_flags(
    session: aiohttp.ClientSession,
) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "docpipe_cli.main", "mocks", "--port", str(port)),
        *("--openai-rpm", "7", "--openai-tpm", "900", "--llamaparse-uploads", "3"),
        *("--llamaparse-window", "5", "--openai-burst-seconds", "10"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                status, config = await admin(session, url, "GET", "quotas")
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("docpipe mocks did not start")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)

    assert status == 200
    assert config == {
        "openai": {
            "requests_per_minute": 7,
            "tokens_per_minute": 900,
            "insufficient_quota": False,
            "burst_seconds": 10,
        },
        "llamaparse": {"uploads_per_window": 3, "window_seconds": 5},
    }


def test_docpipe_mocks_refuses_a_quota_that_is_not_positive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "docpipe_cli.main", "mocks", "--openai-rpm", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "requests_per_minute" in result.stderr
