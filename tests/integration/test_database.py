"""Pools of docpipe connections: one that skips asyncpg's session reset still never hands out a
connection inside a transaction someone left open, and keeps its connect-time settings."""

from __future__ import annotations

from docpipe_queue.database import create_pool


async def test_a_pool_without_session_reset_rolls_back_a_transaction_left_open(
    database_url: str,
) -> None:
    pool = await create_pool(
        database_url,
        min_size=1,
        max_size=1,
        server_settings={"hnsw.ef_search": "77"},
        reset_session=False,
    )
    try:
        async with pool.acquire() as conn:
            await conn.execute("begin")
            await conn.execute("create table docpipe.left_open (id int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("select to_regclass('docpipe.left_open')") is None
            assert await conn.fetchval("show hnsw.ef_search") == "77"
    finally:
        await pool.close()
