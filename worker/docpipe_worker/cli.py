"""The `docpipe` command: one entry point for every process docpipe runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

import asyncpg

from docpipe_worker import queue
from docpipe_worker.database import resolve_database_url
from docpipe_worker.logs import configure_logging
from docpipe_worker.migrator import MigrationError, migrate


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
            return await migrate(conn)
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
                rows = await queue.stats(conn)
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


def _row(stats: queue.PipelineStats) -> dict[str, object]:
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
    _database_arg(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("jobs", help="inspect and steer the job queue")
    p.add_argument("action", choices=["stats", "show", "retry", "cancel"])
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _database_arg(p)
    p.set_defaults(func=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `docpipe` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(json_logs=False)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
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
    except asyncpg.PostgresError as exc:
        print(f"docpipe: database error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
