"""Backup and recovery: `docpipe backup` while a worker is mid-ingest, `docpipe restore` into a
fresh database, a worker on the restored database finishes every document (the jobs running at
backup time are redone), and searches over the restored chunks answer as before."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import asyncpg
import pytest

from docpipe_api import store
from docpipe_cli.backup import BackupError, find_pg_tool
from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.server import MockConfig
from docpipe_queue.database import create_pool
from tests.e2e.test_worker_process import (
    add_documents,
    assert_no_duplicate_chunks,
    processed_all,
    spawn_worker,
    stop,
    wait_until,
)
from tests.support.mocks import serve
from tests.support.ports import free_port

DOCUMENTS = 6
# Slow embeddings keep jobs running long enough for the backup to catch some mid-flight.
SLOW = MockConfig(faults=FaultConfig(openai=ServiceFaults(latency_ms=1200)))


async def docpipe(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", *args,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def top_hits(
    pool: asyncpg.Pool, queries: list[list[float]]
) -> list[list[tuple[float, str, int]]]:
    """Each query vector's hits (distance, document, chunk ordinal), through the API's store.

    The sample documents differ by a word, so several hits tie: ties are ordered by document,
    and every chunk is asked for, so that no tie straddles the cut-off.
    """
    results = []
    for vector in queries:
        rows = await store.search_chunks(
            pool, vector, pipeline="p", owner="o", top_k=3 * DOCUMENTS, document_ids=None
        )
        hits = [(round(r["distance"], 5), str(r["document_id"]), r["ordinal"]) for r in rows]
        results.append(sorted(hits, key=lambda h: (h[0], h[1], h[2])))
    return results


async def test_restore_of_a_mid_flight_backup_redoes_running_jobs_and_searches_agree(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    backup_file = tmp_path / "docpipe.dump"
    async with serve("127.0.0.1", 0, SLOW) as mocks:
        source = await create_pool(database_url)
        target: asyncpg.Pool | None = None
        worker = await spawn_worker(
            database_url, mocks, free_port(), tmp_path / "worker.log", DOCPIPE_CONCURRENCY="2"
        )
        try:
            await add_documents(source, DOCUMENTS)

            async def some_running() -> bool:
                assert worker.returncode is None, (tmp_path / "worker.log").read_text()
                return bool(
                    await source.fetchval(
                        "select count(*) from docpipe.jobs where status = 'running'"
                    )
                )

            await wait_until(some_running, 30, "a job is running")
            code, out, err = await docpipe(
                "backup", "--output", str(backup_file), "--database-url", database_url
            )
            assert code == 0, err
            assert "backed up the docpipe schema" in out
            assert backup_file.stat().st_size > 0

            # The source finishes; its answers are the ones the restored database must give.
            await wait_until(processed_all(source, DOCUMENTS), 60, "the source processed all")
            await stop(worker)
            queries = [
                list(v)
                for v in await source.fetchval(
                    "select array_agg(embedding::real[] order by id) from "
                    "(select id, embedding from docpipe.chunks order by id limit 3) c"
                )
            ]
            before = await top_hits(source, queries)

            code, out, err = await docpipe(
                "restore", str(backup_file), "--database-url", empty_database_url
            )
            assert code == 0, err
            requeued = re.search(r"(\d+) jobs that were running at backup time", out)
            assert requeued is not None, out
            assert int(requeued.group(1)) >= 1, out
            # Opened after the restore: a pool registers pgvector's codec when it connects.
            target = await create_pool(empty_database_url)
            assert (
                await target.fetchval("select count(*) from docpipe.jobs where status = 'running'")
                == 0
            )

            # A second restore into a database that now holds data is refused.
            code, _, err = await docpipe(
                "restore", str(backup_file), "--database-url", empty_database_url
            )
            assert code == 1
            assert "not empty" in err
            assert "--force" in err

            worker = await spawn_worker(
                empty_database_url, mocks, free_port(), tmp_path / "worker2.log",
                DOCPIPE_CONCURRENCY="4",
            )  # fmt: skip
            await wait_until(processed_all(target, DOCUMENTS), 60, "the restored processed all")
            await assert_no_duplicate_chunks(target)
            assert await top_hits(target, queries) == before
        finally:
            await stop(worker)
            await source.close()
            if target is not None:
                await target.close()


def test_pg_dump_of_the_servers_version_is_found_else_a_clear_error() -> None:
    assert find_pg_tool("pg_dump", 16).major == 16  # at least the embedded server's own
    with pytest.raises(BackupError, match=r"no pg_dump for PostgreSQL 99 or newer \(found: "):
        find_pg_tool("pg_dump", 99)
