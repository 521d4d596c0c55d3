"""`docpipe backup` and `docpipe restore`: the docpipe schema to a file and back.

A backup is pg_dump's custom format of the `docpipe` schema (documents, chunks with their
embeddings, jobs, usage, the migration record), taken in one snapshot while docpipe runs. A
restore loads it into a database whose docpipe schema is absent or holds no data, then returns
the jobs that were running at backup time to the queue: their workers' results were not in the
backup, so they are redone rather than lost.

pg_dump and pg_restore must be at least the server's major version; the first suitable one of
$DOCPIPE_PG_BIN, the PATH, the usual install folders and the embedded server's own (pgserver)
is used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from docpipe_contracts.errors import StartupError
from docpipe_queue import queries
from docpipe_queue.database import connect

SCHEMA = "docpipe"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


class BackupError(StartupError):
    """A backup or restore cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PgTool:
    path: Path
    major: int


@dataclass(frozen=True)
class Contents:
    documents: int
    chunks: int
    jobs: int
    running_jobs: int


@dataclass(frozen=True)
class RestoreResult:
    contents: Contents
    requeued: int
    replaced: bool


def _candidate_dirs() -> Iterable[Path]:
    configured = os.environ.get("DOCPIPE_PG_BIN")
    if configured:
        yield Path(configured)
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            yield Path(entry)
    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian, Ubuntu
    yield from sorted(Path("/usr").glob("pgsql-*/bin"), reverse=True)  # RHEL, Fedora
    yield from sorted(Path("/opt/homebrew/opt").glob("postgresql@*/bin"), reverse=True)
    # The embedded server's binaries (found without importing pgserver, which starts nothing
    # but is slow to import).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            yield Path(location) / "pginstall" / "bin"


def tool_version(path: Path) -> int | None:
    """The major version of a PostgreSQL client program, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def find_pg_tool(name: str, server_major: int) -> PgTool:
    """`name` (pg_dump, pg_restore) of the server's major version, else the closest newer one."""
    found: list[PgTool] = []
    seen: set[Path] = set()
    for directory in _candidate_dirs():
        path = directory / name
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if resolved in seen or not path.is_file() or not os.access(path, os.X_OK):
            continue
        seen.add(resolved)
        major = tool_version(path)
        if major is None:
            continue
        if major == server_major:
            return PgTool(path, major)
        found.append(PgTool(path, major))
    newer = sorted((t for t in found if t.major > server_major), key=lambda t: t.major)
    if newer:
        return newer[0]
    others = ", ".join(f"{t.path} ({t.major})" for t in found) or "none"
    raise BackupError(
        f"no {name} for PostgreSQL {server_major} or newer (found: {others}); install the "
        f"PostgreSQL {server_major} client programs or set DOCPIPE_PG_BIN to their bin folder"
    )


async def server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("show server_version_num")) // 10000


async def contents(conn: asyncpg.Connection) -> Contents | None:
    """What the docpipe schema holds, or None when there is no docpipe schema."""
    tables = await conn.fetchval(
        "select count(*) from pg_tables where schemaname = $1 "
        "and tablename in ('documents', 'chunks', 'jobs')",
        SCHEMA,
    )
    if tables < 3:
        exists = await conn.fetchval(
            "select exists (select 1 from pg_namespace where nspname = $1)", SCHEMA
        )
        return Contents(0, 0, 0, 0) if exists else None
    row = await conn.fetchrow(
        "select (select count(*) from docpipe.documents) as documents,"
        " (select count(*) from docpipe.chunks) as chunks,"
        " (select count(*) from docpipe.jobs) as jobs,"
        " (select count(*) from docpipe.jobs where status = 'running') as running"
    )
    assert row is not None
    return Contents(row["documents"], row["chunks"], row["jobs"], row["running"])


def _run(argv: list[str], what: str) -> None:
    # libpq reads the whole URL (host, sslmode, sslrootcert, ...) from --dbname; PGPASSWORD etc.
    # come from the environment as usual.
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise BackupError(f"{what} failed ({argv[0]}): {detail}")


def _dump(argv: list[str], output: Path) -> None:
    """Run pg_dump into a file beside `output`, renamed into place once it is whole."""
    output = output.expanduser()
    if not output.parent.is_dir():
        raise BackupError(f"cannot write {output}: no folder {output.parent}")
    fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        _run([*argv, f"--file={partial}"], "the backup")
        os.replace(partial, output)
    finally:
        Path(partial).unlink(missing_ok=True)


def _existing_file(source: Path) -> Path:
    source = source.expanduser()
    if not source.is_file():
        raise BackupError(f"no backup file {source}")
    return source


async def backup(url: str, output: Path) -> tuple[Contents, PgTool]:
    """Dump the docpipe schema of `url` to `output` (written whole, then renamed into place)."""
    conn = await connect(url)
    try:
        found = await contents(conn)
        if found is None:
            raise BackupError("this database has no docpipe schema: nothing to back up")
        tool = find_pg_tool("pg_dump", await server_major(conn))
    finally:
        await conn.close()
    argv = [
        str(tool.path), "--format=custom", f"--schema={SCHEMA}", "--no-owner",
        "--no-privileges", f"--dbname={url}",
    ]  # fmt: skip
    await asyncio.to_thread(_dump, argv, output)
    return found, tool


async def restore(url: str, source: Path, *, force: bool) -> RestoreResult:
    """Load a backup into `url`; refuse a docpipe schema that holds data unless `force`."""
    source = await asyncio.to_thread(_existing_file, source)
    conn = await connect(url)
    try:
        tool = find_pg_tool("pg_restore", await server_major(conn))
        await asyncio.to_thread(
            _run, [str(tool.path), "--list", str(source)], f"reading the backup {source}"
        )
        existing = await contents(conn)
        holds_data = existing is not None and (existing.documents or existing.jobs)
        if holds_data and not force:
            assert existing is not None
            raise BackupError(
                f"the docpipe schema of this database is not empty ({existing.documents} "
                f"documents, {existing.jobs} jobs): restore into a fresh database, or pass "
                "--force to drop it and replace it with the backup"
            )
        # The extension lives outside the docpipe schema, so the backup does not carry it.
        await conn.execute("create extension if not exists vector")
        if existing is not None:
            await conn.execute(f"drop schema {SCHEMA} cascade")
    finally:
        await conn.close()
    argv = [
        str(tool.path), "--no-owner", "--no-privileges", "--exit-on-error",
        "--single-transaction", f"--dbname={url}", str(source),
    ]  # fmt: skip
    await asyncio.to_thread(_run, argv, "the restore")
    conn = await connect(url)
    try:
        requeued = await conn.fetch(queries.REQUEUE_RESTORED)
        await conn.execute(f"analyze {SCHEMA}.documents, {SCHEMA}.chunks, {SCHEMA}.jobs")
        restored = await contents(conn)
    finally:
        await conn.close()
    assert restored is not None
    return RestoreResult(restored, len(requeued), replaced=existing is not None)


def describe_size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
