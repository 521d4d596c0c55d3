"""`docpipe api`: wires settings, database, the query embedder and the application into a server
that refuses to start misconfigured and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web

from docpipe_api.app import ApiContext, build_app
from docpipe_api.auth import TokenVerifier
from docpipe_api.openapi import openapi_json
from docpipe_api.query_batching import BatchingEmbedder
from docpipe_api.ratelimit import RateLimiter
from docpipe_api.settings import ApiSettings
from docpipe_contracts.errors import StartupError
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.object_storage import ObjectStore
from docpipe_queue.database import create_pool, resolve_database_url
from docpipe_queue.document_usage import Prices
from docpipe_queue.metrics import BUILD_INFO
from docpipe_queue.migrator import embedding_column_dimensions, pending_migrations

log = logging.getLogger(__name__)

# Time for a load balancer to notice /readyz failing before the listener closes.
DRAIN_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class RunningApi:
    url: str
    context: ApiContext


@asynccontextmanager
async def open_api(settings: ApiSettings) -> AsyncIterator[RunningApi]:
    """Serve the API as configured until the block exits; yields its URL (port 0: any free)."""
    verifier = TokenVerifier(
        settings.verification_keys(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_seconds,
        cache_s=settings.jwt_cache_seconds,
    )
    url = resolve_database_url(settings.database_url)
    # The HNSW candidate count is a session setting: set once per connection, not per search.
    pool = await create_pool(
        url,
        min_size=2,
        max_size=settings.pool_size,
        server_settings={"hnsw.ef_search": str(settings.search_ef_search)},
        # The API sets no session state (ef_search comes with the connection), so a connection
        # going back to the pool needs no reset statement: one round trip less per query.
        reset_session=False,
    )
    try:
        await _check_database(pool, settings)
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.request_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            api_key = settings.openai_api_key
            embedder = BatchingEmbedder(
                OpenAIEmbedder(
                    session,
                    api_key=api_key.get_secret_value() if api_key else "unset",
                    model=settings.embedding_model,
                    dimensions=settings.embedding_dimensions,
                    base_url=settings.openai_base_url,
                    max_concurrency=settings.embedding_requests,
                    request_timeout=settings.request_timeout_seconds,
                ),
                max_in_flight=settings.embedding_requests,
            )
            context = ApiContext(
                pool=pool,
                verifier=verifier,
                limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
                embedder=embedder,
                pipelines=settings.pipeline_names,
                max_upload_bytes=settings.max_upload_bytes,
                max_attempts=settings.max_attempts,
                quotas=settings.owner_quotas(),
                prices=Prices(settings.price_per_million_tokens, settings.price_per_thousand_pages),
                openapi_json=openapi_json(),
                originals=_object_store(settings, session),
            )
            runner = web.AppRunner(build_app(context), access_log=None, shutdown_timeout=10.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, settings.host, settings.port)
                await site.start()
                host, port = runner.addresses[0][:2]
                host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
                yield RunningApi(f"http://{host}:{port}", context)
            finally:
                await runner.cleanup()
    finally:
        await pool.close()


def _object_store(settings: ApiSettings, session: aiohttp.ClientSession) -> ObjectStore | None:
    config = settings.object_storage()
    return ObjectStore(session, config) if config is not None else None


async def _check_database(pool: asyncpg.Pool, settings: ApiSettings) -> None:
    async with pool.acquire() as conn:
        pending = await pending_migrations(conn)
    if pending:
        raise StartupError(
            f"the database schema is behind this API ({', '.join(pending)} not applied): "
            "run `docpipe migrate` first"
        )
    column = await embedding_column_dimensions(pool)
    if column != settings.embedding_dimensions:
        raise StartupError(
            f"DOCPIPE_EMBEDDING_DIMENSIONS is {settings.embedding_dimensions} but the database "
            f"column docpipe.chunks.embedding holds vector({column}); set it to {column}, the "
            "dimension the workers embed with"
        )


async def run_api(settings: ApiSettings) -> None:
    """Serve until SIGTERM/SIGINT; then fail readiness, wait briefly, and finish open requests."""
    BUILD_INFO.info({"version": _version(), "revision": "api"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_api(settings) as api:
        log.info(
            "api started",
            extra={
                "url": api.url,
                "listen": f"{settings.host}:{settings.port}",
                "pipelines": sorted(settings.pipeline_names),
                "dev_mode": settings.dev_mode,
            },
        )
        await stop.wait()
        api.context.draining = True
        log.info("draining", extra={"delay_s": DRAIN_DELAY_S})
        await asyncio.sleep(DRAIN_DELAY_S)
    log.info("api stopped")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docpipe")
    except PackageNotFoundError:
        return "unknown"
