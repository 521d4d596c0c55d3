"""`docpipe verify`: a post-deployment check of a running docpipe, with an exit code for CI/CD.

It walks what a user does, against the intake API and whatever workers serve its pipeline:
health and readiness, the refusals of authentication (no token, a bad token, a token without
the scope), then a probe document with unique content: uploaded, followed until processed,
found by a search, deleted. Each step is reported with pass, fail or skip and its time; the
probe is deleted even when a step after its upload fails.

Tokens: `--token` (or $DOCPIPE_API_TOKEN) with the read, write and search scopes; for the
wrong-scope case a token without the search scope (`--read-only-token`,
$DOCPIPE_VERIFY_READ_ONLY_TOKEN). With $DOCPIPE_API_JWT_SECRET (the API's HS256 secret) both are
minted here, short-lived, for the subject `docpipe-verify`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

import aiohttp

Outcome = Literal["pass", "fail", "skip"]
SUBJECT = "docpipe-verify"
TOKEN_TTL_S = 900.0
POLL_INTERVAL_S = 0.5
PROGRESS_EVERY_S = 5.0


class CheckFailedError(Exception):
    """A step's check did not hold; the message says what was expected and what came."""


@dataclass
class Step:
    name: str
    outcome: Outcome
    seconds: float
    detail: str


@dataclass
class VerifyReport:
    api_url: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.outcome != "fail" for s in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {"api_url": self.api_url, "ok": self.ok, "steps": [asdict(s) for s in self.steps]}

    def render(self) -> str:
        width = max((len(s.name) for s in self.steps), default=0)
        lines = [f"docpipe verify {self.api_url}"]
        for s in self.steps:
            lines.append(
                f"  {s.outcome.upper():<4}  {s.name:<{width}}  {s.seconds * 1000:>7.0f} ms  "
                f"{s.detail}"
            )
        passed = sum(s.outcome == "pass" for s in self.steps)
        failed = sum(s.outcome == "fail" for s in self.steps)
        skipped = sum(s.outcome == "skip" for s in self.steps)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped")
        return "\n".join(lines)


@dataclass(frozen=True)
class Tokens:
    full: str | None
    read_only: str | None
    minted: bool


def resolve_tokens(token: str | None, read_only_token: str | None) -> Tokens:
    """The tokens to verify with: given ones first, else minted from $DOCPIPE_API_JWT_SECRET."""
    token = token or os.environ.get("DOCPIPE_API_TOKEN") or None
    read_only = read_only_token or os.environ.get("DOCPIPE_VERIFY_READ_ONLY_TOKEN") or None
    secret = os.environ.get("DOCPIPE_API_JWT_SECRET")
    minted = False
    if secret and (token is None or read_only is None):
        from docpipe_api.auth import mint_token

        def mint(scopes: list[str]) -> str:
            return mint_token(
                secret,
                subject=SUBJECT,
                scopes=scopes,
                ttl_s=TOKEN_TTL_S,
                issuer=os.environ.get("DOCPIPE_API_JWT_ISSUER"),
                audience=os.environ.get("DOCPIPE_API_JWT_AUDIENCE"),
            )

        if token is None:
            token = mint(["read", "write", "search"])
        if read_only is None:
            read_only = mint(["read"])
        minted = True
    return Tokens(token, read_only, minted)


def _forged_token() -> str:
    """A well-formed HS256 token signed with a key the API cannot know."""
    import jwt

    now = int(time.time())
    claims = {"sub": SUBJECT, "scope": "read write search", "iat": now, "exp": now + 300}
    return jwt.encode(claims, secrets.token_urlsafe(48), algorithm="HS256")


