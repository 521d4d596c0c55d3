"""`docpipe worker` as a real process with hostile and large documents: SIGTERM ends it within
its grace whatever it is parsing, the whale resumes after a SIGKILL without redoing its stored
parts, the metrics port it bound is the one it logs, and `docpipe ingest` waiting on documents
rides out a database outage as the workers do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.server import MockConfig
from docpipe_queue.database import create_pool
from docpipe_queue.documents import add_document
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import migrate
from tests.e2e.test_worker_process import readyz, spawn_worker, stop, wait_until
from tests.samples import markdown_bytes
from tests.support.hostile import pdf_pages, whale_html
from tests.support.mocks import serve
from tests.support.ports import free_port


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


async def add(pool: asyncpg.Pool, filename: str, content_type: str, data: bytes) -> uuid.UUID:
    async with pool.acquire() as conn:
        added = await add_document(
            conn, pipeline="p", owner="o", filename=filename, content_type=content_type, data=data
        )
    return added.document_id


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def log_records(log: Path) -> Iterator[dict[str, object]]:
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


async def test_sigterm_ends_the_worker_within_its_grace_while_a_parse_runs(
    pool: asyncpg.Pool, database_url: str, mocks: str, tmp_path: Path
) -> None:
    # About a minute and a half of CPU to parse: far longer than the grace.
    await add(pool, "almanac.pdf", "application/pdf", pdf_pages(40_000))
    port = free_port()
    log = tmp_path / "worker.log"
    proc = await spawn_worker(
        database_url, mocks, port, log, DOCPIPE_SHUTDOWN_GRACE_SECONDS="1",
        DOCPIPE_PARSE_CPU_SECONDS="600", DOCPIPE_LARGE_DOCUMENT_BYTES="100000000",
    )  # fmt: skip
    try:

        async def parsing() -> bool:
            running = await pool.fetchval(
                "select count(*) from docpipe.jobs where status='running'"
            )
            return bool(running == 1)

        await wait_until(parsing, 30, "the worker takes the document")
        await asyncio.sleep(1.5)
        parsers = children_of(proc.pid)
        assert parsers, "the parse runs in a child process"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 1 + 8)
        took = time.monotonic() - started
    finally:
        await stop(proc)
    assert took < 1 + 6, f"exit {took:.1f} s after SIGTERM with a 1 s grace"
    await asyncio.sleep(0.5)
    assert not [pid for pid in parsers if alive(pid)], "no parse outlives the worker"
    row = await pool.fetchrow("select status, attempts from docpipe.jobs")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("queued", 0), "released, attempt handed back"


async def test_metrics_port_zero_logs_the_port_it_bound(
    database_url: str, mocks: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = await spawn_worker(database_url, mocks, 0, log)
    try:

        async def started() -> bool:
            return any(r.get("msg") == "worker started" for r in log_records(log))

        await wait_until(started, 30, "the worker logs its start")
        (record,) = [r for r in log_records(log) if r.get("msg") == "worker started"]
        url = str(record["metrics"])
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port != 0, url

        async def ready() -> bool:
            return await readyz(port) == 200

        await wait_until(ready, 30, f"the worker answers on the logged port ({url})")
    finally:
        await stop(proc)


async def test_the_whale_resumes_after_a_sigkill_without_redoing_stored_parts(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    slow = MockConfig(faults=FaultConfig(openai=ServiceFaults(latency_ms=150)))
    env = {
        "DOCPIPE_LARGE_DOCUMENT_BYTES": "100000",
        "DOCPIPE_PART_CHUNKS": "30",
        "DOCPIPE_LEASE_SECONDS": "3",
        "DOCPIPE_LOG_LEVEL": "INFO",
    }
    doc_id = await add(pool, "whale.html", "text/html", whale_html(180))
    async with serve("127.0.0.1", 0, slow) as url:
        first = await spawn_worker(database_url, url, free_port(), tmp_path / "w1.log", **env)
        second = None
        try:

            async def some_parts_stored() -> bool:
                progress = await pool.fetchval("select progress from docpipe.jobs")
                return bool(progress and progress.get("chunks_stored", 0) >= 90)

            await wait_until(some_parts_stored, 60, "a few parts stored")
            first.send_signal(signal.SIGKILL)
            await first.wait()
            kept = {
                r[0]: r[1]
                for r in await pool.fetch(
                    "select ordinal, id from docpipe.chunks where document_id = $1", doc_id
                )
            }
            progress = await pool.fetchval("select progress from docpipe.jobs")
            second = await spawn_worker(database_url, url, free_port(), tmp_path / "w2.log", **env)

            async def processed() -> bool:
                status = await pool.fetchval(
                    "select status from docpipe.documents where id = $1", doc_id
                )
                return bool(status == "processed")

            await wait_until(processed, 90, "the whale processed")
        finally:
            await stop(first)
            if second is not None:
                await stop(second)
    stored_before = progress["chunks_stored"]
    assert len(kept) == stored_before
    chunks = {
        r[0]: r[1]
        for r in await pool.fetch(
            "select ordinal, id from docpipe.chunks where document_id = $1", doc_id
        )
    }
    count = await pool.fetchval("select chunk_count from docpipe.documents where id = $1", doc_id)
    assert sorted(chunks) == list(range(count))
    assert {o: chunks[o] for o in kept} == kept, "the stored parts were not stored again"
    (resumed,) = [
        r for r in log_records(tmp_path / "w2.log") if r.get("msg") == "resuming document in parts"
    ]
    assert resumed["chunks_stored"] == stored_before
    assert resumed["parts_parsed"] == 1, "the parsed text was kept, not parsed again"
    job = await pool.fetchrow("select status, attempts from docpipe.jobs")
    assert job is not None
    assert (job["status"], job["attempts"]) == ("succeeded", 2)


async def test_ingest_waiting_on_its_documents_rides_out_a_database_outage(
    tmp_path: Path, mocks: str
) -> None:
    from pgserver import _commands

    pg_ctl = _commands.__dict__["pg_ctl"]  # generated at import time, invisible to type checkers
    pgdata = tmp_path / "db"
    url = start_embedded_postgres(pgdata)
    data = pgdata / "pgdata"
    user = "pgserver" if os.geteuid() == 0 else None
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"tide-{i}.md").write_bytes(markdown_bytes(f"Tide {i}", ["High water."]))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DATABASE_URL": url}
    cli_log = tmp_path / "ingest.log"
    with cli_log.open("wb") as out:
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "ingest", "--pipeline", "p",
            "--timeout", "120", str(folder), env=environment, stdout=out, stderr=out,
        )  # fmt: skip
    worker = None
    restarted = False
    try:
        pool = await create_pool(url, min_size=1, max_size=2)
        try:

            async def added() -> bool:
                return bool(await pool.fetchval("select count(*) from docpipe.documents") == 3)

            await wait_until(added, 30, "the documents added")
        finally:
            await pool.close()
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=data, user=user)
        await asyncio.sleep(4)
        assert cli.returncode is None, cli_log.read_text()
        start = ["-w", "-o", '-h ""', "-o", f"-k {data}", "-l", str(data / "log"), "start"]
        await asyncio.to_thread(pg_ctl, start, pgdata=data, user=user)
        restarted = True
        worker = await spawn_worker(url, mocks, free_port(), tmp_path / "w.log")
        await asyncio.wait_for(cli.wait(), 60)
    finally:
        if worker is not None:
            await stop(worker)
        await stop(cli)
        if restarted:
            # Started by pg_ctl, this server is no longer pgserver's to stop at exit.
            await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=data, user=user)
    output = cli_log.read_text()
    assert cli.returncode == 0, output
    assert "database unreachable" in output
    assert "3 processed" in output
    assert not (data / "postmaster.pid").exists()
