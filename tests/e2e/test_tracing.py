"""Distributed tracing across real processes: `docpipe api` and `docpipe worker` export to an
OTLP/HTTP receiver in the test (the protobuf decoded as a collector does). One trace runs from the
client's upload request through the queued job, the worker's stages and each provider call
(LlamaParse and the embeddings, both the mocks over HTTP); a search has a trace of its own; the
worker's log lines carry the trace id beside the correlation id."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from docpipe_contracts.tracing import TraceParent, format_traceparent
from docpipe_mocks.server import MockConfig
from tests.e2e.test_worker_process import readyz, spawn_worker, stop, wait_until
from tests.support.mocks import serve
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

SENTENCE = "Oystercatchers probe the mudflats for cockles when the tide goes out."
# The client's own span: the upload request continues its trace.
CLIENT = TraceParent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)
STAGES = ("load", "parse", "chunk", "embed", "store")


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with otlp_receiver() as found:
        yield found


def tracing_environment(receiver: OtlpReceiver) -> dict[str, str]:
    # Batches leave every 100 ms instead of every 5 s, so that the test waits less.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [span for span in spans if span.parent_span_id == parent.span_id]


async def token(env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docpipe_cli.main", "token", "--subject", "carol", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_one_trace_links_upload_job_stages_and_provider_calls_and_search_has_its_own(
    database_url: str, mocks: str, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    api_port, worker_port = free_port(), free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": f"{mocks}/v1",
        "DOCPIPE_API_DEV_MODE": "true",
        "DOCPIPE_API_HOST": "127.0.0.1",
        "DOCPIPE_API_PORT": str(api_port),
        "DOCPIPE_API_PIPELINES": "p",
        **tracing_environment(receiver),
    }
    env.pop("DOCPIPE_API_JWT_SECRET", None)
    with api_log.open("ab") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docpipe_cli.main", "api", env=env, stdout=log, stderr=log
        )
    worker = await spawn_worker(
        database_url, mocks, worker_port, worker_log,
        DOCPIPE_PARSER="llamaparse", LLAMAPARSE_BASE_URL=mocks, LLAMA_CLOUD_API_KEY="test-key",
        DOCPIPE_LLAMAPARSE_POLL_SECONDS="0.1", **tracing_environment(receiver),
    )  # fmt: skip
    try:

        async def api_ready() -> bool:
            assert api.returncode is None, api_log.read_text()
            return await readyz(api_port) == 200

        await wait_until(api_ready, 30, "the API is ready")
        headers = {"Authorization": f"Bearer {await token(env)}"}
        base = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession(headers=headers) as session:
            form = aiohttp.FormData()
            form.add_field(
                "file", f"# Shore birds\n\n{SENTENCE}\n".encode(),
                filename="shore.md", content_type="text/markdown",
            )  # fmt: skip
            async with session.post(
                f"{base}/v1/pipelines/p/documents",
                data=form,
                headers={"traceparent": format_traceparent(CLIENT), "X-Request-ID": "upload-1"},
            ) as response:
                assert response.status == 201, await response.text()
                document_id = (await response.json())["document"]["id"]

            async def processed() -> bool:
                assert worker.returncode is None, worker_log.read_text()
                async with session.get(f"{base}/v1/documents/{document_id}") as response:
                    return bool((await response.json())["status"] == "processed")

            await wait_until(processed, 60, "the document is processed")
            async with session.post(
                f"{base}/v1/pipelines/p/search", json={"query": SENTENCE, "mode": "hybrid"}
            ) as response:
                assert response.status == 200, await response.text()
                hits: list[dict[str, Any]] = (await response.json())["hits"]
        assert hits[0]["filename"] == "shore.md"

        trace_id = f"{CLIENT.trace_id:032x}"
        search_route = "POST /v1/pipelines/{pipeline}/search"

        def complete(spans: list[ReceivedSpan]) -> bool:
            names = {s.name for s in spans if s.trace_id == trace_id}
            searched = [s for s in spans if s.name == search_route]
            search_trace = {
                s.name for s in spans if searched and s.trace_id == searched[0].trace_id
            }
            return (
                {"ingest job", "stage store", "openai POST /v1/embeddings"} <= names
                and "sql hit rows" in search_trace
                and "openai POST /v1/embeddings" in search_trace
            )

        await receiver.wait_for(complete, 30, "the upload's and the search's spans")
    finally:
        await stop(worker)
        await stop(api)
    assert not receiver.refused

    # The upload: a server span of the API, child of the client's span (its traceparent).
    spans = receiver.traces()[trace_id]
    upload = only(spans, "POST /v1/pipelines/{pipeline}/documents")
    assert (upload.service, upload.kind) == ("docpipe-api", "server")
    assert upload.parent_span_id == f"{CLIENT.span_id:016x}"
    assert upload.attributes["http.response.status_code"] == 201
    assert upload.attributes["docpipe.correlation_id"] == "upload-1"
    assert only(spans, "sql add document").parent_span_id == upload.span_id

    # The job, in the worker, continues the upload's trace from the traceparent stored with it.
    job = only(spans, "ingest job")
    assert (job.service, job.kind, job.parent_span_id) == (
        "docpipe-worker",
        "consumer",
        upload.span_id,
    )
    assert job.attributes["docpipe.document.id"] == document_id
    assert job.resource["docpipe.pipeline"] == "p"
    stages = {s.attributes["docpipe.stage"]: s for s in children(spans, job)}
    assert set(STAGES) <= set(stages)

    # Each provider call is a client span under its stage.
    parse_calls = sorted(children(spans, stages["parse"]), key=lambda s: s.start_ns)
    names = [s.name for s in parse_calls]
    # Upload, polls while the mock parses (none when it is done at once), the result.
    assert names[0] == "llamaparse POST /api/parsing/upload"
    assert set(names[1:-1]) <= {"llamaparse GET /api/parsing/job/{job_id}"}
    assert names[-1] == "llamaparse GET /api/parsing/job/{job_id}/result/markdown"
    for call in parse_calls:
        assert call.kind == "client"
        assert call.attributes["docpipe.service"] == "llamaparse"
        assert call.attributes["http.response.status_code"] == 200
    assert (
        only(parse_calls, "llamaparse POST /api/parsing/upload").attributes[
            "docpipe.llamaparse.step"
        ]
        == "upload"
    )
    (shared,) = children(spans, stages["embed"])
    assert shared.name == "embeddings shared request"
    assert (f"{trace_id}", stages["embed"].span_id) in shared.links
    (embedding,) = children(spans, shared)
    assert embedding.name == "openai POST /v1/embeddings"
    assert embedding.kind == "client"
    assert embedding.attributes["gen_ai.request.model"] == "text-embedding-3-small"
    assert embedding.attributes["docpipe.embedding.inputs"] >= 1
    assert embedding.attributes["http.response.status_code"] == 200

    # The search: a trace of its own (no traceparent came with it), the query embedded and the
    # database asked under its server span.
    search = only(receiver.spans, search_route)
    assert search.trace_id != trace_id
    assert search.parent_span_id is None
    search_spans = receiver.traces()[search.trace_id]
    under_search = {s.name for s in children(search_spans, search)}
    assert {"search embed query", "sql vector ranking", "sql hit rows"} <= under_search
    assert "sql keyword ranking" in {s.name for s in search_spans}
    embed_query = only(search_spans, "search embed query")
    (query_request,) = children(search_spans, embed_query)
    (query_call,) = children(search_spans, query_request)
    assert query_call.name == "openai POST /v1/embeddings"

    # The worker's log lines of the job carry its trace id beside the correlation id.
    logged = [json.loads(line) for line in worker_log.read_text().splitlines() if "{" in line]
    done = [e for e in logged if e.get("msg") == "document processed"]
    assert len(done) == 1
    assert done[0]["trace_id"] == trace_id
    assert done[0]["correlation_id"] == "upload-1"
    assert done[0]["span_id"] == job.span_id
