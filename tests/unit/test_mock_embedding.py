from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_mocks.embedding import embed_text, stem, word_weight


def cosine(left: list[float], right: list[float]) -> float:
    return sum(a * b for a, b in zip(left, right, strict=True))


DIMENSIONS = 1536


@given(text=st.text(max_size=300), dimensions=st.integers(min_value=1, max_value=64))
def test_embed_text_returns_the_same_vector_for_the_same_text(text: str, dimensions: int) -> None:
    assert embed_text(text, dimensions) == embed_text(text, dimensions)


@given(text=st.text(max_size=300), dimensions=st.integers(min_value=1, max_value=2048))
def test_embed_text_returns_a_unit_vector_of_the_requested_dimensions(
    text: str, dimensions: int
) -> None:
    vector = embed_text(text, dimensions)

    assert len(vector) == dimensions
    assert math.fsum(component * component for component in vector) == pytest.approx(1.0)


def test_embed_text_gives_the_same_vector_in_a_process_with_another_hash_seed() -> None:
    # Python's hash() of a str changes between processes; the mock's vectors must not.
    code = (
        "import json; from docpipe_mocks.embedding import embed_text; "
        "print(json.dumps(embed_text('invoice total due in March', 64)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        check=True,
        text=True,
    ).stdout

    assert json.loads(output) == embed_text("invoice total due in March", 64)


def test_texts_sharing_words_are_closer_than_unrelated_texts() -> None:
    query = embed_text("how do I reset my router password", DIMENSIONS)
    similar = embed_text("To reset the router password, hold the reset button.", DIMENSIONS)
    unrelated = embed_text("The quarterly revenue grew by twelve percent in Europe.", DIMENSIONS)

    assert cosine(query, similar) > 0.3
    assert cosine(query, unrelated) < 0.1
    assert cosine(query, similar) > cosine(query, unrelated) + 0.3


def test_the_nearest_document_to_a_query_is_the_one_about_its_topic() -> None:
    documents = [
        "Photosynthesis converts light energy into chemical energy in plants.",
        "The central bank raised interest rates to curb inflation.",
        "Mitochondria are the powerhouse of the cell and produce ATP.",
        "The football match ended in a draw after extra time.",
    ]
    query = embed_text("interest rates and inflation policy of the central bank", DIMENSIONS)

    scores = [cosine(query, embed_text(document, DIMENSIONS)) for document in documents]

    assert scores.index(max(scores)) == 1


def test_embed_text_ignores_letter_case() -> None:
    assert embed_text("Hello World", DIMENSIONS) == embed_text("hello world", DIMENSIONS)


def test_word_order_changes_the_vector_but_keeps_it_close() -> None:
    forward = embed_text("dog bites man", DIMENSIONS)
    backward = embed_text("man bites dog", DIMENSIONS)

    assert forward != backward
    assert 0.5 < cosine(forward, backward) < 1.0


def test_text_without_words_gets_its_own_vector() -> None:
    assert embed_text("!!!", DIMENSIONS) != embed_text("???", DIMENSIONS)


def test_embed_text_refuses_zero_dimensions() -> None:
    with pytest.raises(ValueError, match="dimensions must be at least 1"):
        embed_text("hello", 0)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("draining", "drain"),
        ("drained", "drain"),
        ("workers", "worker"),
        ("libraries", "library"),
        ("configuration", "configur"),
        ("configured", "configur"),
        ("class", "class"),  # an "ss" ending is not a plural
        ("sigterm", "sigterm"),
        ("sources.list", "sources.list"),  # identifiers are kept as they are
    ],
)
def test_stem_strips_one_common_english_ending(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_inflections_of_the_same_words_embed_alike() -> None:
    assert (
        cosine(
            embed_text("the worker drains its jobs", DIMENSIONS),
            embed_text("Workers draining jobs", DIMENSIONS),
        )
        > 0.9
    )


def test_stop_words_do_not_make_unrelated_questions_alike() -> None:
    # Before stop words were dropped, the shared "how do I ... the ... of" made these close.
    first = embed_text("how do I change the size of the swap partition", DIMENSIONS)
    second = embed_text("how do I change the colour of the terminal prompt", DIMENSIONS)

    assert cosine(first, second) < 0.35


def test_a_shared_identifier_counts_more_than_shared_everyday_words() -> None:
    query = embed_text("where is the proxy set for apt in apt.conf", DIMENSIONS)
    names_the_identifier = embed_text("Acquire::http::Proxy goes into apt.conf", DIMENSIONS)
    shares_everyday_words = embed_text("Set the default value in the file where it is", DIMENSIONS)

    assert cosine(query, names_the_identifier) > cosine(query, shares_everyday_words) + 0.2


def test_the_readme_question_is_closest_to_the_paragraph_that_answers_it() -> None:
    query = embed_text("how does a worker drain on SIGTERM?", DIMENSIONS)
    answer = embed_text(
        "## Draining\n\nOn SIGTERM a worker stops claiming jobs, finishes the jobs it holds "
        "and exits; a job that outlives the grace period is released.",
        DIMENSIONS,
    )
    benchmark = embed_text(
        "The worker processed 4,000 jobs per second; p95 latency of claims was 3 ms.",
        DIMENSIONS,
    )

    assert cosine(query, answer) > 0.4
    assert cosine(query, answer) > 2 * cosine(query, benchmark)


def test_word_weight_ranks_identifiers_over_ordinary_and_everyday_words() -> None:
    assert word_weight("apt.conf") > word_weight("partition") > word_weight("file")
