from __future__ import annotations

import asyncio

import asyncpg
import pytest

from docpipe_queue.migrator import Migration, MigrationError, load_migrations, migrate


async def test_migrate_builds_the_schema_on_an_empty_database(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert applied == [m.filename for m in load_migrations()]
        tables = {
            r[0]
            for r in await conn.fetch(
                "select table_name from information_schema.tables where table_schema = 'docpipe'"
            )
        }
        assert {"documents", "chunks", "jobs", "schema_migrations"} <= tables
        hnsw = await conn.fetchval(
            "select indexdef from pg_indexes where indexname = 'chunks_embedding_hnsw'"
        )
        assert "USING hnsw (embedding vector_cosine_ops)" in hnsw
    finally:
        await conn.close()


async def test_rerunning_migrate_applies_nothing(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn)
        assert await migrate(conn) == []
        count = await conn.fetchval("select count(*) from docpipe.schema_migrations")
        assert count == len(load_migrations())
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_migration_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.filename for m in load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_failed_migration_rolls_back_whole_and_names_itself(
    empty_database_url: str,
) -> None:
    broken = [
        *load_migrations(),
        Migration(9001, "half_done", "create table docpipe.half (id int); select * from nowhere;"),
    ]
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match=r"9001_half_done\.sql failed and was rolled back"):
            await migrate(conn, broken)
        assert await conn.fetchval("select to_regclass('docpipe.half')") is None
        assert await conn.fetchval("select max(version) from docpipe.schema_migrations") < 9001
        # The lock was released: a correct migration set still applies.
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_migration_edited_after_it_was_applied_is_refused(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn)
        first, *rest = load_migrations()
        edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await migrate(conn, [edited, *rest])
    finally:
        await conn.close()


async def test_database_migrated_by_a_newer_docpipe_is_refused(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        newer = [*load_migrations(), Migration(9002, "future", "select 1;")]
        await migrate(conn, newer)
        with pytest.raises(MigrationError, match="newer docpipe"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_embedding_dimension_is_chosen_when_the_schema_is_created(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, embedding_dimensions=1536)
        typmod = await conn.fetchval(
            "select atttypmod from pg_attribute"
            " where attrelid = 'docpipe.chunks'::regclass and attname = 'embedding'"
        )
        assert typmod == 1536
        # Later runs with another choice change nothing and are not a checksum mismatch.
        assert await migrate(conn, embedding_dimensions=256) == []
    finally:
        await conn.close()


async def test_embedding_dimension_beyond_the_hnsw_limit_is_refused(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match=r"within 1\.\.2000"):
            await migrate(conn, embedding_dimensions=3072)
        assert await conn.fetchval("select to_regclass('docpipe.schema_migrations')") is None
    finally:
        await conn.close()
