"""`docpipe worker`: wires settings, database, HTTP clients, the ingest pipeline and the consumer
into one process with health endpoints and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web

from docpipe_contracts.errors import StartupError
from docpipe_ingest import metrics as ingest_metrics
from docpipe_ingest.golden import GoldenConfig, golden_loop
from docpipe_ingest.health import HealthState, build_health_app
from docpipe_ingest.isolation import ParseLimits, ParsePool
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.parts import PartsConfig
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline, Parser
from docpipe_ingest.provenance import OutputSettings, settings_digest
from docpipe_ingest.settings import WorkerSettings
from docpipe_providers import original_purge
from docpipe_providers.embeddings import Embedder, OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from docpipe_providers.object_storage import ObjectStore
from docpipe_providers.quota import LocalBudget, QuotaKey, QuotaLimits, hash_api_key
from docpipe_providers.quota_calls import QuotaGate
from docpipe_providers.shared_budget import SharedBudget
from docpipe_queue import metrics, statistics
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.database import WORKER_SESSION, create_pool, resolve_database_url
from docpipe_queue.migrator import pending_migrations
from docpipe_queue.retry import RetryPolicy

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
# What a SIGTERM may take beyond DOCPIPE_SHUTDOWN_GRACE_SECONDS: releasing the jobs left,
# closing the database pool and the HTTP clients.
SHUTDOWN_MARGIN_S = 5.0


def _secret(value: object) -> str:
    get = getattr(value, "get_secret_value", None)
    return str(get()) if get is not None else ""


def _openai_key(settings: WorkerSettings) -> str:
    return _secret(settings.openai_api_key) or "unset"


def output_settings(settings: WorkerSettings) -> OutputSettings:
    """The worker's settings that decide its chunks' text and vectors (their provenance)."""
    return OutputSettings(
        parser=settings.parser,
        chunk_max_chars=settings.chunk_max_chars,
        chunk_overlap_chars=settings.chunk_overlap_chars,
        embedding_model=settings.embedding_model,
        embedding_dimensions=settings.embedding_dimensions,
        embedding_endpoint=settings.openai_base_url,
        parser_endpoint=settings.llamaparse_base_url if settings.parser == "llamaparse" else None,
    )


# LlamaParse limits uploads per organisation (key), whatever the parsing mode: one quota per key.
LLAMAPARSE_QUOTA_MODEL = "upload"


@dataclass(frozen=True, slots=True)
class ProviderQuotas:
    """The worker's quota gates: one budget per provider key and model (ADR 0005)."""

    openai: QuotaGate | None
    llamaparse: QuotaGate | None

    async def aclose(self) -> None:
        """Hand back the unspent part of the budgets' current slices."""
        for gate in (self.openai, self.llamaparse):
            close = getattr(gate.budget, "aclose", None) if gate is not None else None
            if close is not None:
                await close()


def build_quota_gate(
    settings: WorkerSettings,
    pool: asyncpg.Pool,
    *,
    provider: str,
    api_key: str,
    model: str,
    limits: QuotaLimits,
) -> QuotaGate:
    """The gate of one quota: shared by every worker using the same key and model through the
    database (`DOCPIPE_QUOTA_MODE=shared`, the row key is the key's hash), or this worker's own."""
    key = QuotaKey(provider, hash_api_key(api_key), model)
    budget: LocalBudget | SharedBudget = (
        SharedBudget(pool, key, limits) if settings.quota_mode == "shared" else LocalBudget(limits)
    )
    return QuotaGate(budget, key, pipeline=settings.pipeline, hold_s=settings.quota_hold_seconds)


def build_quotas(settings: WorkerSettings, pool: asyncpg.Pool) -> ProviderQuotas:
    """The quota gates the settings ask for (limits unset: learned from the headers); none with
    `DOCPIPE_QUOTA_MODE=off`."""
    if settings.quota_mode == "off":
        return ProviderQuotas(None, None)
    openai = build_quota_gate(
        settings,
        pool,
        provider="openai",
        api_key=_openai_key(settings),
        model=settings.embedding_model,
        limits=QuotaLimits(settings.openai_requests_per_minute, settings.openai_tokens_per_minute),
    )
    llamaparse = None
    if settings.parser == "llamaparse":
        llamaparse = build_quota_gate(
            settings,
            pool,
            provider="llamaparse",
            api_key=_secret(settings.llama_cloud_api_key),
            model=LLAMAPARSE_QUOTA_MODEL,
            limits=QuotaLimits(settings.llamaparse_uploads_per_minute, None),
        )
    return ProviderQuotas(openai, llamaparse)


