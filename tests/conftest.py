"""Shared fixtures: one embedded Postgres per test session, a fresh database per test."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from docpipe_queue.database import create_pool
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import migrate

TEMPLATE_DB = "docpipe_template"


def _with_database(url: str, name: str) -> str:
    # pgserver URLs look like postgresql://postgres:@/postgres?host=/path: swap the database.
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The session's Postgres server (embedded, with pgvector), admin database URL."""
    # Not under pytest's basetemp: that is private to root (0700), and as root pgserver runs
    # postgres and pg_ctl as its own system user, which then cannot stop the server at exit.
    data_dir = Path(tempfile.mkdtemp(prefix="docpipe-tests-pg-"))
    data_dir.chmod(0o755)
    # Registered before the server starts, so it runs after pgserver's own exit hook that stops
    # the server (atexit runs hooks last-in, first-out).
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    url = start_embedded_postgres(data_dir)

    async def prepare_template() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"create database {TEMPLATE_DB}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_database(url, TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(prepare_template())
    return url


async def _create_database(server_url: str, template: str | None = None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(
            f"create database {name}" + (f" template {template}" if template else "")
        )
    finally:
        await conn.close()
    return _with_database(server_url, name)


@pytest.fixture
async def empty_database_url(pg_server_url: str) -> str:
    """A new database with nothing in it."""
    return await _create_database(pg_server_url)


@pytest.fixture
async def database_url(pg_server_url: str) -> str:
    """A new database with docpipe's schema (copied from a migrated template: fast)."""
    return await _create_database(pg_server_url, TEMPLATE_DB)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the test's migrated database."""
    p = await create_pool(database_url, min_size=1, max_size=10)
    try:
        yield p
    finally:
        await p.close()
