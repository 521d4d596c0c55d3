"""The `docpipe` command: one entry point for every process docpipe runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from docpipe_cli.logs import configure_logging
from docpipe_contracts.configuration import SettingsError
from docpipe_contracts.errors import PermanentError, StartupError
from docpipe_queue import jobs as queue
from docpipe_queue import statistics
from docpipe_queue.database import resolve_database_url
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, MigrationError, migrate


class UsageError(Exception):
    """A mistake on the command line or in the environment: printed as one line, exit 2."""


def _database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL with pgvector (default: $DATABASE_URL, else the embedded server)",
    )


async def _connect(url: str | None) -> asyncpg.Connection:
    return await asyncpg.connect(resolve_database_url(url))


def cmd_migrate(args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        conn = await _connect(args.database_url)
        try:
            return await migrate(conn, embedding_dimensions=args.embedding_dimensions)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database is up to date")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    async def run() -> int:
        conn = await _connect(args.database_url)
        try:
            if args.action == "stats":
                rows = await statistics.stats(conn)
                if args.json:
                    print(json.dumps([_row(r) for r in rows]))
                else:
                    header = ("pipeline", "ready", "scheduled", "running", "oldest")
                    print("{:<24} {:>8} {:>10} {:>8} {:>9}".format(*header))
                    for r in rows:
                        print(
                            f"{r.pipeline:<24} {r.ready:>8} {r.scheduled:>10} {r.in_flight:>8}"
                            f" {r.oldest_ready_age_s:>8.1f}s"
                        )
                return 0
            if args.action == "purge":
                return await _purge(conn, args)
            if args.job_id is None:
                raise UsageError(f"docpipe jobs {args.action} needs a job id")
            if args.action == "show":
                row = await queue.get(conn, args.job_id)
                if row is None:
                    raise UsageError(f"no job with id {args.job_id}")
                print(json.dumps(dict(row), default=str, indent=2))
                return 0
            action = queue.retry if args.action == "retry" else queue.cancel
            if await action(conn, args.job_id):
                print(f"job {args.job_id}: {args.action} done")
                return 0
            allowed = "dead or cancelled" if args.action == "retry" else "queued or running"
            raise UsageError(f"job {args.job_id} is not {allowed} (or does not exist)")
        finally:
            await conn.close()

    return asyncio.run(run())


def cmd_worker(args: argparse.Namespace) -> int:
    from docpipe_contracts.configuration import load_settings
    from docpipe_ingest.runner import run_worker
    from docpipe_ingest.settings import WorkerSettings

    settings = load_settings(WorkerSettings)
    configure_logging(json_logs=settings.log_format == "json", level=settings.log_level)
    asyncio.run(run_worker(settings))
    return 0


def extract_for_mocks(data: bytes, filename: str, content_type: str | None) -> str:
    """docpipe's own extraction, for the mock LlamaParse to parse with."""
    from docpipe_ingest.extraction import extract_markdown

    return extract_markdown(data, filename=filename, content_type=content_type)


