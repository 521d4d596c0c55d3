"""A LlamaParse-compatible parsing API. What it extracts is the extractor's it is given: `docpipe
mocks` gives it docpipe's own (real text from PDF, DOCX, HTML...); alone it reads text files only.
The mocks import nothing of docpipe, so the extractor comes in as a function.

With quotas (`docpipe_mocks.quotas`, installed by the server), each API key may upload at most N
documents in any W seconds; an upload over that is answered 429 with `retry-after`. A finished
job reports its pages as the real API does, in `job_metadata.job_pages`: the extractor's pages
(form feeds) if it marks them, else a PDF's pages, else 1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from docpipe_mocks import output_faults
from docpipe_mocks.output_faults import OutputFault, OutputFaultError
from docpipe_mocks.quotas import QuotaState, bearer_key, retry_after_headers

PATH_PREFIX = "/api/parsing/"

# Turns an uploaded file's bytes (and its filename and content type, if given) into markdown; an
# exception ends the parsing job in ERROR with the exception's message, as the real service does
# for a file it cannot read.
Extractor = Callable[[bytes, str, "str | None"], str]

_log = logging.getLogger(__name__)


class LlamaParseSettings(BaseModel):
    """Behaviour and credentials of the mock parsing API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: str | None = None
    # Status polls answered PENDING before a finished job reports its outcome, so that clients
    # exercise their polling loop.
    pending_polls: int = Field(default=1, ge=0, le=1000)
    # Jobs kept for polling; the oldest are forgotten first.
    max_jobs: int = Field(default=10_000, ge=1)


@dataclass(frozen=True, slots=True)
class _Outcome:
    markdown: str | None = None
    error: str | None = None
    pages: int = 0


@dataclass(slots=True)
class _Job:
    id: str
    extraction: asyncio.Task[_Outcome]
    polls: int = 0


@dataclass(slots=True)
class JobStore:
    """The parsing jobs of one mock server, oldest first."""

    max_jobs: int
    jobs: OrderedDict[str, _Job] = field(default_factory=OrderedDict)

    def add(self, job: _Job) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > self.max_jobs:
            _, evicted = self.jobs.popitem(last=False)
            evicted.extraction.cancel()

    async def close(self) -> None:
        for job in self.jobs.values():
            job.extraction.cancel()
        for job in self.jobs.values():
            with contextlib.suppress(asyncio.CancelledError):
                await job.extraction
        self.jobs.clear()


SETTINGS = web.AppKey("llamaparse_settings", LlamaParseSettings)
EXTRACTOR: web.AppKey[Extractor] = web.AppKey("llamaparse_extractor")
JOBS = web.AppKey("llamaparse_jobs", JobStore)
QUOTAS = web.AppKey("llamaparse_quotas", QuotaState)
ROUTES = web.RouteTableDef()


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return an error in LlamaParse's (FastAPI's) shape: `{"detail": message}`."""
    return web.json_response({"detail": message}, status=status, headers=headers)


class UnreadableUploadError(ValueError):
    """The default extractor cannot read this file."""


def read_text(data: bytes, filename: str, content_type: str | None) -> str:
    """The extractor used when none is given: UTF-8 text as it is; anything else is refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableUploadError(
            f"cannot parse {filename!r} ({content_type or 'no content type'}): this mock reads"
            " UTF-8 text only unless it is started with an extractor (`docpipe mocks` is)"
        ) from None
    if not text.strip():
        raise UnreadableUploadError(f"no text could be extracted from {filename!r}")
    return text


# A page object of an uncompressed PDF; `/Pages` (the page tree's nodes) is not one.
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def _pdf_pages(data: bytes) -> int:
    try:
        from pypdf import PdfReader
    except ImportError:  # the mocks without docpipe's parsers
        return len(_PDF_PAGE.findall(data))
    try:
        return len(PdfReader(io.BytesIO(data)).pages)
    except Exception:
        return len(_PDF_PAGE.findall(data))


def count_pages(data: bytes, filename: str, content_type: str | None, markdown: str) -> int:
    """The pages of a parsed document: the extractor's form feeds, else a PDF's pages, else 1."""
    body = markdown.strip("\f")
    if "\f" in body:
        return body.count("\f") + 1
    is_pdf = (
        data.startswith(b"%PDF")
        or content_type == "application/pdf"
        or filename.lower().endswith(".pdf")
    )
    return max(1, _pdf_pages(data)) if is_pdf else 1


def _extract_and_count(
    extract: Extractor, data: bytes, filename: str, content_type: str | None
) -> _Outcome:
    markdown = extract(data, filename, content_type)
    return _Outcome(markdown=markdown, pages=count_pages(data, filename, content_type, markdown))


async def _extract(
    extract: Extractor,
    data: bytes,
    filename: str,
    content_type: str | None,
    fault: OutputFault | None = None,
) -> _Outcome:
    try:
        outcome = await asyncio.to_thread(_extract_and_count, extract, data, filename, content_type)
    except Exception as exc:
        # Whatever the extractor raises ends the job, as the real service reports ERROR.
        _log.info("extraction of %r failed: %s", filename, exc)
        return _Outcome(error=str(exc) or f"internal error while parsing {filename!r}")
    if fault is None or outcome.markdown is None:
        return outcome
    # A successful job with spoiled markdown; the pages parsed (and billed) stay the document's.
    return _Outcome(
        markdown=output_faults.degrade_markdown(outcome.markdown, fault), pages=outcome.pages
    )


