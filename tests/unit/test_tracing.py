"""The pure side of tracing: the W3C traceparent a job carries, when tracing is on, and which
resource attributes the environment leaves to docpipe's defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_contracts.tracing import (
    TraceParent,
    decide_tracing,
    format_traceparent,
    parse_traceparent,
    resource_defaults,
)

trace_ids = st.integers(min_value=1, max_value=2**128 - 1)
span_ids = st.integers(min_value=1, max_value=2**64 - 1)


@given(trace_ids, span_ids, st.booleans())
def test_a_formatted_traceparent_parses_back_to_its_fields(
    trace_id: int, span_id: int, sampled: bool
) -> None:
    parent = TraceParent(trace_id, span_id, sampled)
    text = format_traceparent(parent)
    assert len(text) == 55
    assert parse_traceparent(text) == parent


def test_the_w3c_example_parses() -> None:
    parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert parsed == TraceParent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True)


def test_only_the_sampled_bit_of_the_flags_counts() -> None:
    parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")
    assert parsed is not None
    assert not parsed.sampled


def test_a_later_version_may_carry_more_fields() -> None:
    value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
    assert parse_traceparent(value) is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # extra field on 00
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


@given(st.text(max_size=80))
def test_parsing_never_raises(value: str) -> None:
    parsed = parse_traceparent(value)
    assert parsed is None or (parsed.trace_id > 0 and parsed.span_id > 0)


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "docpipe"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(
    environ: dict[str, str], enabled: bool
) -> None:
    assert decide_tracing(environ).enabled is enabled


def test_a_protocol_other_than_http_protobuf_is_warned_about() -> None:
    decision = decide_tracing(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert decision.enabled
    assert len(decision.warnings) == 1
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in decision.warnings[0]
    assert not decide_tracing(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    ).warnings


def test_the_environment_keeps_the_resource_attributes_it_sets() -> None:
    defaults = {"service.name": "docpipe-worker", "docpipe.pipeline": "docs", "a b": "1"}
    assert resource_defaults(defaults, {}) == defaults
    assert resource_defaults(defaults, {"OTEL_SERVICE_NAME": "ingest"}) == {
        "docpipe.pipeline": "docs",
        "a b": "1",
    }
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=x, docpipe.pipeline=y,a%20b=2,broken"}
    assert resource_defaults(defaults, environ) == {}