def cmd_mocks(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from docpipe_mocks.faults import FaultConfig, ServiceFaults
    from docpipe_mocks.llamaparse import LlamaParseSettings
    from docpipe_mocks.server import MockConfig, run

    try:
        if args.faults_json:
            faults = FaultConfig.model_validate_json(args.faults_json)
        else:
            each = ServiceFaults(
                latency_ms=args.latency_ms,
                error_rate=args.error_rate,
                rate_limit_rate=args.rate_limit_rate,
                retry_after_seconds=args.retry_after,
                hang_rate=args.hang_rate,
                malformed_rate=args.malformed_rate,
            )
            faults = FaultConfig(seed=args.seed, llamaparse=each, openai=each)
        config = MockConfig(
            faults=faults, llamaparse=LlamaParseSettings(pending_polls=args.pending_polls)
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid mock settings: {problems}") from None
    configure_logging(json_logs=False)
    run(args.host, args.port, config, extract_for_mocks)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from pathlib import Path

    from docpipe_cli.devstack import run_dev

    return asyncio.run(
        run_dev(
            workers=args.workers,
            pipeline=args.pipeline,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            concurrency=args.concurrency,
            ingest=[Path(p) for p in args.ingest],
            once=args.once,
            mock_latency_ms=args.mock_latency_ms,
        )
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from docpipe_cli.ingest import ingest_paths, print_report
    from docpipe_queue.database import create_pool

    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.exists():
            raise UsageError(f"no such file or folder: {path}")
    if args.api_url or args.token:
        return _ingest_through_api(args, paths)

    async def run() -> int:
        pool = await create_pool(resolve_database_url(args.database_url))
        try:
            report = await ingest_paths(
                pool,
                paths,
                pipeline=args.pipeline,
                reprocess=args.reprocess,
                wait=not args.no_wait,
                timeout_s=args.timeout,
            )
        finally:
            await pool.close()
        if args.json:
            print(json.dumps(report.__dict__))
        else:
            print_report(report, Console(stderr=True))
        return 0 if report.ok else 1

    return asyncio.run(run())


def cmd_operator(args: argparse.Namespace) -> int:
    import kopf

    from docpipe_operator.runtime import run_operator

    liveness = None if args.liveness == "off" else args.liveness
    try:
        asyncio.run(
            run_operator(
                liveness_endpoint=liveness,
                standalone=args.standalone,
                namespaces=args.namespace,
            )
        )
    except kopf.LoginError as exc:
        raise StartupError(str(exc)) from None
    return 0


def _api_target(args: argparse.Namespace) -> tuple[str, str]:
    url = args.api_url or os.environ.get("DOCPIPE_API_URL")
    token = args.token or os.environ.get("DOCPIPE_API_TOKEN")
    if not url:
        raise UsageError("no API URL: pass --api-url or set DOCPIPE_API_URL")
    if not token:
        raise UsageError(
            "no API token: pass --token or set DOCPIPE_API_TOKEN "
            "(for the development API: export DOCPIPE_API_TOKEN=$(docpipe token))"
        )
    return url, token


def _ingest_through_api(args: argparse.Namespace, paths: list[Path]) -> int:
    import aiohttp
    from rich.console import Console

    from docpipe_cli.api_client import ApiClient, ingest_through_api
    from docpipe_cli.ingest import print_report

    url, token = _api_target(args)

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            report = await ingest_through_api(
                ApiClient(session, url, token),
                paths,
                pipeline=args.pipeline,
                reprocess=args.reprocess,
                wait=not args.no_wait,
                timeout_s=args.timeout,
            )
        if args.json:
            print(json.dumps(report.__dict__))
        else:
            print_report(report, Console(stderr=True))
        return 0 if report.ok else 1

    return asyncio.run(run())


def cmd_search(args: argparse.Namespace) -> int:
    import uuid

    import aiohttp
    from rich.console import Console

    from docpipe_cli.api_client import ApiClient, ApiClientError, print_hits

    url, token = _api_target(args)
    try:
        documents = [uuid.UUID(d) for d in args.document]
    except ValueError:
        raise UsageError(f"--document takes a document id (a UUID), got {args.document}") from None

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                result = await ApiClient(session, url, token).search(
                    args.query, pipeline=args.pipeline, top_k=args.top_k, document_ids=documents
                )
            except ApiClientError as exc:
                raise UsageError(str(exc)) from None
        if args.json:
            print(result.model_dump_json())
        else:
            print_hits(result, Console())
        return 0

    return asyncio.run(run())


def cmd_api(args: argparse.Namespace) -> int:
    if args.print_openapi:
        from docpipe_api.openapi import openapi_json

        sys.stdout.write(openapi_json().decode())
        return 0
    from docpipe_api.server import run_api
    from docpipe_api.settings import ApiSettings
    from docpipe_contracts.configuration import load_settings

    settings = load_settings(ApiSettings)
    configure_logging(json_logs=settings.log_format == "json", level=settings.log_level)
    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_api(settings))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from docpipe_api.auth import (
        DEVELOPMENT_SECRET,
        SCOPES,
        KeyConfigError,
        mint_token,
        secret_keys,
    )

    secret = os.environ.get("DOCPIPE_API_JWT_SECRET")
    if not secret:
        secret = DEVELOPMENT_SECRET
        print(
            "docpipe token: signed with the development secret, which only an API in "
            "development mode accepts (set DOCPIPE_API_JWT_SECRET to sign with yours)",
            file=sys.stderr,
        )
    try:
        secret_keys(secret)
    except KeyConfigError as exc:
        raise UsageError(f"DOCPIPE_API_JWT_SECRET: {exc}") from None
    scopes = args.scopes.replace(",", " ").split()
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise UsageError(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SCOPES)}"
        )
    if not args.ttl > 0:
        raise UsageError(f"--ttl must be a positive number of seconds, got {args.ttl:g}")
    if not args.subject or len(args.subject) > 255:
        raise UsageError("--subject must be 1 to 255 characters")
    print(
        mint_token(
            secret,
            subject=args.subject,
            scopes=scopes,
            ttl_s=args.ttl,
            issuer=os.environ.get("DOCPIPE_API_JWT_ISSUER"),
            audience=os.environ.get("DOCPIPE_API_JWT_AUDIENCE"),
        )
    )
    return 0


