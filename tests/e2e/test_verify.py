"""`docpipe verify` against a running API (a real process) with and without a worker behind it:
every step passes with exit 0 when the deployment works; a probe that is never processed fails
the run with exit 1 and is still deleted; an unreachable API fails at once."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docpipe_api.auth import mint_token
from docpipe_mocks.server import MockConfig
from docpipe_queue.database import create_pool
from tests.e2e.test_api_process import docpipe, environment
from tests.e2e.test_worker_process import readyz, spawn_worker, stop, wait_until
from tests.support.mocks import serve
from tests.support.ports import free_port

SECRET = "verify-test-" + secrets.token_hex(24)
STEPS = [
    "health", "readiness", "auth: no token", "auth: bad token", "auth: wrong scope",
    "upload", "processed", "search", "delete",
]  # fmt: skip


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


def outcomes(report: dict[str, object]) -> dict[str, str]:
    steps = report["steps"]
    assert isinstance(steps, list)
    return {s["name"]: s["outcome"] for s in steps}


async def test_verify_passes_a_working_deployment_and_fails_a_stuck_one(
    database_url: str, mocks: str, tmp_path: Path
) -> None:
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    api_log = tmp_path / "api.log"
    env = environment(
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=f"{mocks}/v1",
        DOCPIPE_API_HOST="127.0.0.1",
        DOCPIPE_API_PORT=str(api_port),
        DOCPIPE_API_PIPELINES="p",
        DOCPIPE_API_JWT_SECRET=SECRET,
    )
    env.pop("DOCPIPE_API_DEV_MODE", None)
    with api_log.open("ab") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "api", env=env, stdout=log, stderr=log
        )
    worker = None
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:

        async def api_ready() -> bool:
            assert api.returncode is None, api_log.read_text()
            return await readyz(api_port) == 200

        await wait_until(api_ready, 30, "the API is ready")

        # No worker yet: the probe is never processed. Tokens given on the command line.
        token = mint_token(SECRET, subject="ci", scopes=["read", "write", "search"])
        read_only = mint_token(SECRET, subject="ci", scopes=["read"])
        client = environment()
        client.pop("DOCPIPE_API_JWT_SECRET", None)
        code, out, err = await docpipe(
            "verify", "--api-url", api_url, "--token", token, "--read-only-token", read_only,
            "--pipeline", "p", "--timeout", "2", "--json", env=client,
        )  # fmt: skip
        assert code == 1, err
        stuck = json.loads(out)
        assert stuck["ok"] is False
        assert outcomes(stuck) == {
            **dict.fromkeys(STEPS[:6], "pass"),
            "processed": "fail",
            "delete": "pass",
        }
        assert "is a worker serving pipeline 'p'?" in err
        assert await pool.fetchval("select count(*) from docpipe.documents") == 0

        # With a worker: every step passes; tokens minted from the API's secret.
        worker = await spawn_worker(database_url, mocks, free_port(), tmp_path / "worker.log")
        code, out, err = await docpipe(
            "verify", "--api-url", api_url, "--pipeline", "p", "--timeout", "30",
            env={**client, "DOCPIPE_API_JWT_SECRET": SECRET},
        )  # fmt: skip
        assert code == 0, out + err
        for step in STEPS:
            assert any(
                line.split()[:1] == ["PASS"] and step in line for line in out.splitlines()
            ), (step, out)
        assert "OK: 9 passed, 0 failed, 0 skipped" in out
        assert await pool.fetchval("select count(*) from docpipe.documents") == 0
    finally:
        if worker is not None:
            await stop(worker)
        await stop(api)
        await pool.close()


async def test_verify_of_an_unreachable_api_fails_at_the_health_check() -> None:
    client = environment()
    client.pop("DOCPIPE_API_JWT_SECRET", None)
    code, out, _ = await docpipe(
        "verify", "--api-url", f"http://127.0.0.1:{free_port()}", "--token", "t", env=client
    )
    assert code == 1
    assert "FAIL  health" in out
    assert "cannot reach the API" in out
    assert "FAILED: 0 passed, 1 failed" in out
