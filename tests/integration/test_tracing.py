"""Tracing in one process, against a real OTLP/HTTP receiver (tests/support/otlp.py): spans are
exported with the service's resource, log lines carry the trace id, a job carries its
traceparent through the queue, and with no endpoint nothing is exported and no thread starts."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from docpipe_cli.logs import JsonFormatter
from docpipe_contracts import tracing
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.quota import LocalBudget, QuotaKey, QuotaLimits, hash_api_key
from docpipe_providers.quota_calls import QuotaGate
from docpipe_queue import jobs as queue
from docpipe_queue.documents import add_document
from tests.support.otlp import OtlpReceiver, otlp_receiver

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    assert not tracing.enabled(), "a test left tracing configured"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with otlp_receiver() as found:
        yield found


def exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


async def shut_down(handle: tracing.Tracing) -> None:
    # The exporter thread posts to the receiver, which answers on this event loop: wait for the
    # flush off the loop.
    await asyncio.to_thread(handle.shutdown)


async def test_spans_reach_the_receiver_with_parent_links_and_the_service_name(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    clean_environment.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    handle = tracing.configure("docpipe-test", attributes={"docpipe.revision": "r1"})
    try:
        assert handle.enabled
        with tracing.span("outer", kind="server"), tracing.span("inner", attributes={"n": 3}):
            pass
    finally:
        await shut_down(handle)
    (outer,) = receiver.named("outer")
    (inner,) = receiver.named("inner")
    assert inner.trace_id == outer.trace_id
    assert inner.parent_span_id == outer.span_id
    assert outer.parent_span_id is None
    assert (outer.kind, inner.kind) == ("server", "internal")
    assert inner.attributes == {"n": 3}
    assert outer.service == "docpipe-test"
    assert outer.resource["docpipe.revision"] == "r1"
    assert outer.resource["deployment.environment.name"] == "test"


async def test_otel_service_name_wins_over_the_default(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")
    clean_environment.setenv("OTEL_SERVICE_NAME", "ingest-eu")
    handle = tracing.configure("docpipe-worker")
    try:
        with tracing.span("work"):
            pass
    finally:
        await shut_down(handle)
    assert [s.service for s in receiver.named("work")] == ["ingest-eu"]


async def test_an_exception_marks_the_span_failed(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    handle = tracing.configure("docpipe-test")
    try:
        with pytest.raises(ValueError, match="boom"), tracing.span("failing"):
            raise ValueError("boom")
        with tracing.span("server") as span:
            tracing.record_http_status(span, 503)
    finally:
        await shut_down(handle)
    assert [s.status for s in receiver.named("failing")] == ["error"]
    (server,) = receiver.named("server")
    assert server.status == "error"
    assert server.attributes["http.response.status_code"] == 503


async def test_log_lines_carry_the_trace_and_span_ids_of_the_current_span(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    handle = tracing.configure("docpipe-test")
    record = logging.LogRecord("docpipe", logging.INFO, __file__, 1, "inside", None, None)
    try:
        outside = json.loads(JsonFormatter().format(record))
        with tracing.span("logged"):
            inside = json.loads(JsonFormatter().format(record))
    finally:
        await shut_down(handle)
    (span,) = receiver.named("logged")
    assert (inside["trace_id"], inside["span_id"]) == (span.trace_id, span.span_id)
    assert "trace_id" not in outside


async def test_a_job_carries_the_traceparent_of_the_span_that_queued_it(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver, pool: asyncpg.Pool
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    handle = tracing.configure("docpipe-test")
    try:
        with tracing.span("upload"):
            traceparent = tracing.current_traceparent()
            async with pool.acquire() as conn:
                await add_document(
                    conn, pipeline="p", owner="o", filename="a.md", content_type="text/markdown",
                    data=b"# A\n\ntext", trace_context=traceparent,
                )  # fmt: skip
        (claimed,) = await queue.claim(pool, "p", 1, lease_s=30, worker="w")
        with tracing.span("job", parent=tracing.context_from_traceparent(claimed.trace_context)):
            pass
    finally:
        await shut_down(handle)
    assert claimed.trace_context == traceparent
    (upload,) = receiver.named("upload")
    (job,) = receiver.named("job")
    assert (job.trace_id, job.parent_span_id) == (upload.trace_id, upload.span_id)


async def test_without_an_endpoint_nothing_is_exported_and_no_thread_starts(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    before = exporter_threads()
    handle = tracing.configure("docpipe-test")
    with tracing.span("untraced") as span:
        assert not span.is_recording()
        assert tracing.current_traceparent() is None
        assert tracing.current_ids() is None
        headers: dict[str, str] = {}
        tracing.inject(headers)
        assert headers == {}
    assert not handle.enabled
    assert not tracing.enabled()
    assert exporter_threads() == before
    handle.shutdown()


async def test_otel_sdk_disabled_turns_tracing_off_even_with_an_endpoint(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    clean_environment.setenv("OTEL_SDK_DISABLED", "true")
    before = exporter_threads()
    handle = tracing.configure("docpipe-test")
    with tracing.span("untraced"):
        pass
    await shut_down(handle)
    assert not handle.enabled
    assert exporter_threads() == before
    assert receiver.requests == 0


async def test_an_enabled_tracer_runs_one_exporter_thread_until_shutdown(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    before = len(exporter_threads())
    handle = tracing.configure("docpipe-test")
    started = len(exporter_threads())
    await shut_down(handle)
    assert started == before + 1
    assert len(exporter_threads()) == before


async def test_each_provider_request_is_a_client_span_whose_traceparent_the_service_receives(
    clean_environment: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    seen: list[str] = []

    async def embeddings(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        if len(seen) == 1:  # the first send is rate limited, the second answered
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"retry-after": "0"})  # fmt: skip
        body = await request.json()
        vector = [0.5] * 4
        return web.json_response(
            {"data": [{"index": i, "embedding": vector} for i in range(len(body["input"]))]}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    clean_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    handle = tracing.configure("docpipe-test")
    key = QuotaKey("openai", hash_api_key("sk-test"), "m")
    quota = QuotaGate(LocalBudget(QuotaLimits.unlimited()), key, pipeline="p", hold_s=0.2)
    try:
        async with aiohttp.ClientSession() as session:
            embedder = OpenAIEmbedder(
                session, api_key="sk-test", model="m", dimensions=4,
                base_url=f"http://{host}:{port}/v1", quota=quota, send_dimensions=False,
            )  # fmt: skip
            with tracing.span("stage embed"):
                assert len(await embedder.embed(["a", "b"])) == 2
    finally:
        await shut_down(handle)
        await runner.cleanup()
    (stage,) = receiver.named("stage embed")
    calls = sorted(receiver.named("openai POST /v1/embeddings"), key=lambda s: s.start_ns)
    assert [c.attributes["http.response.status_code"] for c in calls] == [429, 200]
    assert [c.attributes.get("http.request.resend_count") for c in calls] == [None, 1]
    assert [c.status for c in calls] == ["error", "unset"]
    for call, header in zip(calls, seen, strict=True):
        assert call.parent_span_id == stage.span_id
        assert call.kind == "client"
        assert call.attributes["gen_ai.request.model"] == "m"
        assert call.attributes["docpipe.embedding.inputs"] == 2
        assert call.attributes["url.full"] == f"http://{host}:{port}/v1/embeddings"
        # The service got the client span's own context: its spans would be this one's children.
        assert header == f"00-{call.trace_id}-{call.span_id}-01"