@contextlib.asynccontextmanager
async def provider_quotas(
    settings: WorkerSettings, pool: asyncpg.Pool
) -> AsyncIterator[ProviderQuotas]:
    """`build_quotas`, with the budgets' slices handed back at the end."""
    quotas = build_quotas(settings, pool)
    try:
        yield quotas
    finally:
        try:
            await quotas.aclose()
        except Exception as exc:  # the slices expire by themselves within seconds
            log.warning("could not hand back quota slices: %s", exc)


def build_document_parser(
    settings: WorkerSettings,
    session: aiohttp.ClientSession,
    quota: QuotaGate | None = None,
) -> Parser:
    """The parser the settings ask for."""
    if settings.parser == "llamaparse":
        return LlamaParseClient(
            session,
            api_key=_secret(settings.llama_cloud_api_key),
            base_url=settings.llamaparse_base_url,
            poll_interval=settings.llamaparse_poll_seconds,
            request_timeout=settings.request_timeout_seconds,
            quota=quota,
        )
    return LocalParser(
        ParsePool(
            settings.parse_processes,
            ParseLimits(
                cpu_s=settings.parse_cpu_seconds,
                wall_s=settings.parse_wall_seconds,
                memory_mb=settings.parse_memory_mb,
            ),
        )
    )


def build_embedder(
    settings: WorkerSettings,
    session: aiohttp.ClientSession,
    quota: QuotaGate | None = None,
) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        session,
        api_key=_openai_key(settings),
        model=settings.embedding_model,
        dimensions=settings.embedding_dimensions,
        base_url=settings.openai_base_url,
        max_batch_inputs=settings.embedding_batch_size,
        max_concurrency=settings.embedding_concurrency or settings.concurrency,
        request_timeout=settings.request_timeout_seconds,
        quota=quota,
    )


def build_worker_embedder(
    settings: WorkerSettings,
    session: aiohttp.ClientSession,
    quota: QuotaGate | None = None,
) -> Embedder:
    """The worker's embedder: its jobs share requests (`docpipe_providers.batching`) unless
    `DOCPIPE_EMBEDDING_SHARED_REQUESTS=false`."""
    embedder = build_embedder(settings, session, quota)
    if not settings.embedding_shared_requests:
        return embedder
    return embedder.shared(
        window_s=settings.embedding_batch_window_ms / 1000,
        max_inputs=settings.embedding_batch_size,
        max_tokens=settings.embedding_batch_tokens,
    )


def _object_store(settings: WorkerSettings, session: aiohttp.ClientSession) -> ObjectStore | None:
    config = settings.object_storage()
    return ObjectStore(session, config) if config is not None else None


async def _publish_queue_stats(pool: asyncpg.Pool, pipeline: str, state: dict[str, bool]) -> None:
    """Keep the pipeline's queue gauges fresh, so one scrape of any worker tells the backlog."""
    ready = metrics.QUEUE_READY.labels(pipeline)
    oldest = metrics.QUEUE_OLDEST_READY_AGE.labels(pipeline)
    while True:
        try:
            rows = await statistics.stats(pool, [pipeline])
            state["db_ok"] = True
        except Exception:  # any failure to read the queue makes the worker not ready, never dead
            state["db_ok"] = False
        else:
            row = rows[0] if rows else None
            ready.set(row.ready if row else 0)
            oldest.set(row.oldest_ready_age_s if row else 0.0)
        await asyncio.sleep(STATS_INTERVAL_S)