def _output_fault(request: web.Request) -> OutputFault | None:
    """The output fault the upload asks for (docpipe_mocks.output_faults), if any."""
    spec = output_faults.requested_spec(
        request.match_info.get(output_faults.PATH_PARAMETER),
        bearer_key(request.headers.get("Authorization")),
    )
    return None if spec is None else output_faults.parse_output_fault(spec, "llamaparse")


@ROUTES.post("/api/parsing/upload")
async def upload(request: web.Request) -> web.Response:
    """Accept a multipart `file` and start parsing it; answer with the PENDING job."""
    if not request.content_type.startswith("multipart/"):
        return error_response(400, "The request must be multipart/form-data with a 'file' field.")
    try:
        fault = _output_fault(request)
    except OutputFaultError as error:
        return error_response(400, str(error))
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        return error_response(400, "Field 'file' is required and must be a file.")
    data = upload.file.read()
    # aiohttp reports a part without a content type as application/octet-stream, which says nothing.
    content_type: str | None = upload.content_type
    if content_type == "application/octet-stream":
        content_type = None
    key = bearer_key(request.headers.get("Authorization"))
    quotas = request.app.get(QUOTAS)
    if quotas is not None:
        retry_after = quotas.admit_upload(key, time.monotonic(), time.time())
        if retry_after is not None:
            limits = quotas.config.llamaparse
            message = (
                f"Rate limit exceeded: at most {limits.uploads_per_window} uploads per "
                f"{limits.window_seconds} seconds. Please retry later."
            )
            return error_response(429, message, headers=retry_after_headers(retry_after))
    job = _Job(
        id=str(uuid.uuid4()),
        extraction=asyncio.create_task(
            _extract(request.app[EXTRACTOR], data, upload.filename, content_type, fault)
        ),
    )
    if quotas is not None:
        job.extraction.add_done_callback(_pages_recorder(quotas, key))
    request.app[JOBS].add(job)
    return web.json_response({"id": job.id, "status": "PENDING"})


def _pages_recorder(quotas: QuotaState, key: str) -> Callable[[asyncio.Task[_Outcome]], None]:
    def record(task: asyncio.Task[_Outcome]) -> None:
        if not task.cancelled() and task.result().markdown is not None:
            quotas.record_pages(key, task.result().pages)

    return record


def _job_metadata(outcome: _Outcome) -> dict[str, int]:
    return {"job_pages": outcome.pages}


def _find_job(request: web.Request) -> _Job | None:
    return request.app[JOBS].jobs.get(request.match_info["job_id"])


@ROUTES.get("/api/parsing/job/{job_id}")
async def job_status(request: web.Request) -> web.Response:
    """Report a job's status: PENDING, then SUCCESS, or ERROR with the extractor's message."""
    job = _find_job(request)
    if job is None:
        return error_response(404, "Job not found")
    job.polls += 1
    if not job.extraction.done() or job.polls <= request.app[SETTINGS].pending_polls:
        return web.json_response({"id": job.id, "status": "PENDING"})
    outcome = job.extraction.result()
    if outcome.error is not None:
        return web.json_response(
            {
                "id": job.id,
                "status": "ERROR",
                "error_code": "PARSING_ERROR",
                "error_message": outcome.error,
            }
        )
    return web.json_response(
        {"id": job.id, "status": "SUCCESS", "job_metadata": _job_metadata(outcome)}
    )


@ROUTES.get("/api/parsing/job/{job_id}/result/markdown")
async def job_markdown(request: web.Request) -> web.Response:
    """Return a successful job's markdown."""
    job = _find_job(request)
    if job is None:
        return error_response(404, "Job not found")
    if not job.extraction.done():
        return error_response(400, f"Job {job.id} is still PENDING; its result is not ready.")
    outcome = job.extraction.result()
    if outcome.markdown is None:
        return error_response(400, f"Job {job.id} ended in ERROR and has no result.")
    return web.json_response({"markdown": outcome.markdown, "job_metadata": _job_metadata(outcome)})


def install(
    app: web.Application,
    settings: LlamaParseSettings,
    extract: Extractor = read_text,
    quotas: QuotaState | None = None,
) -> None:
    """Add the parsing endpoints to `app`, configured by `settings`, extracting with `extract`,
    limited by `quotas`."""
    app[SETTINGS] = settings
    if quotas is not None:
        app[QUOTAS] = quotas
    app[EXTRACTOR] = extract
    app[JOBS] = JobStore(max_jobs=settings.max_jobs)

    async def close_jobs(app: web.Application) -> None:
        await app[JOBS].close()

    app.on_cleanup.append(close_jobs)
    app.add_routes(ROUTES)
    # The same endpoints under /_faults/<fault>/: uploads there finish with that output fault.
    for route in ROUTES:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, output_faults.routed_path(route.path), route.handler)
