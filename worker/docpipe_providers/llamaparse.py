"""A client of the LlamaParse API: upload a document (within the quota), poll its job, fetch the
markdown."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TypeVar

import aiohttp
from pydantic import BaseModel

from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers import usage
from docpipe_providers.external_requests import request_model
from docpipe_providers.quota_calls import QuotaGate

SERVICE = "llamaparse"
_JOB_ID = re.compile(r"/job/[^/]+")
DEFAULT_BASE_URL = "https://api.cloud.llamaindex.ai"

_ModelT = TypeVar("_ModelT", bound=BaseModel)

_SUCCEEDED = frozenset({"SUCCESS", "PARTIAL_SUCCESS"})
# The real API spells it CANCELLED; docpipe's protocol notes and older docs say CANCELED.
_FAILED = frozenset({"ERROR", "CANCELED", "CANCELLED"})


LLAMAPARSE_DEFAULT_URL = "https://api.cloud.llamaindex.ai"


class EmptyParseError(PermanentError):
    """The parse succeeded with no text (an empty document, or a parser that lost it)."""


class _JobMetadata(BaseModel):
    job_pages: int | None = None


class _Job(BaseModel):
    id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None
    job_metadata: _JobMetadata | None = None


class _Markdown(BaseModel):
    markdown: str
    job_metadata: _JobMetadata | None = None


class _Deadline:
    """When a parse must be done by (loop time), moved later by time spent waiting for quota."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def extend(self, seconds: float) -> None:
        self.at += seconds


def _pages(*answers: _Job | _Markdown) -> int | None:
    for answer in answers:
        if answer.job_metadata is not None and answer.job_metadata.job_pages is not None:
            return answer.job_metadata.job_pages
    return None


class LlamaParseClient:
    """Turns a document into markdown with LlamaParse (or `docpipe mocks`) over a shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        poll_interval: float = 1.0,
        timeout: float = 600.0,
        request_timeout: float = 60.0,
        quota: QuotaGate | None = None,
    ) -> None:
        """`timeout` bounds a whole parse (upload, polls, download), `request_timeout` each call.

        With a `quota`, each upload first waits for its budget (1 request), and a 429 on any call
        waits and is sent again instead of raising (see `quota_calls`); time spent waiting for
        quota does not count against `timeout`."""
        for name, value in (
            ("poll_interval", poll_interval),
            ("timeout", timeout),
            ("request_timeout", request_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._request_timeout = request_timeout
        self._quota = quota

    async def parse(self, data: bytes, *, filename: str, content_type: str) -> str:
        """Upload `data`, wait for its job to succeed and return the document as markdown."""
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop.time() + self._timeout)

        def form() -> aiohttp.FormData:
            # A new body for every send: a 429 sends the upload again.
            fields = aiohttp.FormData()
            fields.add_field("file", data, filename=filename, content_type=content_type)
            return fields

        job = await self._call(
            "POST", "/api/parsing/upload", _Job, deadline, form=form, budgeted=True
        )
        while job.status not in _SUCCEEDED:
            if job.status in _FAILED:
                reason = job.error_message or job.error_code or "no reason given"
                raise PermanentError(
                    f"{SERVICE}: parsing {filename!r} ended {job.status} (job {job.id}): {reason}"
                )
            still_pending = TransientError(
                f"{SERVICE}: job {job.id} for {filename!r} still {job.status} "
                f"after the {self._timeout:g}s timeout"
            )
            if deadline.at - loop.time() <= self._poll_interval:
                raise still_pending
            await asyncio.sleep(self._poll_interval)
            try:
                job = await self._call("GET", f"/api/parsing/job/{job.id}", _Job, deadline)
            except TransientError as exc:
                # A poll cut short by the parse's deadline: say what the job was doing.
                if loop.time() >= deadline.at - 0.01:  # timers may fire a tick early
                    raise still_pending from exc
                raise

        result = await self._call(
            "GET", f"/api/parsing/job/{job.id}/result/markdown", _Markdown, deadline
        )
        pages = _pages(result, job)
        if pages is not None:
            usage.record_pages(pages)
        if not result.markdown.strip():
            raise EmptyParseError(f"{SERVICE}: no text found in {filename!r} (job {job.id})")
        return result.markdown

    async def _call(
        self,
        method: str,
        path: str,
        response_model: type[_ModelT],
        deadline: _Deadline,
        *,
        form: Callable[[], aiohttp.FormData] | None = None,
        budgeted: bool = False,
    ) -> _ModelT:
        """One call; `budgeted` ones (uploads) spend a request of the quota, and all of them
        ride out 429s when there is a quota."""
        quota = self._quota
        step = "upload" if form is not None else "result" if path.endswith("/markdown") else "poll"

        async def send() -> _ModelT:
            # Each call gets its own timeout, cut short so that the whole parse keeps its
            # deadline.
            remaining = deadline.at - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TransientError(f"{SERVICE}: parsing took longer than {self._timeout:g}s")
            return await request_model(
                self._session,
                method,
                self._base_url + path,
                response_model,
                service=SERVICE,
                request_timeout=min(self._request_timeout, remaining),
                headers=self._headers,
                data=form() if form is not None else None,
                headers_seen=quota.observe if quota is not None else None,
                span_attributes={"docpipe.llamaparse.step": step},
                # One span name for every job's calls: the job id is a placeholder in it.
                route=_JOB_ID.sub("/job/{job_id}", path),
            )

        if quota is None:
            return await send()
        return await quota.call(send, requests=1 if budgeted else 0, waited=deadline.extend)
