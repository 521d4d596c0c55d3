"""Distributed tracing with OpenTelemetry: one trace from an upload through its queued job, the
worker's stages and each provider call, and one per search.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true: then `configure`
installs a TracerProvider whose BatchSpanProcessor sends spans over OTLP/HTTP (protobuf). The
SDK itself reads the other standard variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`...). Off, `span` is a shared
no-op, nothing is exported and no thread starts.

The trace context crosses the queue as a W3C `traceparent` string stored with the job
(`parse_traceparent`, `format_traceparent`: pure). The OpenTelemetry packages belong to the worker's
and the API's images only: imported here when present, so that the operator and the mocks, which
import this package for its other contracts, start without them.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

try:
    from opentelemetry import trace
    from opentelemetry.context import Context as Context
    from opentelemetry.context import get_current
except ImportError:  # the operator's and the mocks' images: tracing stays off
    _API = False
else:
    _API = True

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# The only protocol the exporter installed with docpipe speaks.
PROTOCOL = "http/protobuf"

Kind = Literal["internal", "server", "client", "consumer", "producer"]
AttributeValue = str | bool | int | float | Sequence[str]


# -- pure: the W3C traceparent and the configuration ------------------------------------------


class TraceParent(NamedTuple):
    """The fields of a W3C `traceparent`: ids as integers, and whether the caller samples."""

    trace_id: int
    span_id: int
    sampled: bool


# version-traceid-parentid-flags, lower-case hex (https://www.w3.org/TR/trace-context/).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The fields of a valid `traceparent` header value, else None (then a new trace starts).

    Version 00 has exactly four fields; a later version may add fields after them; version ff,
    an all-zero trace id or an all-zero parent id is invalid.
    """
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags_hex, 16) & 0x01))


def format_traceparent(parent: TraceParent) -> str:
    """The version-00 `traceparent` value of `parent`."""
    flags = "01" if parent.sampled else "00"
    return f"00-{parent.trace_id:032x}-{parent.span_id:016x}-{flags}"


@dataclass(frozen=True, slots=True)
class TracingDecision:
    """Whether to trace, and what to warn about the configuration when it is on."""

    enabled: bool
    warnings: tuple[str, ...] = ()


def decide_tracing(environ: Mapping[str, str]) -> TracingDecision:
    """On when an OTLP endpoint is set, unless `OTEL_SDK_DISABLED=true` or
    `OTEL_TRACES_EXPORTER=none`; a protocol other than http/protobuf is warned about."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingDecision(False)
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return TracingDecision(False)
    if not any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return TracingDecision(False)
    warnings = []
    for name in PROTOCOL_VARIABLES:
        protocol = environ.get(name, "").strip()
        if protocol and protocol != PROTOCOL:
            warnings.append(
                f"{name}={protocol} is not supported: docpipe exports spans with {PROTOCOL} "
                "(OTLP/HTTP, port 4318 on a collector)"
            )
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter != "otlp":
        warnings.append(f"OTEL_TRACES_EXPORTER={exporter} is not supported: exporting with otlp")
    return TracingDecision(True, tuple(warnings))


def resource_defaults(defaults: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The resource attributes of `defaults` that the environment does not set itself:
    `OTEL_RESOURCE_ATTRIBUTES` (key=value,...) and, for `service.name`, `OTEL_SERVICE_NAME`."""
    given = set()
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, equals, _ = item.partition("=")
        if equals:
            given.add(urllib.parse.unquote(key.strip()))
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        given.add("service.name")
    return {key: value for key, value in defaults.items() if key not in given}


# -- the shell: the provider, spans and the current context -----------------------------------


class Span(Protocol):
    """What the instrumented code does with a span (an OpenTelemetry span, or the no-op one)."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def is_recording(self) -> bool: ...


class _NoSpan:
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def is_recording(self) -> bool:
        return False


_NO_SPAN = _NoSpan()
# The tracer while tracing is configured; None means off.
_tracer: trace.Tracer | None = None


@dataclass
class Tracing:
    """What `configure` installed: `shutdown()` flushes the spans still queued and stops."""

    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        global _tracer
        if self.provider is None:
            return
        _tracer = None
        provider, self.provider = self.provider, None
        # Exports what the batch processor still holds (bounded by OTEL_BSP_EXPORT_TIMEOUT).
        provider.shutdown()


def configure(service_name: str, *, attributes: Mapping[str, str] | None = None) -> Tracing:
    """Trace this process as `service_name` (unless OTEL_SERVICE_NAME names it) when the
    environment asks for it (`decide_tracing`); otherwise change nothing."""
    global _tracer
    decision = decide_tracing(os.environ)
    if not decision.enabled:
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as missing:
        log.warning(
            "an OTLP endpoint is set but the OpenTelemetry SDK and exporter are not installed "
            "(pip install 'docpipe[tracing]'): not tracing (%s)",
            missing,
        )
        return Tracing()

    for warning in decision.warnings:
        log.warning(warning)
    defaults = {"service.name": service_name, **(attributes or {})}
    provider = TracerProvider(resource=Resource.create(resource_defaults(defaults, os.environ)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # Global too, for any library instrumented with OpenTelemetry (set once per process).
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("docpipe")
    return Tracing(provider)


@contextmanager
def configured(service_name: str, *, attributes: Mapping[str, str] | None = None) -> Iterator[bool]:
    """`configure` for the block, then flush; yields whether tracing is on."""
    tracing = configure(service_name, attributes=attributes)
    try:
        yield tracing.enabled
    finally:
        tracing.shutdown()


def enabled() -> bool:
    """Whether spans are being recorded and exported."""
    return _tracer is not None


@contextmanager
def span(
    name: str,
    *,
    kind: Kind = "internal",
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: Context | None = None,
    links: Sequence[Context | None] = (),
) -> Iterator[Span]:
    """A span around the block, current within it; its parent is `parent` when given, else the
    current span; `links` point at spans it serves beside its parent. An exception leaving the
    block is recorded on it. A no-op when tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield _NO_SPAN
        return
    linked = [
        trace.Link(trace.get_current_span(context).get_span_context())
        for context in links
        if context is not None
    ]
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind[kind.upper()],
        attributes=dict(attributes) if attributes else None,
        links=[link for link in linked if link.context.is_valid] or None,
    ) as current:
        yield current


def record_http_status(current: Span, status: int) -> None:
    """The response status on a server span; a 5xx marks it failed (a 4xx is the client's)."""
    current.set_attribute("http.response.status_code", status)
    if status >= 500 and _tracer is not None and isinstance(current, trace.Span):
        current.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set attributes on the current span (when tracing), from code that does not hold it."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(dict(attributes))


def current_context() -> Context | None:
    """The current context, to parent or link spans started later in another task."""
    if _tracer is None:
        return None
    return get_current()


def context_from_traceparent(value: str | None) -> Context | None:
    """A context whose (remote) span is the one `value` names; None when off or invalid."""
    if _tracer is None:
        return None
    parent = parse_traceparent(value)
    if parent is None:
        return None
    remote = trace.SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(
            trace.TraceFlags.SAMPLED if parent.sampled else trace.TraceFlags.DEFAULT
        ),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def current_traceparent() -> str | None:
    """The `traceparent` of the current span, to store with a job; None when off or outside one."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format_traceparent(
        TraceParent(context.trace_id, context.span_id, context.trace_flags.sampled)
    )


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` to outgoing request headers (when tracing)."""
    value = current_traceparent()
    if value is not None:
        headers[TRACEPARENT] = value


def current_ids() -> tuple[str, str] | None:
    """The current trace id and span id in hex, for log lines; None when off or outside a span."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
