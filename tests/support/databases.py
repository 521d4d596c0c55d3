"""A fresh, migrated docpipe database on the embedded server, for benchmarks that run the real
stack (`bench/rollout.py`, `bench/quota.py`)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.migrator import migrate


async def fresh_database(data_dir: Path, name: str) -> str:
    """Drop and create database `name` on the embedded server under `data_dir`, migrate it, and
    return its URL."""
    url = start_embedded_postgres(data_dir)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'drop database if exists "{name}"')
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    base, _, query = url.partition("?")
    db_url = f"{base.rpartition('/')[0]}/{name}" + (f"?{query}" if query else "")
    conn = await asyncpg.connect(db_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return db_url
