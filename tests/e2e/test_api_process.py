"""`docpipe api` as a real process beside a real worker: it refuses to start unsafe, and a file
ingested with `docpipe ingest --api-url` is found first by `docpipe search` for its own sentence,
with the request's correlation id carried to the worker's logs and its outbound calls."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from docpipe_api.auth import DEVELOPMENT_SECRET
from docpipe_mocks.server import MockConfig
from tests.e2e.test_worker_process import readyz, spawn_worker, stop, wait_until
from tests.support.mocks import serve
from tests.support.ports import free_port

SENTENCE = "Cormorants dry their wings on the harbour wall after diving for sprats."


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


async def docpipe(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DOCPIPE_API_JWT_SECRET": DEVELOPMENT_SECRET}, "development secret"),
        ({}, "DOCPIPE_API_JWT_SECRET"),
        ({"DOCPIPE_API_JWT_SECRET": "short"}, "at least 32 bytes"),
    ],
    ids=["dev-secret-outside-dev-mode", "no-key", "short-secret"],
)
async def test_the_api_refuses_to_start_without_a_safe_key(
    variables: dict[str, str], named: str
) -> None:
    env = environment(
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        OPENAI_BASE_URL="http://127.0.0.1:1/v1",
        **variables,
    )
    env.pop("DOCPIPE_API_DEV_MODE", None)
    code, _, err = await docpipe("api", env=env)
    assert code == 2, err
    assert named in err
    assert "Traceback" not in err


async def test_ingest_through_the_api_then_search_finds_the_documents_own_chunk_first(
    database_url: str, mocks: str, tmp_path: Path
) -> None:
    api_port, worker_port = free_port(), free_port()
    api_log = tmp_path / "api.log"
    env = environment(
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=f"{mocks}/v1",
        DOCPIPE_API_DEV_MODE="true",
        DOCPIPE_API_HOST="127.0.0.1",
        DOCPIPE_API_PORT=str(api_port),
        DOCPIPE_API_PIPELINES="p",
    )
    env.pop("DOCPIPE_API_JWT_SECRET", None)
    with api_log.open("ab") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "api", env=env, stdout=log, stderr=log
        )
    worker_log = tmp_path / "worker.log"
    worker = await spawn_worker(database_url, mocks, worker_port, worker_log)
    try:

        async def api_ready() -> bool:
            assert api.returncode is None, api_log.read_text()
            return await readyz(api_port) == 200

        await wait_until(api_ready, 30, "the API is ready")
        code, token, err = await docpipe("token", "--subject", "carol", env=env)
        assert code == 0, err
        client_env = environment(
            DOCPIPE_API_URL=f"http://127.0.0.1:{api_port}", DOCPIPE_API_TOKEN=token.strip()
        )
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        (corpus / "birds.md").write_text(f"# Birds\n\n{SENTENCE}\n")
        (corpus / "boats.md").write_text("# Boats\n\nKeels are scraped and painted every spring.\n")
        code, out, err = await docpipe(
            "ingest", str(corpus), "--pipeline", "p", "--json", "--timeout", "60",
            "--api-url", f"http://127.0.0.1:{api_port}", env=client_env,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["processed"] == 2

        code, out, err = await docpipe(
            "search", SENTENCE, "--pipeline", "p", "--json", env=client_env
        )
        assert code == 0, err
        first = json.loads(out)["hits"][0]
        assert first["filename"] == "birds.md"
        assert SENTENCE in first["content"]

        code, out, err = await docpipe("search", SENTENCE, "--pipeline", "p", env=client_env)
        assert code == 0, err
        assert "birds.md" in out

        # The ingest's X-Request-ID went with the job to the worker's log and its calls.
        logged = [json.loads(line) for line in worker_log.read_text().splitlines() if "{" in line]
        ids = {e.get("correlation_id") for e in logged if e.get("msg") == "document processed"}
        assert len(ids) == 1
        (correlation_id,) = ids
        assert str(correlation_id).startswith("ingest-")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{mocks}/_admin/stats") as response,
        ):
            stats = await response.json()
        # Both documents' chunks may share one embeddings request, which lists the id once.
        assert stats["request_ids"].get(correlation_id, 0) >= 1
    finally:
        await stop(worker)
        await stop(api)
