"""Output faults of the mocks, the pure part: which fault a request names, and what each does to
an answer (docpipe_mocks.output_faults)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_mocks.embedding import embed_array
from docpipe_mocks.output_faults import (
    OutputFault,
    OutputFaultError,
    answered_dimensions,
    degrade_markdown,
    degrade_vector,
    parse_output_fault,
    requested_spec,
    routed_path,
    service_path,
)


def test_a_fault_in_the_url_wins_over_one_in_the_api_key() -> None:
    assert requested_spec("zero", "fault:nan") == "zero"
    assert requested_spec(None, "fault:other_model=3") == "other_model=3"
    assert requested_spec(None, "sk-ordinary") is None
    assert requested_spec(None, None) is None


def test_a_faulted_path_is_the_service_path_behind_the_prefix() -> None:
    assert service_path("/_faults/truncate=0.5/api/parsing/upload") == "/api/parsing/upload"
    assert service_path("/v1/embeddings") == "/v1/embeddings"
    assert routed_path("/v1/embeddings") == "/_faults/{output_fault}/v1/embeddings"


@pytest.mark.parametrize(
    ("spec", "service", "fault"),
    [
        ("truncate", "llamaparse", OutputFault("truncate")),
        ("truncate=0.5", "llamaparse", OutputFault("truncate", 0.5)),
        ("empty", "llamaparse", OutputFault("empty")),
        ("zero", "openai", OutputFault("zero")),
        ("wrong_dimensions=7", "openai", OutputFault("wrong_dimensions", 7)),
        ("other_model=2", "openai", OutputFault("other_model", 2)),
        ("nan", "openai", OutputFault("nan")),
    ],
)
def test_each_fault_is_named_with_its_optional_argument(
    spec: str, service: str, fault: OutputFault
) -> None:
    assert parse_output_fault(spec, service) == fault  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "service", "message"),
    [
        ("shred", "openai", r"unknown output fault 'shred'; the OpenAI mock's are zero, "),
        ("zero", "llamaparse", r"'zero' is a fault of the OpenAI mock; the LlamaParse mock's"),
        ("truncate=0", "llamaparse", r"fraction kept must be in \(0, 1\], got 0"),
        ("truncate=lots", "llamaparse", r"'lots' is not a number"),
        ("zero=1", "openai", r"'zero' takes no argument"),
        ("wrong_dimensions=1.5", "openai", r"expected a whole number"),
        ("wrong_dimensions=0", "openai", r"at least 1 dimension"),
    ],
)
def test_a_fault_that_cannot_apply_is_refused_with_the_reason(
    spec: str, service: str, message: str
) -> None:
    with pytest.raises(OutputFaultError, match=message):
        parse_output_fault(spec, service)  # type: ignore[arg-type]


@given(st.lists(st.text(alphabet=st.characters(exclude_characters="\f")), min_size=1, max_size=5))
def test_truncating_keeps_the_start_of_each_page(pages: list[str]) -> None:
    markdown = "\f".join(pages)

    spoiled = degrade_markdown(markdown, OutputFault("truncate", 0.3)).split("\f")

    assert len(spoiled) == len(pages)
    for page, kept in zip(pages, spoiled, strict=True):
        assert page.startswith(kept)
        assert len(kept) == math.ceil(len(page) * 0.3)


def test_truncating_by_default_keeps_30_percent_and_empty_keeps_nothing() -> None:
    assert degrade_markdown("x" * 100, OutputFault("truncate")) == "x" * 30
    assert degrade_markdown("# Title\n\ntext", OutputFault("empty")) == ""


def test_wrong_dimensions_answer_other_than_asked() -> None:
    assert answered_dimensions(OutputFault("wrong_dimensions"), 512) == 256
    assert answered_dimensions(OutputFault("wrong_dimensions"), 1) == 2
    assert answered_dimensions(OutputFault("wrong_dimensions", 300), 512) == 300
    assert answered_dimensions(OutputFault("zero"), 512) == 512
    assert answered_dimensions(None, 512) == 512


def test_zero_and_nan_spoil_every_vector() -> None:
    vector = embed_array("harbour seals on sandbanks", 64)

    assert not degrade_vector(vector, OutputFault("zero")).any()
    assert math.isnan(degrade_vector(vector, OutputFault("nan"))[0])
    assert not math.isnan(vector[0]), "the original is left as it was"


TEXTS = [
    "Harbour seals rest on sandbanks at low tide and hunt flatfish.",
    "Seals on the sandbanks hunt flatfish when the tide returns.",
    "The compiler rejects the template because the linker flags are missing.",
]


def test_another_model_keeps_lengths_and_similarities_but_not_the_vectors() -> None:
    fault = OutputFault("other_model", 5)
    right = [embed_array(text, 256) for text in TEXTS]
    other = [degrade_vector(v, fault) for v in right]

    for r, o in zip(right, other, strict=True):
        assert float(np.linalg.norm(o)) == pytest.approx(1.0)
        assert abs(float(r @ o)) < 0.3, "unrelated to the right vector of the same text"
    assert float(other[0] @ other[1]) == pytest.approx(float(right[0] @ right[1]))
    assert float(other[0] @ other[1]) > float(other[0] @ other[2])
    assert not np.allclose(degrade_vector(right[0], OutputFault("other_model", 6)), other[0])
