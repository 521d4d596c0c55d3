"""Connections to Postgres: where the database is, and pools that speak pgvector and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg

from docpipe_queue.embedded import start_embedded_postgres


def resolve_database_url(url: str | None = None, *, data_dir: Path | None = None) -> str:
    """The database to use: `url`, else $DATABASE_URL, else the embedded server (started now)."""
    url = url or os.environ.get("DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(data_dir)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs every docpipe connection uses: jsonb as Python objects, vector as lists of floats."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    has_vector = await conn.fetchval(
        "select exists (select 1 from pg_type where typname = 'vector')"
    )
    if has_vector:
        from pgvector.asyncpg import register_vector

        await register_vector(conn)


# Session settings of the worker's connections. A worker's transactions (claims, completions,
# a document's chunks together with its job's completion) may be lost in a database crash without
# losing work: the job is then still leased, its lease expires and it runs again. So they need not
# wait for the WAL flush, which on slow disks is most of a store's time (ADR 0003). Connections
# that accept work from users (enqueue, upload) keep the server's synchronous commit.
WORKER_SESSION = {"synchronous_commit": "off"}


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    server_settings: dict[str, str] | None = None,
    reset_session: bool = True,
) -> asyncpg.Pool:
    """A connection pool with docpipe's codecs on every connection.

    `reset_session=False` is for users that leave no session state behind (no SET, LISTEN,
    session advisory locks or held cursors): a released connection then skips asyncpg's reset
    statement, one round trip per release. An open transaction is rolled back either way.
    """
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        server_settings=server_settings,
        reset=None if reset_session else _keep_session,
    )
    assert pool is not None  # asyncpg types create_pool as optional for its awaitable form
    return pool