async def run_worker(settings: WorkerSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT, then drain within the grace period and return."""
    metrics.BUILD_INFO.info({"version": _version(), "revision": settings.revision})
    url = resolve_database_url(settings.database_url)
    pool = await create_pool(
        url,
        min_size=2,
        max_size=min(settings.concurrency, 32) + 4,
        server_settings=WORKER_SESSION,
    )
    try:
        async with pool.acquire() as conn:
            pending = await pending_migrations(conn)
        if pending:
            raise StartupError(
                f"the database schema is behind this worker ({', '.join(pending)} not applied): "
                "run `docpipe migrate` first"
            )
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.request_timeout_seconds)
        connector = aiohttp.TCPConnector(limit=max(16, settings.concurrency * 2))
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            provider_quotas(settings, pool) as quotas,
        ):
            pipeline = IngestPipeline(
                pool,
                build_document_parser(settings, session, quotas.llamaparse),
                build_worker_embedder(settings, session, quotas.openai),
                chunking=ChunkingConfig(settings.chunk_max_chars, settings.chunk_overlap_chars),
                dimensions=settings.embedding_dimensions,
                revision=settings.revision,
                settings_digest=settings_digest(output_settings(settings)),
                store_concurrency=settings.store_concurrency,
                originals=_object_store(settings, session),
                parts=PartsConfig(
                    settings.large_document_bytes,
                    settings.part_pages,
                    settings.part_chunks,
                    settings.part_slice_seconds,
                ),
            )
            parser = pipeline.parser
            try:
                if isinstance(parser, LocalParser):
                    await parser.pool.start()
                await pipeline.check_dimensions()
                await _serve(settings, pool, pipeline, handle_signals=handle_signals)
            finally:
                # Parses still running (a drain that ran out of grace) are killed with their
                # children; the jobs were released or their leases expire.
                if isinstance(parser, LocalParser):
                    await parser.aclose()
    finally:
        await pool.close()


async def _serve(
    settings: WorkerSettings,
    pool: asyncpg.Pool,
    pipeline: IngestPipeline,
    *,
    handle_signals: bool,
) -> None:
    lease = settings.lease_seconds
    ingest_metrics.expose_output(settings.pipeline, settings.revision)
    consumer = Consumer(
        pool,
        pipeline,
        ConsumerConfig(
            pipeline=settings.pipeline,
            concurrency=settings.concurrency,
            batch_size=settings.concurrency,
            lease_s=lease,
            heartbeat_s=lease / 3,
            poll_interval_s=settings.poll_interval_seconds,
            revision=settings.revision,
            retry_policy=RetryPolicy(),
            count_failures=not settings.canary,
            canary_weight=settings.canary_weight if settings.canary else None,
        ),
    )
    stats_state = {"db_ok": True}

    def ready_problem() -> str | None:
        if not consumer.db_ok or not stats_state["db_ok"]:
            return "database unreachable"
        return None

    health = HealthState(ready_check=ready_problem)
    runner = web.AppRunner(build_health_app(health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    # The port bound, which DOCPIPE_METRICS_PORT=0 leaves to the system.
    port = runner.addresses[0][1] if runner.addresses else settings.metrics_port
    log.info(
        "worker started",
        extra={
            "pipeline": settings.pipeline,
            "revision": settings.revision,
            "settings_digest": pipeline.settings_digest,
            "concurrency": settings.concurrency,
            "metrics": f"http://{settings.metrics_host}:{port}/metrics",
        },
    )

    async def tick() -> None:
        while True:
            health.tick()
            await asyncio.sleep(1.0)

    background = [
        asyncio.create_task(tick()),
        asyncio.create_task(_publish_queue_stats(pool, settings.pipeline, stats_state)),
    ]
    if settings.golden_dir is not None:
        # The golden set (spec.rollout.goldenSet): processed in shadow at each interval.
        golden_config = GoldenConfig(
            directory=settings.golden_dir,
            interval_s=settings.golden_interval_seconds,
            pipeline=settings.pipeline,
            revision=settings.revision,
            stable_revision=settings.stable_revision,
            k=settings.golden_k,
        )
        background.append(asyncio.create_task(golden_loop(pool, pipeline, golden_config)))
    if pipeline.originals is not None:
        # Deleted documents' originals the intake API could not delete at once.
        sweep = original_purge.run(
            pool,
            pipeline.originals,
            settings.pipeline,
            interval_s=settings.original_deletion_sweep_seconds,
        )
        background.append(asyncio.create_task(sweep))
    run_task = asyncio.create_task(consumer.run())
    drained = asyncio.Event()

    async def shutdown() -> None:
        if health.draining:
            return  # a second signal: the first one's drain and deadline stand
        health.draining = True
        # Whatever is running and whatever the database does, the process ends in time.
        exit_after(settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S)
        log.info("draining", extra={"grace_s": settings.shutdown_grace_seconds})
        await consumer.drain(settings.shutdown_grace_seconds)
        drained.set()

    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(shutdown()))
    try:
        await run_task
        if health.draining:
            await drained.wait()
    finally:
        for task in background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*background, return_exceptions=True)
        await runner.cleanup()
        log.info("worker stopped")


def exit_after(seconds: float) -> threading.Timer:
    """End the process in `seconds` unless it has ended by itself (a daemon thread)."""

    def force() -> None:
        log.error(
            "shutdown did not finish within the grace period; exiting now",
            extra={"after_s": seconds},
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docpipe")
    except PackageNotFoundError:
        return "unknown"
