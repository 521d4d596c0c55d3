"""Pools of docpipe connections: one that skips asyncpg's session reset still never hands out a
connection inside a transaction someone left open, and keeps its connect-time settings; every
pool hands out its connections first come, first served."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest

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


async def take_turns(pool: asyncpg.Pool, callers: int, turns: int) -> list[int]:
    """`callers` tasks each asking the pool for a connection `turns` times, one statement each:
    the order, by ticket (the order the asks were made in), in which they got one."""
    asked = itertools.count()
    served: list[int] = []

    async def caller(index: int) -> None:
        for _ in range(turns):
            # Other work between asks (the API parses requests and builds answers), so that
            # asks come at every point of the event loop's turn, some just as a connection
            # comes back.
            for _ in range(index % 4):
                await asyncio.sleep(0)
            ticket = next(asked)
            async with pool.acquire() as conn:
                served.append(ticket)
                await conn.fetchval("select 1")

    await asyncio.gather(*(caller(index) for index in range(callers)))
    return served


async def test_connections_are_handed_out_in_the_order_they_were_asked_for(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=2, max_size=2, reset_session=False)
    try:
        served = await take_turns(pool, callers=20, turns=5)
    finally:
        await pool.close()

    # asyncpg's own pool lets a caller that asks as a connection comes back take it from the
    # one that had waited (in one run of this test on it, ask 25 was served before ask 8).
    assert served == sorted(served)


async def test_a_caller_waiting_its_turn_still_times_out(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1, reset_session=False)
    try:
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await pool.acquire(timeout=0.05)
        async with pool.acquire() as conn:  # the timed-out wait gave its turn back
            assert await conn.fetchval("select 1") == 1
    finally:
        await pool.close()
