"""`docpipe ingest PATH...` against the database directly: add files (folders recursively) to a
pipeline, follow them to processed with a progress bar, end with a summary."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docpipe_contracts.content_types import SUPPORTED_CONTENT_TYPES, content_type_for
from docpipe_queue.connectivity import DB_ERRORS
from docpipe_queue.documents import add_document

LOCAL_OWNER = "local"
# Waiting for documents without --timeout, how long the database may stay unreachable.
OUTAGE_LIMIT_S = 300.0
OUTAGE_RETRY_S = 0.5


@dataclass
class IngestReport:
    added: int = 0
    unchanged: int = 0
    processed: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # filename -> reason
    skipped: list[str] = field(default_factory=list)  # unsupported files
    pending: int = 0  # still not finished when we stopped waiting
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.pending


def find_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Supported files under `paths` (folders recursively, hidden entries skipped) and the rest."""
    found: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        for candidate in _walk(path):
            if content_type_for(candidate.name) in SUPPORTED_CONTENT_TYPES:
                found.append(candidate)
            else:
                skipped.append(candidate)
    return found, skipped


def _walk(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file() and not any(p.startswith(".") for p in child.relative_to(path).parts):
            yield child


async def ingest_paths(
    pool: asyncpg.Pool,
    paths: Sequence[Path],
    *,
    pipeline: str,
    owner: str = LOCAL_OWNER,
    reprocess: bool = False,
    wait: bool = True,
    timeout_s: float | None = None,
    console: Console | None = None,
    tags: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> IngestReport:
    """Add the files to `pipeline` (with `tags` and `metadata`, when given) and, when `wait`,
    follow them until processed or failed."""
    console = console or Console(stderr=True)
    files, skipped = find_files(paths)
    report = IngestReport(skipped=[str(p) for p in skipped])
    started = time.monotonic()
    ids: dict[uuid.UUID, str] = {}
    correlation_id = f"ingest-{uuid.uuid4().hex[:12]}"
    with progress_bar(console) as progress:
        adding = progress.add_task("adding", total=len(files))
        async with pool.acquire() as conn:
            for path in files:
                added = await add_document(
                    conn,
                    pipeline=pipeline,
                    owner=owner,
                    filename=path.name,
                    content_type=content_type_for(path.name),
                    data=path.read_bytes(),
                    correlation_id=correlation_id,
                    reprocess=reprocess,
                    tags=sorted(set(tags)) if tags else None,
                    metadata=metadata,
                )
                if added.job_id is None:
                    report.unchanged += 1
                else:
                    report.added += 1
                    ids[added.document_id] = str(path)
                progress.advance(adding)
        if wait and ids:
            processing = progress.add_task("processing", total=len(ids))
            await _follow(pool, ids, report, progress, processing, started, timeout_s)
    report.seconds = time.monotonic() - started
    return report


async def _follow(
    pool: asyncpg.Pool,
    ids: dict[uuid.UUID, str],
    report: IngestReport,
    progress: Progress,
    task: object,
    started: float,
    timeout_s: float | None,
) -> None:
    waiting = set(ids)
    outage_since: float | None = None
    while waiting:
        try:
            rows = await pool.fetch(
                "select id, status, error from docpipe.documents"
                " where id = any($1) and status in ('processed', 'failed')",
                list(waiting),
            )
        except DB_ERRORS as exc:
            # The workers ride out a database restart; so does the wait for their work.
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                progress.console.print(
                    f"[yellow]database unreachable ({type(exc).__name__}: {exc}); still waiting[/]"
                )
            if timeout_s is not None and now - started > timeout_s:
                report.pending = len(waiting)
                break
            if timeout_s is None and now - outage_since > OUTAGE_LIMIT_S:
                raise
            await asyncio.sleep(OUTAGE_RETRY_S)
            continue
        if outage_since is not None:
            progress.console.print("database reachable again")
            outage_since = None
        for row in rows:
            waiting.discard(row["id"])
            if row["status"] == "processed":
                report.processed += 1
            else:
                report.failed[ids[row["id"]]] = row["error"] or "unknown error"
        progress.update(task, completed=len(ids) - len(waiting))  # type: ignore[arg-type]
        if not waiting:
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            report.pending = len(waiting)
            break
        await asyncio.sleep(0.25)


def progress_bar(console: Console) -> Progress:
    """The progress display of an ingest: one bar per phase."""
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def print_report(report: IngestReport, console: Console) -> None:
    """The summary a person reads after an ingest."""
    rate = report.processed / report.seconds if report.seconds else 0.0
    console.print(
        f"[bold]{report.processed} processed[/], {len(report.failed)} failed, "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped "
        f"in {report.seconds:.1f}s ({rate:.1f} documents/s)"
    )
    for name, reason in sorted(report.failed.items()):
        console.print(f"  [red]failed[/] {name}: {reason}")
    if report.skipped:
        shown = ", ".join(Path(s).name for s in report.skipped[:5])
        more = f" and {len(report.skipped) - 5} more" if len(report.skipped) > 5 else ""
        console.print(f"  skipped (unsupported type): {shown}{more}")
    if report.pending:
        console.print(f"  [yellow]{report.pending} still processing when the wait ended[/]")
