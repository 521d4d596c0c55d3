"""`docpipe worker` as a real process: configuration errors, SIGTERM drain, a worker killed
with SIGKILL mid-ingest, and a database that goes away for a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.server import MockConfig
from docpipe_queue.database import create_pool
from docpipe_queue.documents import add_document
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import migrate
from tests.samples import markdown_bytes
from tests.support.mocks import serve
from tests.support.ports import free_port

Process = asyncio.subprocess.Process


async def spawn_worker(database_url: str, mocks: str, port: int, log: Path, **env: str) -> Process:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": f"{mocks}/v1",
        "DOCPIPE_PIPELINE": "p",
        "DOCPIPE_METRICS_HOST": "127.0.0.1",
        "DOCPIPE_METRICS_PORT": str(port),
        "DOCPIPE_POLL_INTERVAL_SECONDS": "0.2",
        **env,
    }
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "worker", env=environment,
            stdout=out, stderr=out,
        )  # fmt: skip


async def readyz(port: int) -> int:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=1)
            ) as response,
        ):
            return response.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(0.05)


async def add_documents(pool: asyncpg.Pool, count: int, size: int = 3) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    async with pool.acquire() as conn:
        for i in range(count):
            paragraphs = [f"Document {i} paragraph {p} about tide tables." for p in range(size)]
            added = await add_document(
                conn,
                pipeline="p",
                owner="o",
                filename=f"doc-{i}.md",
                content_type="text/markdown",
                data=markdown_bytes(f"Doc {i}", paragraphs),
            )
            ids.append(added.document_id)
    return ids


def processed_all(pool: asyncpg.Pool, total: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        done = await pool.fetchval(
            "select count(*) from docpipe.documents where status = 'processed'"
        )
        return bool(done == total)

    return check


async def assert_no_duplicate_chunks(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(
        "select (select count(*) from docpipe.chunks) as chunks,"
        " (select sum(chunk_count) from docpipe.documents) as expected"
    )
    assert row is not None
    assert row["chunks"] == row["expected"]


async def stop(proc: Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


async def test_bad_configuration_names_the_variable_and_exits_before_starting(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", "worker",
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
             "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
             "DOCPIPE_CONCURRENCY": "0", "DOCPIPE_PARSER": "magic"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    message = err.decode()
    assert proc.returncode == 2
    assert "DOCPIPE_CONCURRENCY" in message
    assert "greater than or equal to 1" in message
    assert "DOCPIPE_PARSER" in message
    assert "Traceback" not in message
    assert "cannot reach" not in message, "it must not try the database first"


async def test_sigterm_finishes_in_flight_jobs_releases_the_rest_and_exits_zero(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    slow = MockConfig(faults=FaultConfig(openai=ServiceFaults(latency_ms=1500)))
    async with serve("127.0.0.1", 0, slow) as url:
        await add_documents(pool, 12)
        port = free_port()
        log = tmp_path / "worker.log"
        proc = await spawn_worker(
            database_url, url, port, log, DOCPIPE_CONCURRENCY="4",
            DOCPIPE_SHUTDOWN_GRACE_SECONDS="10",
        )  # fmt: skip
        try:

            async def four_in_flight() -> bool:
                n = await pool.fetchval("select count(*) from docpipe.jobs where status='running'")
                return bool(n == 4)

            await wait_until(four_in_flight, 30, "worker takes 4 jobs")
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
        finally:
            await stop(proc)
    assert proc.returncode == 0, log.read_text()
    rows = await pool.fetch("select status, attempts from docpipe.jobs")
    statuses = [r["status"] for r in rows]
    assert statuses.count("succeeded") >= 4, "the in-flight jobs finished"
    assert "running" not in statuses, "nothing is left leased to a gone worker"
    queued = [r for r in rows if r["status"] == "queued"]
    assert queued, "unstarted work went back to the queue"
    assert all(r["attempts"] == 0 for r in queued), "released jobs did not spend an attempt"


async def test_sigkill_of_one_of_two_workers_loses_and_duplicates_nothing(
    pool: asyncpg.Pool, database_url: str, mocks: str, tmp_path: Path
) -> None:
    total = 300
    await add_documents(pool, total)
    ports = [free_port(), free_port()]
    env = {"DOCPIPE_CONCURRENCY": "8", "DOCPIPE_LEASE_SECONDS": "3"}
    workers = [
        await spawn_worker(database_url, mocks, port, tmp_path / f"w{i}.log", **env)
        for i, port in enumerate(ports)
    ]
    try:

        async def a_third_done() -> bool:
            n = await pool.fetchval(
                "select count(*) from docpipe.documents where status = 'processed'"
            )
            return bool(n >= total // 3)

        await wait_until(a_third_done, 60, "a third processed")

        async def victim_holds_jobs() -> bool:
            n = await pool.fetchval(
                "select count(*) from docpipe.jobs where status = 'running' and worker like $1",
                f"%-{workers[0].pid}",
            )
            return bool(n > 0)

        await wait_until(victim_holds_jobs, 30, "the victim holds jobs")
        workers[0].send_signal(signal.SIGKILL)
        await workers[0].wait()
        await wait_until(processed_all(pool, total), 120, "every document processed")
    finally:
        for proc in workers:
            await stop(proc)
    await assert_no_duplicate_chunks(pool)
    jobs = await pool.fetch("select status, count(*) from docpipe.jobs group by status")
    assert {r[0]: r[1] for r in jobs} == {"succeeded": total}
    # The kill stranded jobs mid-flight; they came back through lease expiry.
    rescued = await pool.fetchval("select count(*) from docpipe.jobs where attempts > 1")
    assert rescued >= 1


async def test_workers_ride_out_a_database_restart(tmp_path: Path, mocks: str) -> None:
    from pgserver import _commands

    pg_ctl = _commands.__dict__["pg_ctl"]  # generated at import time, invisible to type checkers
    pgdata = tmp_path / "db"
    url = start_embedded_postgres(pgdata)
    data = pgdata / "pgdata"
    user = "pgserver" if os.geteuid() == 0 else None
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(url, min_size=1, max_size=4)
    total = 200
    await add_documents(pool, total)
    port = free_port()
    proc = await spawn_worker(url, mocks, port, tmp_path / "w.log", DOCPIPE_CONCURRENCY="4")
    restarted = False
    try:

        async def some_done() -> bool:
            n = await pool.fetchval(
                "select count(*) from docpipe.documents where status = 'processed'"
            )
            return bool(n >= 20)

        await wait_until(some_done, 60, "some processed")
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=data, user=user)

        async def not_ready() -> bool:
            return await readyz(port) == 503

        await wait_until(not_ready, 15, "worker reports not ready while the database is down")
        await asyncio.sleep(2)
        assert proc.returncode is None, "the worker stays up through the outage"
        start = ["-w", "-o", '-h ""', "-o", f"-k {data}", "-l", str(data / "log"), "start"]
        await asyncio.to_thread(pg_ctl, start, pgdata=data, user=user)
        restarted = True

        async def ready_again() -> bool:
            return await readyz(port) == 200

        await wait_until(ready_again, 30, "worker ready again")
        await pool.expire_connections()
        await wait_until(processed_all(pool, total), 120, "every document processed")
        await assert_no_duplicate_chunks(pool)
    finally:
        await stop(proc)
        await pool.close()
        if restarted:
            # Started by pg_ctl, the server is no longer pgserver's to stop when the session
            # ends: without this it outlives the test run.
            await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=data, user=user)
    assert not (data / "postmaster.pid").exists(), "the restarted server was stopped"