class Verifier:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        tokens: Tokens,
        *,
        pipeline: str,
        timeout_s: float,
        progress: TextIO,
    ) -> None:
        self.session = session
        self.base = api_url.rstrip("/")
        self.tokens = tokens
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        self.progress = progress
        self.report = VerifyReport(self.base)
        self.probe_id: uuid.UUID | None = None
        marker = uuid.uuid4().hex
        self.probe_name = f"docpipe-verify-{marker[:12]}.md"
        # Unique words (the marker spelled out) so that the search has one right answer.
        self.probe_sentence = (
            f"The docpipe verification probe {marker} checks that uploads become searchable "
            f"chunks; its marker is {' '.join(marker[:16])}."
        )

    # -- plumbing ---------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json_body: Any = None,
        data: aiohttp.FormData | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with self.session.request(
                method, self.base + path, headers=headers, json=json_body, data=data
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CheckFailedError(
                f"{method} {path}: cannot reach the API ({exc or type(exc)})"
            ) from None
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body[:200].decode("utf-8", errors="replace")
        return status, parsed

    async def expect(
        self,
        method: str,
        path: str,
        expected: int | tuple[int, ...],
        *,
        token: str | None,
        json_body: Any = None,
        data: aiohttp.FormData | None = None,
    ) -> Any:
        status, body = await self.request(method, path, token=token, json_body=json_body, data=data)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if status not in allowed:
            message = body
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                message = body["error"].get("message")
            wanted = " or ".join(str(a) for a in allowed)
            raise CheckFailedError(f"{method} {path}: expected {wanted}, got {status} ({message})")
        return body

    async def step(self, name: str, check: Callable[[], Awaitable[str]]) -> bool:
        started = time.monotonic()
        try:
            detail = await check()
            outcome: Outcome = "pass"
        except CheckFailedError as exc:
            detail, outcome = str(exc), "fail"
        except Exception as exc:  # a verifier reports, it does not crash
            detail, outcome = f"{type(exc).__name__}: {exc}", "fail"
        self.report.steps.append(Step(name, outcome, time.monotonic() - started, detail))
        print(f"{outcome.upper():<4} {name}: {detail}", file=self.progress, flush=True)
        return outcome == "pass"

    def skip(self, name: str, why: str) -> None:
        self.report.steps.append(Step(name, "skip", 0.0, why))
        print(f"SKIP {name}: {why}", file=self.progress, flush=True)

    # -- the steps --------------------------------------------------------------------------

    async def health(self) -> str:
        await self.expect("GET", "/healthz", 200, token=None)
        return "GET /healthz 200"

    async def readiness(self) -> str:
        deadline = time.monotonic() + min(self.timeout_s, 60.0)
        while True:
            status, body = await self.request("GET", "/readyz", token=None)
            if status == 200:
                return "GET /readyz 200"
            if time.monotonic() > deadline:
                raise CheckFailedError(f"GET /readyz: expected 200, got {status} ({body})")
            await asyncio.sleep(1.0)

    async def no_token(self) -> str:
        await self.expect("GET", self._documents_path(), 401, token=None)
        return "no token: 401"

    async def bad_token(self) -> str:
        path = self._documents_path()
        await self.expect("GET", path, 401, token="not-a-token")
        await self.expect("GET", path, 401, token=_forged_token())
        return "malformed token: 401; token signed with another key: 401"

    async def wrong_scope(self) -> str:
        body = {"query": "probe", "top_k": 1}
        path = f"/v1/pipelines/{self.pipeline}/search"
        await self.expect("POST", path, 403, token=self.tokens.read_only, json_body=body)
        return "search with a token without the search scope: 403"

    async def upload(self) -> str:
        form = aiohttp.FormData()
        content = f"# docpipe verify\n\n{self.probe_sentence}\n".encode()
        form.add_field("file", content, filename=self.probe_name, content_type="text/markdown")
        body = await self.expect(
            "POST", self._documents_path(), (201, 200), token=self.tokens.full, data=form
        )
        try:
            self.probe_id = uuid.UUID(body["document"]["id"])
        except (KeyError, TypeError, ValueError):
            raise CheckFailedError(f"upload answered without a document id: {body}") from None
        return f"{self.probe_name} uploaded as document {self.probe_id} (job {body.get('job_id')})"

    async def processed(self) -> str:
        started = time.monotonic()
        last_report = started
        status = "?"
        while True:
            body = await self.expect(
                "GET", f"/v1/documents/{self.probe_id}", 200, token=self.tokens.full
            )
            status = body.get("status", "?")
            if status == "processed":
                return f"processed into {body.get('chunk_count')} chunk(s)"
            if status == "failed":
                raise CheckFailedError(f"processing failed: {body.get('error')}")
            now = time.monotonic()
            if now - started > self.timeout_s:
                raise CheckFailedError(
                    f"not processed within {self.timeout_s:g}s (still {status}): is a worker "
                    f"serving pipeline {self.pipeline!r}?"
                )
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                print(
                    f"     waiting for the probe: {status} after {now - started:.0f}s",
                    file=self.progress,
                    flush=True,
                )
            await asyncio.sleep(POLL_INTERVAL_S)

    async def search(self) -> str:
        body = await self.expect(
            "POST",
            f"/v1/pipelines/{self.pipeline}/search",
            200,
            token=self.tokens.full,
            json_body={"query": self.probe_sentence, "top_k": 5},
        )
        hits = body.get("hits", [])
        ranks = [i for i, h in enumerate(hits) if h.get("document_id") == str(self.probe_id)]
        if not ranks:
            raise CheckFailedError(
                f"the probe is not among the {len(hits)} hits of its own sentence"
            )
        return f"the probe is hit {ranks[0] + 1} of {len(hits)} for its own sentence"

    async def delete(self) -> str:
        path = f"/v1/documents/{self.probe_id}"
        await self.expect("DELETE", path, 204, token=self.tokens.full)
        await self.expect("GET", path, 404, token=self.tokens.full)
        self.probe_id = None
        return "deleted; GET answers 404"

    def _documents_path(self) -> str:
        return f"/v1/pipelines/{self.pipeline}/documents"

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> VerifyReport:
        if not await self.step("health", self.health):
            return self.report  # nothing else can pass
        await self.step("readiness", self.readiness)
        await self.step("auth: no token", self.no_token)
        await self.step("auth: bad token", self.bad_token)
        if self.tokens.read_only:
            await self.step("auth: wrong scope", self.wrong_scope)
        else:
            self.skip(
                "auth: wrong scope",
                "no token without the search scope (--read-only-token, "
                "$DOCPIPE_VERIFY_READ_ONLY_TOKEN or $DOCPIPE_API_JWT_SECRET)",
            )
        if not self.tokens.full:
            for name in ("upload", "processed", "search", "delete"):
                self.skip(name, "no token (--token, $DOCPIPE_API_TOKEN or $DOCPIPE_API_JWT_SECRET)")
            self.report.steps.append(
                Step("probe document", "fail", 0.0, "no token to upload the probe with")
            )
            return self.report
        try:
            if await self.step("upload", self.upload) and await self.step(
                "processed", self.processed
            ):
                await self.step("search", self.search)
            if self.probe_id is not None:
                await self.step("delete", self.delete)
        finally:
            if self.probe_id is not None:  # interrupted: still leave nothing behind
                await self.request(
                    "DELETE", f"/v1/documents/{self.probe_id}", token=self.tokens.full
                )
        return self.report


async def verify(
    api_url: str,
    tokens: Tokens,
    *,
    pipeline: str,
    timeout_s: float,
    progress: TextIO = sys.stderr,
) -> VerifyReport:
    """Check the docpipe API at `api_url` and the workers behind it; see the module docstring."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        verifier = Verifier(
            session, api_url, tokens, pipeline=pipeline, timeout_s=timeout_s, progress=progress
        )
        return await verifier.run()
