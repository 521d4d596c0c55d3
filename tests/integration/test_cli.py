"""The `docpipe` command against a real database: migrate, queue inspection and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg

from docpipe_queue import jobs as queue
from docpipe_queue.jobs import NewJob


def docpipe(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "docpipe_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_jobs_on_an_unmigrated_database_says_to_migrate(empty_database_url: str) -> None:
    result = docpipe("jobs", "stats", url=empty_database_url)
    assert result.returncode == 1
    assert "run `docpipe migrate`" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_then_migrate_again_is_a_no_op(empty_database_url: str) -> None:
    first = docpipe("migrate", url=empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_schema" in first.stdout
    again = docpipe("migrate", url=empty_database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"


async def test_stats_show_and_cancel_report_the_queue(
    database_url: str, pool: asyncpg.Pool
) -> None:
    [job_id] = await queue.enqueue(pool, [NewJob(pipeline="alpha")])
    stats = docpipe("jobs", "stats", "--json", url=database_url)
    assert stats.returncode == 0, stats.stderr
    [row] = json.loads(stats.stdout)
    assert (row["pipeline"], row["ready"], row["in_flight"]) == ("alpha", 1, 0)

    shown = docpipe("jobs", "show", str(job_id), url=database_url)
    assert json.loads(shown.stdout)["status"] == "queued"

    assert docpipe("jobs", "cancel", str(job_id), url=database_url).returncode == 0
    again = docpipe("jobs", "cancel", str(job_id), url=database_url)
    assert again.returncode == 2
    assert f"job {job_id} is not queued or running" in again.stderr
    assert await pool.fetchval("select status from docpipe.jobs where id = $1", job_id) == (
        "cancelled"
    )


def test_unknown_job_is_a_clear_error(database_url: str) -> None:
    result = docpipe("jobs", "show", "999999", url=database_url)
    assert result.returncode == 2
    assert "no job with id 999999" in result.stderr


async def test_purge_needs_an_age_and_reports_what_it_deleted(
    database_url: str, pool: asyncpg.Pool
) -> None:
    [job_id] = await queue.enqueue(pool, [NewJob(pipeline="alpha")])
    await pool.execute(
        "update docpipe.jobs set status = 'succeeded', finished_at = now() - interval '40 days'"
        " where id = $1",
        job_id,
    )
    missing = docpipe("jobs", "purge", url=database_url)
    assert missing.returncode == 2
    assert "--older-than-days" in missing.stderr
    result = docpipe("jobs", "purge", "--older-than-days", "30", "--json", url=database_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deleted": 1}
