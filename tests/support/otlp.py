"""A small OpenTelemetry collector for tests and benchmarks: an OTLP/HTTP receiver on 127.0.0.1
that accepts `POST /v1/traces`, decodes the `ExportTraceServiceRequest` protobuf (as a collector
does, with opentelemetry-proto) and keeps the spans, flattened, for assertions."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# opentelemetry.proto.trace.v1.Span.SpanKind and Status.StatusCode, by name.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUSES = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids in lower-case hex, parent None for a root."""

    service: str
    resource: dict[str, Any]
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    status: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which) if which is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one `ExportTraceServiceRequest`."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        resource=resource,
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        status=STATUSES.get(span.status.code, str(span.status.code)),
                        attributes=_attributes(span.attributes),
                        links=tuple(
                            (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                        ),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    """The spans received so far, and how many export requests brought them."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    refused: list[str] = field(default_factory=list)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """The spans received, by trace id."""
        found: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans:
            found.setdefault(span.trace_id, []).append(span)
        return found

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    async def wait_for(
        self, check: Callable[[list[ReceivedSpan]], bool], timeout_s: float, what: str
    ) -> None:
        """Wait until `check(spans)` holds (the exporters send in batches, in the background)."""
        deadline = time.monotonic() + timeout_s
        while not check(self.spans):
            if time.monotonic() > deadline:
                names = sorted({s.name for s in self.spans})
                raise AssertionError(f"{what}: not within {timeout_s}s; spans seen: {names}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def otlp_receiver(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[OtlpReceiver]:
    """Serve an OTLP/HTTP trace receiver until the block exits; its `url` is the base URL to set
    as OTEL_EXPORTER_OTLP_ENDPOINT (the exporters add /v1/traces)."""
    receiver = OtlpReceiver()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if request.content_type != "application/x-protobuf":
            receiver.refused.append(f"content type {request.content_type}")
            return web.Response(status=415)
        try:
            spans = decode(body)
        except Exception as exc:  # protobuf's DecodeError (its stubs are not installed)
            receiver.refused.append(f"undecodable: {type(exc).__name__}: {exc}")
            return web.Response(status=400)
        receiver.requests += 1
        receiver.spans.extend(spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        receiver.url = f"http://{bound_host}:{bound_port}"
        yield receiver
    finally:
        await runner.cleanup()
