"""The pure parts of output quality (issue 18): vector norms and degenerate vectors, and the
digest of the settings that produced a chunk."""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from docpipe_contracts.configuration import load_settings
from docpipe_ingest.metrics import expose_output
from docpipe_ingest.output_quality import (
    ZERO_NORM,
    degenerate_kind,
    is_empty_text,
    measure_vectors,
    vector_norm,
)
from docpipe_ingest.provenance import OutputSettings, canonical_json, endpoint, settings_digest
from docpipe_ingest.runner import output_settings
from docpipe_ingest.settings import WorkerSettings

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=64))
def test_the_norm_is_the_square_root_of_the_sum_of_squares(vector: list[float]) -> None:
    assert vector_norm(vector) == pytest.approx(math.sqrt(math.fsum(x * x for x in vector)))


@given(st.lists(finite, min_size=1, max_size=64), st.floats(min_value=0.01, max_value=100))
def test_scaling_a_vector_scales_its_norm(vector: list[float], factor: float) -> None:
    assert vector_norm([x * factor for x in vector]) == pytest.approx(
        vector_norm(vector) * factor, rel=1e-9, abs=1e-12
    )


def test_a_vector_of_zeros_is_degenerate_as_zero() -> None:
    assert degenerate_kind(vector_norm([0.0] * 8)) == "zero"
    assert degenerate_kind(ZERO_NORM / 2) == "zero"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_vector_with_a_non_finite_component_is_degenerate_as_non_finite(bad: float) -> None:
    assert degenerate_kind(vector_norm([0.5, bad, 0.5])) == "non_finite"


@given(st.lists(finite, min_size=1, max_size=64).filter(lambda v: vector_norm(v) >= ZERO_NORM))
def test_a_vector_of_finite_components_with_a_length_is_usable(vector: list[float]) -> None:
    assert degenerate_kind(vector_norm(vector)) is None


def test_measuring_vectors_counts_each_kind_and_keeps_only_finite_norms() -> None:
    measure = measure_vectors([[0.6, 0.8], [0.0, 0.0], [math.nan, 1.0], [3.0, 4.0]])

    assert (measure.count, measure.zero, measure.non_finite) == (4, 1, 1)
    assert measure.norms == pytest.approx((1.0, 0.0, 5.0))
    assert measure.degenerate("zero") == 1
    assert measure.degenerate("non_finite") == 1


@pytest.mark.parametrize(("text", "empty"), [("", True), (" \n\t\f", True), (" a ", False)])
def test_text_of_whitespace_only_is_empty(text: str, empty: bool) -> None:
    assert is_empty_text(text) is empty


SETTINGS = OutputSettings(
    parser="local",
    chunk_max_chars=1500,
    chunk_overlap_chars=200,
    embedding_model="text-embedding-3-small",
    embedding_dimensions=512,
    embedding_endpoint="https://api.openai.com/v1",
)


def test_the_settings_digest_is_16_hex_characters_and_stable() -> None:
    digest = settings_digest(SETTINGS)

    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert settings_digest(replace(SETTINGS)) == digest


@pytest.mark.parametrize(
    "change",
    [
        {"parser": "llamaparse", "parser_endpoint": "https://api.cloud.llamaindex.ai"},
        {"chunk_max_chars": 1000},
        {"chunk_overlap_chars": 100},
        {"embedding_model": "text-embedding-3-large"},
        {"embedding_dimensions": 1536},
        {"embedding_endpoint": "http://mocks:8000/_faults/zero/v1"},
    ],
)
def test_each_setting_that_shapes_the_output_changes_the_digest(change: dict[str, object]) -> None:
    changed = replace(SETTINGS, **change)  # type: ignore[arg-type]

    assert settings_digest(changed) != settings_digest(SETTINGS)


def test_the_local_parser_ignores_an_endpoint_it_never_calls() -> None:
    with_endpoint = replace(SETTINGS, parser_endpoint="http://x")

    assert settings_digest(with_endpoint) == settings_digest(SETTINGS)


@pytest.mark.parametrize(
    "spelling",
    [
        "https://API.openai.com/v1/",
        "https://user:secret@api.openai.com/v1",
        "https://api.openai.com/v1?x=1#f",
        " https://api.openai.com/v1 ",
    ],
)
def test_endpoints_that_name_the_same_server_give_the_same_digest(spelling: str) -> None:
    same = replace(SETTINGS, embedding_endpoint=spelling)

    assert endpoint(spelling) == "https://api.openai.com/v1"
    assert settings_digest(same) == settings_digest(SETTINGS)


def test_the_canonical_json_never_holds_credentials() -> None:
    text = canonical_json(replace(SETTINGS, embedding_endpoint="https://u:pw@h/v1"))

    assert "pw" not in text
    assert '"v":1' in text


def test_a_worker_digests_its_own_settings_and_llamaparse_adds_its_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://mocks:8100/v1")
    local = load_settings(WorkerSettings)
    monkeypatch.setenv("DOCPIPE_PARSER", "llamaparse")
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", "k")
    monkeypatch.setenv("LLAMAPARSE_BASE_URL", "http://mocks:8100/_faults/truncate")
    parsing = load_settings(WorkerSettings)

    assert output_settings(local).parser_endpoint is None
    assert output_settings(local).embedding_endpoint == "http://mocks:8100/v1"
    assert output_settings(parsing).parser_endpoint == "http://mocks:8100/_faults/truncate"
    assert settings_digest(output_settings(local)) != settings_digest(output_settings(parsing))


def test_a_worker_shows_its_output_series_at_zero_before_any_document() -> None:
    revision = f"unit-{uuid.uuid4().hex[:8]}"
    labels = {"pipeline": "p", "revision": revision}

    expose_output("p", revision)

    assert REGISTRY.get_sample_value("docpipe_output_documents_total", labels) == 0.0
    assert REGISTRY.get_sample_value("docpipe_output_vector_norm_count", labels) == 0.0
    for kind in ("zero", "non_finite"):
        sample = REGISTRY.get_sample_value(
            "docpipe_output_degenerate_vectors_total", {**labels, "kind": kind}
        )
        assert sample == 0.0
