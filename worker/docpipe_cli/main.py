"""The `docpipe` command: one entry point for every process docpipe runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from docpipe_cli.logs import configure_logging
from docpipe_contracts import tracing
from docpipe_contracts.configuration import SettingsError
from docpipe_contracts.errors import PermanentError, StartupError
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, MigrationError, migrate

# Whatever a command needs beyond the base dependencies (the queue's statements, the parsers,
# pgvector, the intake API, Kopf, the mocks) it imports when it runs: each image installs only its
# role's extra (pyproject.toml), so `docpipe operator` and `docpipe mocks` must start without the
# others' packages (tests/chart/test_images.py).
if TYPE_CHECKING:
    from docpipe_queue.statistics import PipelineStats


class UsageError(Exception):
    """A mistake on the command line or in the environment: printed as one line, exit 2."""


def _database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL with pgvector (default: $DATABASE_URL, else the embedded server)",
    )


async def _connect(url: str | None) -> asyncpg.Connection:
    from docpipe_queue.database import connect, resolve_database_url

    return await connect(resolve_database_url(url))


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
    from docpipe_queue import jobs as queue
    from docpipe_queue import statistics

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


def cmd_usage(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from docpipe_queue import document_usage as usage

    try:
        since = usage.parse_since(args.since, now=datetime.now(UTC)) if args.since else None
        prices = usage.parse_prices(
            args.price_per_million_tokens, args.price_per_thousand_pages, os.environ
        )
    except usage.UsageInputError as exc:
        raise UsageError(str(exc)) from None

    async def run() -> usage.UsageReport:
        conn = await _connect(args.database_url)
        try:
            return await usage.report(conn, by=args.by, since=since, prices=prices)
        finally:
            await conn.close()

    result = asyncio.run(run())
    print(json.dumps(result.as_json()) if args.json else usage.render_text(result))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from docpipe_contracts.configuration import load_settings
    from docpipe_ingest.runner import run_worker
    from docpipe_ingest.settings import WorkerSettings

    settings = load_settings(WorkerSettings)
    configure_logging(json_logs=settings.log_format == "json", level=settings.log_level)
    # On only with an OTLP endpoint set (docs/operations.md "Tracing"); flushed on the way out.
    resource = {"docpipe.pipeline": settings.pipeline, "docpipe.revision": settings.revision}
    with tracing.configured("docpipe-worker", attributes=resource):
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
    from docpipe_mocks.quotas import LlamaParseQuotas, OpenAIQuotas, QuotaConfig
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
        if args.quotas_json:
            quotas = QuotaConfig.model_validate_json(args.quotas_json)
        else:
            quotas = QuotaConfig(
                openai=OpenAIQuotas(
                    requests_per_minute=args.openai_rpm,
                    tokens_per_minute=args.openai_tpm,
                    insufficient_quota=args.openai_insufficient_quota,
                    burst_seconds=args.openai_burst_seconds,
                ),
                llamaparse=LlamaParseQuotas(
                    uploads_per_window=args.llamaparse_uploads,
                    window_seconds=args.llamaparse_window,
                ),
            )
        config = MockConfig(
            faults=faults,
            quotas=quotas,
            llamaparse=LlamaParseSettings(pending_polls=args.pending_polls),
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

    # The API and the workers of the dev stack run in this process: one service, one tracer.
    with tracing.configured("docpipe-dev"):
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
    from docpipe_queue.database import create_pool, resolve_database_url

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
                tags=args.tag or None,
                metadata=_metadata_arg(args.metadata),
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

    from docpipe_operator.runtime import run_operator, secrets_policy

    liveness = None if args.liveness == "off" else args.liveness
    try:
        secrets = secrets_policy(args.secrets, args.secrets_refresh_seconds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        asyncio.run(
            run_operator(
                liveness_endpoint=liveness,
                standalone=args.standalone,
                namespaces=args.namespace,
                secret_reads=secrets,
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
                tags=args.tag or None,
                metadata=_metadata_arg(args.metadata),
            )
        if args.json:
            print(json.dumps(report.__dict__))
        else:
            print_report(report, Console(stderr=True))
        return 0 if report.ok else 1

    return asyncio.run(run())


def _metadata_arg(raw: str | None) -> dict[str, object] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise UsageError(f"--metadata must be a JSON object, got {raw[:60]!r}") from None
    if not isinstance(value, dict):
        raise UsageError('--metadata must be a JSON object, like \'{"team": "docs"}\'')
    return value


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
                    args.query,
                    pipeline=args.pipeline,
                    top_k=args.top_k,
                    document_ids=documents,
                    mode=args.mode,
                    filter={"tags": args.tag} if args.tag else None,
                )
            except ApiClientError as exc:
                raise UsageError(str(exc)) from None
        if args.json:
            print(result.model_dump_json())
        else:
            print_hits(result, Console())
        return 0

    return asyncio.run(run())


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import aiohttp
    from rich.console import Console
    from rich.table import Table

    from docpipe_cli.api_client import ApiClient, ApiClientError
    from docpipe_cli.evaluation import MODES, document_key, load_questions, score_mode

    url, token = _api_target(args)
    try:
        questions = load_questions(Path(args.questions))
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    modes = [args.mode] if args.mode else list(MODES)

    async def run() -> list[dict[str, object]]:
        results = []
        async with aiohttp.ClientSession() as session:
            client = ApiClient(session, url, token)
            for mode in modes:
                ranked = []
                for question in questions:
                    try:
                        found = await client.search(
                            question.question, pipeline=args.pipeline, top_k=args.k, mode=mode
                        )
                    except ApiClientError as exc:
                        raise UsageError(str(exc)) from None
                    ranked.append([document_key(hit) for hit in found.hits])
                results.append(score_mode(mode, ranked, questions, args.k).__dict__)
        return results

    scores = asyncio.run(run())
    if args.json:
        print(json.dumps({"k": args.k, "modes": scores}))
        return 0
    table = Table(title=f"{len(questions)} questions, top {args.k}")
    for column in ("mode", f"hit@{args.k}", "MRR", f"recall@{args.k}"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in scores:
        table.add_row(
            str(row["mode"]),
            f"{row['hit_at_k']:.3f}",
            f"{row['mrr']:.3f}",
            f"{row['recall_at_k']:.3f}",
        )
    Console().print(table)
    return 0


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
    with (
        tracing.configured("docpipe-api"),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
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


def cmd_backup(args: argparse.Namespace) -> int:
    from docpipe_cli.backup import backup, describe_size
    from docpipe_queue.database import resolve_database_url

    output = Path(args.output)
    found, tool = asyncio.run(backup(resolve_database_url(args.database_url), output))
    print(
        f"backed up the docpipe schema to {output} ({describe_size(output)}; "
        f"{found.documents} documents, {found.chunks} chunks, {found.jobs} jobs, "
        f"{found.running_jobs} running: redone after a restore; {tool.path.name} {tool.major})"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from docpipe_cli.backup import restore
    from docpipe_queue.database import resolve_database_url

    url = resolve_database_url(args.database_url)
    result = asyncio.run(restore(url, Path(args.file), force=args.force))
    restored = result.contents
    replaced = " (replacing the docpipe schema that was there)" if result.replaced else ""
    print(
        f"restored {args.file}{replaced}: {restored.documents} documents, {restored.chunks} "
        f"chunks, {restored.jobs} jobs; {result.requeued} jobs that were running at backup time "
        "are queued again. Run `docpipe migrate` if this docpipe is newer than the backup."
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from docpipe_cli.verify import resolve_tokens, verify

    url = args.api_url or os.environ.get("DOCPIPE_API_URL")
    if not url:
        raise UsageError("no API URL: pass --api-url or set DOCPIPE_API_URL")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    tokens = resolve_tokens(args.token, args.read_only_token)
    report = asyncio.run(
        verify(url, tokens, pipeline=args.pipeline, timeout_s=args.timeout, progress=sys.stderr)
    )
    print(json.dumps(report.as_json()) if args.json else report.render())
    return 0 if report.ok else 1


async def _purge(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from docpipe_queue import jobs as queue

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


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from docpipe_queue import audit

    if args.older_than is None:
        raise UsageError("docpipe audit purge needs --older-than AGE (e.g. 90d)")
    try:
        older_than_s = audit.parse_age(args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")

    async def run() -> int:
        conn = await _connect(args.database_url)
        try:
            with Progress(transient=True, disable=args.json) as progress:
                task = progress.add_task("purging the audit trail", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                return await audit.purge(
                    conn,
                    older_than_s=older_than_s,
                    batch_size=args.batch_size,
                    on_progress=advance,
                )
        finally:
            await conn.close()

    deleted = asyncio.run(run())
    if args.json:
        print(json.dumps({"deleted": deleted}))
    else:
        print(f"deleted {deleted} audit events recorded more than {args.older_than.strip()} ago")
    return 0


def cmd_documents(args: argparse.Namespace) -> int:
    import getpass

    from docpipe_queue import reprocessing

    revision = (args.revision or "").strip()
    if not revision:
        raise UsageError("docpipe documents reprocess needs --revision R (a worker revision)")

    async def run() -> int:
        conn = await _connect(args.database_url)
        try:
            return await reprocessing.reprocess_revision(
                conn,
                revision=revision,
                pipeline=args.pipeline,
                subject=f"cli:{getpass.getuser()}",
            )
        finally:
            await conn.close()

    enqueued = asyncio.run(run())
    if args.json:
        print(json.dumps({"revision": revision, "pipeline": args.pipeline, "enqueued": enqueued}))
    else:
        where = f" in pipeline {args.pipeline}" if args.pipeline else ""
        print(f"re-enqueued {enqueued} documents with chunks of revision {revision}{where}")
    return 0


def _row(stats: PipelineStats) -> dict[str, object]:
    return {
        "pipeline": stats.pipeline,
        "ready": stats.ready,
        "scheduled": stats.scheduled,
        "in_flight": stats.in_flight,
        "oldest_ready_age_s": stats.oldest_ready_age_s,
    }


def build_argument_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("backup", help="dump the docpipe schema to a file (pg_dump)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the backup to write")
    _database_arg(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="load a backup into a fresh database; running jobs are redone"
    )
    p.add_argument("file", metavar="FILE", help="a file written by `docpipe backup`")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a docpipe schema that holds documents or jobs (they are lost)",
    )
    _database_arg(p)
    p.set_defaults(func=cmd_restore)

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

    p = sub.add_parser("documents", help="act on stored documents: reprocess a revision's")
    p.add_argument("action", choices=["reprocess"])
    p.add_argument(
        "--revision",
        help="reprocess: every document with a chunk this worker revision stored (required); "
        "documents with a queued or running job are left to it",
    )
    p.add_argument("--pipeline", help="reprocess: only this pipeline's documents (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _database_arg(p)
    p.set_defaults(func=cmd_documents)

    p = sub.add_parser("audit", help="the intake API's audit trail: retention")
    p.add_argument("action", choices=["purge"])
    p.add_argument(
        "--older-than",
        metavar="AGE",
        help="purge: delete events recorded more than AGE ago, e.g. 90d, 12h, 2w (required)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        help="purge: rows deleted per transaction (default 10000)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _database_arg(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("usage", help="provider usage and cost per owner or pipeline")
    p.add_argument("--by", choices=["owner", "pipeline"], required=True, help="how to group")
    p.add_argument(
        "--since",
        help="only documents processed since: a date (2026-11-01, UTC), a time "
        "(2026-11-01T08:00:00Z) or an age (30m, 12h, 7d, 2w); default: all",
    )
    p.add_argument(
        "--price-per-million-tokens",
        metavar="PRICE",
        help="cost of a million embedding tokens (default: $DOCPIPE_PRICE_PER_MILLION_TOKENS)",
    )
    p.add_argument(
        "--price-per-thousand-pages",
        metavar="PRICE",
        help="cost of a thousand parsed pages (default: $DOCPIPE_PRICE_PER_THOUSAND_PAGES)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _database_arg(p)
    p.set_defaults(func=cmd_usage)

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
    p.add_argument(
        "--openai-rpm", type=int, help="embedding requests per minute per API key (none)"
    )
    p.add_argument(
        "--openai-tpm", type=int, help="embedding input tokens per minute per API key (none)"
    )
    p.add_argument(
        "--openai-burst-seconds",
        type=int,
        default=60,
        help="how much of a minute's quota may be spent at once, in seconds (60)",
    )
    p.add_argument(
        "--openai-insufficient-quota",
        action="store_true",
        help="answer every embeddings request 429 insufficient_quota",
    )
    p.add_argument("--llamaparse-uploads", type=int, help="uploads per window per API key (none)")
    p.add_argument(
        "--llamaparse-window", type=int, default=10, help="the upload window, in seconds"
    )
    p.add_argument("--quotas-json", help="the whole quota configuration as JSON (per service)")
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
    p.add_argument("--tag", action="append", default=[], help="tag the documents (repeatable)")
    p.add_argument("--metadata", help="a JSON object stored with each document")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("api", help="serve the intake HTTP API (configured by environment)")
    p.add_argument(
        "--print-openapi", action="store_true", help="print the OpenAPI document and exit"
    )
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("token", help="mint a bearer token for the intake API (development)")
    p.add_argument(
        "--subject",
        default="dev",
        help="the owner the token acts as (default: dev, the owner `docpipe dev` ingests as)",
    )
    p.add_argument("--scopes", default="read write search", help="space- or comma-separated scopes")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("search", help="search a pipeline through the intake API")
    p.add_argument("query")
    p.add_argument("--pipeline", default="default")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--mode",
        choices=["vector", "keyword", "hybrid"],
        default="hybrid",
        help="embeddings, full-text search, or both fused (default: hybrid)",
    )
    p.add_argument(
        "--tag", action="append", default=[], help="only documents with this tag (repeatable)"
    )
    p.add_argument(
        "--document", action="append", default=[], metavar="ID", help="search only this document"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--api-url", help="the intake API (default: $DOCPIPE_API_URL)")
    p.add_argument("--token", help="bearer token (default: $DOCPIPE_API_TOKEN)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "eval", help="score search on questions with known answers: hit@k, MRR, recall per mode"
    )
    p.add_argument("questions", metavar="QUERIES.json", help='[{"question", "accepted": [...]}]')
    p.add_argument("--pipeline", default="default")
    p.add_argument("-k", "--k", type=int, default=5, help="hits per question (default: 5)")
    p.add_argument("--mode", choices=["vector", "keyword", "hybrid"], help="only this mode")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--api-url", help="the intake API (default: $DOCPIPE_API_URL)")
    p.add_argument("--token", help="bearer token (default: $DOCPIPE_API_TOKEN)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "verify", help="check a deployment end to end through its API (exit 0: all passed)"
    )
    p.add_argument("--api-url", help="the intake API (default: $DOCPIPE_API_URL)")
    p.add_argument(
        "--token",
        help="token with read, write and search scopes (default: $DOCPIPE_API_TOKEN, else "
        "minted from $DOCPIPE_API_JWT_SECRET)",
    )
    p.add_argument(
        "--read-only-token",
        help="token without the search scope, for the 403 check (default: "
        "$DOCPIPE_VERIFY_READ_ONLY_TOKEN, else minted from $DOCPIPE_API_JWT_SECRET)",
    )
    p.add_argument(
        "--pipeline",
        default=os.environ.get("DOCPIPE_VERIFY_PIPELINE", "default"),
        help="where the probe document goes (default: $DOCPIPE_VERIFY_PIPELINE or default)",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the probe (120)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

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
    p.add_argument(
        "--secrets",
        choices=("read", "none"),
        default=None,
        help="read the Secrets pipelines reference, by name, to roll workers when they change "
        "and to see jobs waiting with no worker (`read`), or never (`none`; needs no RBAC on "
        "Secrets) (default: $DOCPIPE_SECRETS or read)",
    )
    p.add_argument(
        "--secrets-refresh-seconds",
        type=float,
        default=None,
        metavar="S",
        help="read each referenced Secret again after this long "
        "(default: $DOCPIPE_SECRETS_REFRESH_SECONDS or 60)",
    )
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `docpipe` console script."""
    args = build_argument_parser().parse_args(argv)
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
