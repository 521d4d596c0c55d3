"""A client of the intake API, and the commands built on it: `docpipe ingest --api-url` (upload,
follow to processed, with a progress bar) and `docpipe search`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from docpipe_api.models import Document, ErrorResponse, SearchResult, UploadResult
from docpipe_cli.ingest import IngestReport, find_files, progress_bar
from docpipe_contracts.content_types import content_type_for
from docpipe_contracts.correlation import HEADER as REQUEST_ID_HEADER

ModelT = TypeVar("ModelT", bound=BaseModel)

UPLOAD_CONCURRENCY = 4
POLL_INTERVAL_S = 0.5


class ApiClientError(Exception):
    """The API refused a request or could not be reached; the message says why."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Calls the intake API at `base_url` with a bearer `token` over one session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def upload(
        self,
        path: Path,
        *,
        pipeline: str,
        reprocess: bool,
        request_id: str | None = None,
        tags: Sequence[str] | None = None,
        source_url: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> UploadResult:
        data = await asyncio.to_thread(path.read_bytes)
        form = aiohttp.FormData()
        form.add_field("file", data, filename=path.name, content_type=content_type_for(path.name))
        if tags:
            form.add_field("tags", json.dumps(list(tags)), content_type="application/json")
        if source_url:
            form.add_field("source_url", source_url, content_type="text/plain")
        if metadata:
            form.add_field("metadata", json.dumps(metadata), content_type="application/json")
        query = "?reprocess=true" if reprocess else ""
        return await self._call(
            "POST",
            f"/v1/pipelines/{pipeline}/documents{query}",
            UploadResult,
            data=form,
            request_id=request_id,
        )

    async def document(self, document_id: uuid.UUID) -> Document:
        return await self._call("GET", f"/v1/documents/{document_id}", Document)

    async def search(
        self,
        query: str,
        *,
        pipeline: str,
        top_k: int,
        document_ids: Sequence[uuid.UUID] | None = None,
        mode: str = "hybrid",
        filter: dict[str, Any] | None = None,
    ) -> SearchResult:
        body: dict[str, Any] = {"query": query, "top_k": top_k, "mode": mode}
        if document_ids:
            body["document_ids"] = [str(d) for d in document_ids]
        if filter:
            body["filter"] = filter
        return await self._call(
            "POST", f"/v1/pipelines/{pipeline}/search", SearchResult, json_body=body
        )

    async def _call(
        self,
        method: str,
        path: str,
        model: type[ModelT],
        *,
        data: aiohttp.FormData | None = None,
        json_body: Any = None,
        request_id: str | None = None,
    ) -> ModelT:
        headers = dict(self._headers)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        url = self._base + path
        try:
            async with self._session.request(
                method, url, headers=headers, data=data, json=json_body
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiClientError(f"cannot reach the API at {self._base}: {exc}") from None
        if status >= 400:
            raise ApiClientError(f"{method} {path}: {_error_message(status, body)}", status=status)
        try:
            return model.model_validate_json(body)
        except ValidationError:
            raise ApiClientError(
                f"{method} {path}: unexpected response ({status}); is {self._base} a docpipe API?"
            ) from None


def _error_message(status: int, body: bytes) -> str:
    try:
        return f"{status} {ErrorResponse.model_validate_json(body).error.message}"
    except ValidationError:
        return f"{status} {body[:200].decode('utf-8', errors='replace')}"


async def ingest_through_api(
    client: ApiClient,
    paths: Sequence[Path],
    *,
    pipeline: str,
    reprocess: bool = False,
    wait: bool = True,
    timeout_s: float | None = None,
    console: Console | None = None,
    tags: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> IngestReport:
    """Upload the files under `paths` (with `tags` and `metadata`, when given) and, when `wait`,
    follow them until processed or failed."""
    console = console or Console(stderr=True)
    files, skipped = find_files(paths)
    report = IngestReport(skipped=[str(p) for p in skipped])
    started = time.monotonic()
    request_id = f"ingest-{uuid.uuid4().hex[:12]}"
    waiting: dict[uuid.UUID, str] = {}
    slots = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    with progress_bar(console) as progress:
        uploading = progress.add_task("uploading", total=len(files))

        async def upload(path: Path) -> None:
            async with slots:
                try:
                    result = await client.upload(
                        path,
                        pipeline=pipeline,
                        reprocess=reprocess,
                        request_id=request_id,
                        tags=tags,
                        metadata=metadata,
                    )
                except ApiClientError as exc:
                    report.failed[str(path)] = str(exc)
                else:
                    if result.job_id is None:
                        report.unchanged += 1
                    else:
                        report.added += 1
                        waiting[result.document.id] = str(path)
                progress.advance(uploading)

        await asyncio.gather(*(upload(path) for path in files))
        if wait and waiting:
            processing = progress.add_task("processing", total=len(waiting))
            total = len(waiting)
            while waiting:
                documents = await asyncio.gather(
                    *(_poll(client, document_id) for document_id in list(waiting))
                )
                for document in documents:
                    if document is None or document.status not in ("processed", "failed"):
                        continue
                    path = waiting.pop(document.id)
                    if document.status == "processed":
                        report.processed += 1
                    else:
                        report.failed[path] = document.error or "unknown error"
                progress.update(processing, completed=total - len(waiting))
                if not waiting:
                    break
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    report.pending = len(waiting)
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
    report.seconds = time.monotonic() - started
    return report


async def _poll(client: ApiClient, document_id: uuid.UUID) -> Document | None:
    try:
        return await client.document(document_id)
    except ApiClientError as exc:
        if exc.status is not None and exc.status < 500 and exc.status != 429:
            raise
        return None  # a passing failure: ask again on the next round


def print_hits(result: SearchResult, console: Console) -> None:
    """The search result as a table a person reads."""
    if not result.hits:
        console.print("no matching chunks")
        return
    table = Table(show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("chunk", justify="right")
    table.add_column("text", overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        text = highlighted_excerpt(hit.content, [(h.start, h.end) for h in hit.highlights])
        heading = f"[bold]{hit.heading}[/]\n" if hit.heading else ""
        table.add_row(
            str(rank),
            f"{hit.score:.3f}",
            f"{hit.filename}\n[dim]{hit.document_id}[/]",
            str(hit.ordinal),
            heading + text,
        )
    console.print(table)


def highlighted_excerpt(content: str, spans: Sequence[tuple[int, int]], width: int = 300) -> str:
    """About `width` characters of `content` from a little before its first highlight, with
    the highlighted spans in bold (rich markup) and whitespace runs folded."""
    start = max(0, spans[0][0] - 60) if spans else 0
    end = min(len(content), start + width)
    pieces: list[str] = []
    position = start
    for span_start, span_end in spans:
        if span_end <= position or span_start >= end:
            continue
        pieces.append(escape(content[position:span_start]))
        pieces.append(f"[bold yellow]{escape(content[max(span_start, position) : span_end])}[/]")
        position = span_end
    pieces.append(escape(content[position:end]))
    text = " ".join("".join(pieces).split())
    return ("..." if start > 0 else "") + text + ("..." if end < len(content) else "")
