"""Versioned SQL migrations: found in the package, applied in order under an advisory lock,
each in its own transaction, recorded in `docpipe.schema_migrations`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Any fixed number works; it only has to be the same for every docpipe process on a database.
MIGRATION_LOCK_KEY = 0x646F6370_6970650  # "docpipe"

# The default embedding dimension of a new database: OpenAI's text-embedding-3 models shorten
# their vectors to it on request with little loss, and pgvector's HNSW inserts are several times
# faster than at 1536 dimensions (ADR 0002).
DEFAULT_EMBEDDING_DIMENSIONS = 512
MAX_EMBEDDING_DIMENSIONS = 2000  # pgvector 0.6 cannot index more with HNSW

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    def render(self, *, embedding_dimensions: int) -> str:
        """The SQL to run; the checksum stays that of the template, whatever was chosen."""
        return self.sql.replace("{{embedding_dimensions}}", str(embedding_dimensions))


class MigrationError(Exception):
    """A migration failed or the recorded history does not match the migrations shipped."""


def load_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("docpipe_queue.migrations").iterdir():
        match = _FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


_HISTORY_DDL = """
create schema if not exists docpipe;
create table if not exists docpipe.schema_migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
"""


async def migrate(
    conn: asyncpg.Connection | PoolConnectionProxy,
    migrations: list[Migration] | None = None,
    *,
    embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
) -> list[str]:
    """Apply the migrations not yet applied; return the filenames applied (empty: up to date).

    Safe to run from many processes at once: they queue on an advisory lock, and the later ones
    find nothing left to do. `embedding_dimensions` matters only when the schema is created.
    """
    if not 1 <= embedding_dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise MigrationError(
            f"embedding dimensions must be within 1..{MAX_EMBEDDING_DIMENSIONS} "
            f"(pgvector's HNSW limit), got {embedding_dimensions}"
        )
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_HISTORY_DDL)
        rows = await conn.fetch("select version, name, checksum from docpipe.schema_migrations")
        applied = {r["version"]: r for r in rows}
        _check_history(applied, migrations)
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.render(embedding_dimensions=embedding_dimensions))
                    await conn.execute(
                        "insert into docpipe.schema_migrations (version, name, checksum)"
                        " values ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.filename} failed and was rolled back: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            done.append(migration.filename)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


def _check_history(applied: dict[int, asyncpg.Record], migrations: list[Migration]) -> None:
    shipped = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = shipped.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row['name']} applied, which this "
                "docpipe does not ship: it was migrated by a newer docpipe; upgrade docpipe"
            )
        if row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.filename} was changed after it was applied to this "
                "database; ship schema changes as a new migration instead"
            )


async def pending_migrations(conn: asyncpg.Connection | PoolConnectionProxy) -> list[str]:
    """Filenames of shipped migrations not yet applied (the schema may not exist yet)."""
    exists = await conn.fetchval("select to_regclass('docpipe.schema_migrations') is not null")
    applied: set[int] = set()
    if exists:
        applied = {r[0] for r in await conn.fetch("select version from docpipe.schema_migrations")}
    return [m.filename for m in load_migrations() if m.version not in applied]


async def embedding_column_dimensions(pool: asyncpg.Pool) -> int:
    """The dimension of `docpipe.chunks.embedding` (pgvector keeps it in the type modifier)."""
    dims: int = await pool.fetchval(
        "select atttypmod from pg_attribute"
        " where attrelid = 'docpipe.chunks'::regclass and attname = 'embedding'"
    )
    return dims