async def _purge(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    days = args.older_than_days
    if days is None or days < 0:
        raise UsageError("docpipe jobs purge needs --older-than-days N (N >= 0)")
    with Progress(transient=True, disable=args.json) as progress:
        task = progress.add_task("purging", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        deleted = await queue.purge(
            conn,
            older_than_s=days * 86_400,
            include_dead=args.include_dead,
            on_progress=advance,
        )
    kinds = "succeeded, cancelled and dead" if args.include_dead else "succeeded and cancelled"
    if args.json:
        print(json.dumps({"deleted": deleted}))
    else:
        print(f"deleted {deleted} {kinds} jobs finished more than {days:g} days ago")
    return 0


def _row(stats: statistics.PipelineStats) -> dict[str, object]:
    return {
        "pipeline": stats.pipeline,
        "ready": stats.ready,
        "scheduled": stats.scheduled,
        "in_flight": stats.in_flight,
        "oldest_ready_age_s": stats.oldest_ready_age_s,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docpipe", description="Document ingestion into pgvector, run as a worker fleet."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    p.add_argument(
        "--embedding-dimensions",
        type=int,
        default=int(os.environ.get("DOCPIPE_EMBEDDING_DIMENSIONS", DEFAULT_EMBEDDING_DIMENSIONS)),
        help="vector size of a new database's chunks (default: $DOCPIPE_EMBEDDING_DIMENSIONS or "
        f"{DEFAULT_EMBEDDING_DIMENSIONS}); ignored once the schema exists",
    )
    _database_arg(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("jobs", help="inspect and steer the job queue")
    p.add_argument("action", choices=["stats", "show", "retry", "cancel", "purge"])
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="purge: delete jobs that finished more than this many days ago (required)",
    )
    p.add_argument(
        "--include-dead", action="store_true", help="purge: dead jobs too (kept by default)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _database_arg(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("worker", help="drain a pipeline's jobs (configured by environment)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("mocks", help="serve mock LlamaParse and OpenAI APIs with fault injection")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests given a 5xx")
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="share given a 429")
    p.add_argument("--retry-after", type=int, default=1, help="retry-after of those 429s (s)")
    p.add_argument("--hang-rate", type=float, default=0.0, help="share never answered")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="share with a broken body")
    p.add_argument("--seed", type=int, default=0, help="makes the fault sequence reproducible")
    p.add_argument("--faults-json", help="the whole fault configuration as JSON (per service)")
    p.add_argument(
        "--pending-polls", type=int, default=1, help="LlamaParse polls answered PENDING first"
    )
    p.set_defaults(func=cmd_mocks)

    p = sub.add_parser("dev", help="run Postgres, mocks and workers locally (Ctrl-C stops)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16, help="jobs at once per worker")
    p.add_argument("--pipeline", default="default")
    p.add_argument(
        "--data-dir", help="where the embedded database lives (default: ~/.local/share/docpipe)"
    )
    p.add_argument(
        "--ingest", nargs="*", default=[], metavar="PATH", help="files or folders to ingest"
    )
    p.add_argument("--once", action="store_true", help="stop after the ingest instead of serving")
    p.add_argument("--mock-latency-ms", type=float, default=0.0, help="added to every mock call")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("ingest", help="add files or folders to a pipeline and follow them")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--pipeline", default="default")
    p.add_argument("--reprocess", action="store_true", help="process again what is already there")
    p.add_argument("--no-wait", action="store_true", help="return once the files are queued")
    p.add_argument("--timeout", type=float, help="stop waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _database_arg(p)
    p.add_argument(
        "--api-url",
        help="upload through the intake API at this URL instead of writing to the database "
        "(default with --token: $DOCPIPE_API_URL)",
    )
    p.add_argument("--token", help="bearer token for the API (default: $DOCPIPE_API_TOKEN)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("api", help="serve the intake HTTP API (configured by environment)")
    p.add_argument(
        "--print-openapi", action="store_true", help="print the OpenAPI document and exit"
    )
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("token", help="mint a bearer token for the intake API (development)")
    p.add_argument("--subject", default="dev", help="the owner the token acts as (default: dev)")
    p.add_argument("--scopes", default="read write search", help="space- or comma-separated scopes")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("search", help="search a pipeline through the intake API")
    p.add_argument("query")
    p.add_argument("--pipeline", default="default")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--document", action="append", default=[], metavar="ID", help="search only this document"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--api-url", help="the intake API (default: $DOCPIPE_API_URL)")
    p.add_argument("--token", help="bearer token (default: $DOCPIPE_API_TOKEN)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("operator", help="run the Kubernetes operator for DocumentPipelines")
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (default: %(default)s; 'off' to disable)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="skip peering (only when exactly one operator runs)",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeat for several; default: every namespace)",
    )
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `docpipe` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(json_logs=False)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SettingsError as exc:
        print(f"docpipe: {exc}", file=sys.stderr)
        return 2
    except (StartupError, PermanentError) as exc:
        print(f"docpipe: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"docpipe: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"docpipe migrate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"docpipe: cannot reach the database ({exc}); check DATABASE_URL or --database-url",
            file=sys.stderr,
        )
        return 1
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:
        print(
            f"docpipe: this database has no docpipe schema yet ({exc}); run `docpipe migrate`",
            file=sys.stderr,
        )
        return 1
    except asyncpg.PostgresError as exc:
        print(f"docpipe: database error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
