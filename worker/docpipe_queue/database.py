"""Connections to Postgres: where the database is, and pools that speak pgvector and JSON."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from docpipe_contracts.errors import StartupError
from docpipe_queue.embedded import start_embedded_postgres
from docpipe_queue.fair_pool import FairPool

T = TypeVar("T")


def resolve_database_url(url: str | None = None, *, data_dir: Path | None = None) -> str:
    """The database to use: `url`, else $DATABASE_URL, else the embedded server (started now)."""
    url = url or os.environ.get("DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(data_dir)


class DatabaseTLSError(StartupError):
    """DATABASE_URL's TLS settings cannot work: a file is missing or the server is not trusted."""


# The files DATABASE_URL may name for TLS (libpq's parameters, which asyncpg reads from the URL).
TLS_FILES = {
    "sslrootcert": "CA certificate",
    "sslcert": "client certificate",
    "sslkey": "client key",
    "sslcrl": "certificate revocation list",
}


def url_parameters(url: str) -> dict[str, str]:
    """The query parameters of a postgres:// URL (the last value of each)."""
    query = urlsplit(url).query
    return {key: values[-1] for key, values in parse_qs(query).items()}


def check_tls_files(url: str) -> None:
    """Fail early, naming the file, when a TLS file the URL names is missing or unreadable.

    asyncpg reads sslrootcert, sslcert, sslkey and sslcrl from the URL itself; a missing file would
    otherwise surface as a bare FileNotFoundError that reads like an unreachable database.
    """
    params = url_parameters(url)
    for key, what in TLS_FILES.items():
        value = params.get(key)
        if not value:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise DatabaseTLSError(f"DATABASE_URL {key}={value}: the {what} file does not exist")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatabaseTLSError(
                f"DATABASE_URL {key}={value}: the {what} file cannot be read ({exc.strerror})"
            ) from None
        if key in ("sslrootcert", "sslcert") and b"-----BEGIN CERTIFICATE-----" not in data:
            raise DatabaseTLSError(
                f"DATABASE_URL {key}={value}: the {what} file holds no PEM certificate"
            )
    root = params.get("sslrootcert")
    if root:
        try:
            ssl.create_default_context(cafile=str(Path(root).expanduser()))
        except ssl.SSLError as exc:
            raise DatabaseTLSError(
                f"DATABASE_URL sslrootcert={root}: not a usable CA certificate ({exc})"
            ) from None


def _server_name(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url_parameters(url).get("host", "?")
    return f"{host}:{parts.port}" if parts.port else host


async def _with_tls_errors(url: str, connecting: Callable[[], Awaitable[T]]) -> T:
    """Run `connecting` after checking the URL's TLS files; explain a failed verification."""
    check_tls_files(url)
    try:
        return await connecting()
    except ssl.SSLCertVerificationError as exc:
        params = url_parameters(url)
        mode = params.get("sslmode", "prefer")
        root = (
            params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT") or "~/.postgresql/root.crt"
        )
        raise DatabaseTLSError(
            f"the TLS certificate of the database server {_server_name(url)} failed "
            f"verification ({exc.verify_message or exc.reason}; sslmode={mode}, "
            f"sslrootcert={root}): set sslrootcert to the CA that signed the server's "
            "certificate, and with verify-full connect by a host name the certificate names"
        ) from None
    except ssl.SSLError as exc:
        raise DatabaseTLSError(
            f"TLS with the database server {_server_name(url)} failed: {exc}"
        ) from None


async def connect(url: str) -> asyncpg.Connection:
    """One connection (no codecs), with clear errors for DATABASE_URL's TLS settings."""
    return await _with_tls_errors(url, lambda: asyncpg.connect(url))


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
    """A connection pool with docpipe's codecs on every connection, handing its connections out
    first come, first served (docpipe_queue.fair_pool).

    TLS comes from the URL (sslmode, sslrootcert, sslcert, sslkey, sslcrl: libpq's names, which
    asyncpg honours); a missing file or an untrusted server is a DatabaseTLSError naming it.

    `reset_session=False` is for users that leave no session state behind (no SET, LISTEN,
    session advisory locks or held cursors): a released connection then skips asyncpg's reset
    statement, one round trip per release. An open transaction is rolled back either way.
    """
    pool = await _with_tls_errors(
        url,
        lambda: FairPool(
            url,
            # asyncpg.create_pool's defaults, which it passes to asyncpg.Pool
            max_queries=50_000,
            max_inactive_connection_lifetime=300.0,
            setup=None,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            server_settings=server_settings,
            reset=None if reset_session else _keep_session,
        ),
    )
    assert isinstance(pool, asyncpg.Pool)
    return pool
