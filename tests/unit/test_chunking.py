"""The markdown chunker: sections, boundaries, overlap, offsets, and its invariants."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docpipe_ingest.chunking import Chunk, chunk_markdown


def _sentences(count: int, start: int = 0) -> str:
    return " ".join(
        f"Sentence number {i:03d} talks about topic {i % 7}." for i in range(start, start + count)
    )


def _assert_exact_slices(text: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text


# --- basics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_empty_or_whitespace_text_gives_no_chunks(text: str) -> None:
    assert chunk_markdown(text) == []


def test_short_document_is_one_chunk_without_surrounding_whitespace() -> None:
    text = "\n\n  Hello world.\n\n"
    assert chunk_markdown(text) == [
        Chunk(ordinal=0, text="Hello world.", heading=None, char_start=4, char_end=16)
    ]


def test_chunk_text_is_the_input_slice_between_its_offsets() -> None:
    text = "# Title\n\n" + "\n\n".join(_sentences(6, i * 6) for i in range(6))
    chunks = chunk_markdown(text, max_chars=400, overlap_chars=80)
    assert len(chunks) > 3
    _assert_exact_slices(text, chunks)


# --- headings -----------------------------------------------------------------------------------


def test_heading_is_the_path_of_nested_headings() -> None:
    text = "# Install\n\nIntro.\n\n## Linux\n\nRun apt.\n\n### Debian\n\nUse apt-get."
    assert [c.heading for c in chunk_markdown(text)] == [
        "Install",
        "Install > Linux",
        "Install > Linux > Debian",
    ]


def test_a_heading_replaces_earlier_headings_of_its_level_and_deeper() -> None:
    text = "# Install\n\n## Linux\n\nA.\n\n### Debian\n\nB.\n\n## macOS\n\nC.\n\n# Use\n\nD."
    headings = [c.heading for c in chunk_markdown(text)]
    assert headings[-2:] == ["Install > macOS", "Use"]


def test_text_before_the_first_heading_has_no_heading() -> None:
    chunks = chunk_markdown("Preamble text.\n\n# Body\n\nBody text.")
    assert [(c.text, c.heading) for c in chunks] == [
        ("Preamble text.", None),
        ("# Body\n\nBody text.", "Body"),
    ]


def test_each_section_starts_a_new_chunk_even_when_sections_are_small() -> None:
    chunks = chunk_markdown("# A\n\nalpha\n\n# B\n\nbeta")
    assert [c.text for c in chunks] == ["# A\n\nalpha", "# B\n\nbeta"]


def test_a_heading_without_body_joins_the_next_section() -> None:
    text = "# Install\n\n## Linux\n\nRun apt."
    assert chunk_markdown(text) == [
        Chunk(0, text, "Install > Linux", 0, len(text)),
    ]


def test_a_final_heading_without_body_is_its_own_chunk() -> None:
    chunks = chunk_markdown("# A\n\nalpha\n\n# Appendix\n")
    assert [(c.text, c.heading) for c in chunks] == [
        ("# A\n\nalpha", "A"),
        ("# Appendix", "Appendix"),
    ]


def test_closing_hashes_and_extra_spaces_are_not_part_of_the_heading() -> None:
    assert chunk_markdown("##   Setup   ##\n\ntext")[0].heading == "Setup"


@pytest.mark.parametrize("line", ["#hashtag", "    # indented code", "####### seven"])
def test_lines_that_are_not_atx_headings_do_not_start_sections(line: str) -> None:
    chunks = chunk_markdown(f"# Real\n\n{line}\n\nmore text")
    assert [c.heading for c in chunks] == ["Real"]


def test_hash_lines_inside_a_code_fence_are_not_headings() -> None:
    text = "# Script\n\n```bash\n# install deps\npip install x\n```\n\nDone."
    assert [c.heading for c in chunk_markdown(text)] == ["Script"]


def test_an_unclosed_fence_runs_to_the_end_of_the_document() -> None:
    text = "# Script\n\n~~~\n# not a heading\n\n## nor this\n"
    assert [c.heading for c in chunk_markdown(text)] == ["Script"]


# --- boundaries ---------------------------------------------------------------------------------


def test_long_section_splits_between_paragraphs() -> None:
    paragraphs = [_sentences(6, i * 6) for i in range(8)]  # about 280 characters each
    text = "\n\n".join(paragraphs)
    chunks = chunk_markdown(text, max_chars=1000, overlap_chars=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert all(p in paragraphs for p in chunk.text.split("\n\n"))


def test_long_paragraph_splits_between_sentences() -> None:
    text = _sentences(40)
    chunks = chunk_markdown(text, max_chars=400, overlap_chars=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("Sentence number")
        assert chunk.text.endswith(".")


def test_a_long_list_splits_between_items() -> None:
    text = "\n".join(f"- item {i:02d} of the list, with a few words" for i in range(40))
    chunks = chunk_markdown(text, max_chars=300, overlap_chars=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("- item ")
        assert chunk.text.endswith("a few words")


def test_long_run_of_words_without_punctuation_splits_between_words() -> None:
    words = [f"word{i:04d}" for i in range(200)]
    text = " ".join(words)
    chunks = chunk_markdown(text, max_chars=300, overlap_chars=0)
    assert len(chunks) > 1
    assert all(token in words for chunk in chunks for token in chunk.text.split(" "))


def test_run_without_whitespace_is_cut_at_max_chars() -> None:
    text = "x" * 1000
    chunks = chunk_markdown(text, max_chars=300, overlap_chars=0)
    assert [(c.char_start, c.char_end) for c in chunks] == [
        (0, 300),
        (300, 600),
        (600, 900),
        (900, 1000),
    ]


def test_a_chunk_fills_past_an_early_paragraph_break_rather_than_end_nearly_empty() -> None:
    text = "Short opening paragraph.\n\n" + _sentences(40)
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=0)
    assert chunks[0].text.startswith("Short opening paragraph.\n\nSentence number 000")
    assert len(chunks[0].text) >= 250


def test_an_unclosed_code_block_that_fits_is_kept_whole() -> None:
    code = "~~~\n" + "\n\n".join(f"step {i:02d} of the script" for i in range(16))
    text = _sentences(8) + "\n\n" + code
    assert 300 < len(code) <= 500
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=100)
    assert any(chunk.text.endswith(code) for chunk in chunks)
    assert not any("step 00" not in chunk.text and "step 15" in chunk.text for chunk in chunks)


def test_a_code_block_that_fits_is_kept_whole() -> None:
    code = "```python\n" + "\n\n".join(f"def f{i}():\n    return {i}" for i in range(16)) + "\n```"
    text = _sentences(8) + "\n\n" + code + "\n\n" + _sentences(8, 8)
    assert 300 < len(code) <= 500
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=100)
    assert any(code in chunk.text for chunk in chunks)
    code_start = text.index(code)
    for chunk in chunks:
        # No chunk starts or ends strictly inside the block.
        assert not code_start < chunk.char_start < code_start + len(code)
        assert not code_start < chunk.char_end < code_start + len(code)


def test_a_code_block_longer_than_max_chars_is_split_between_lines() -> None:
    lines = [f"    value_{i:03d} = compute({i})" for i in range(60)]
    text = "```python\n" + "\n".join(lines) + "\n```"
    chunks = chunk_markdown(text, max_chars=400, overlap_chars=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert text[chunk.char_end : chunk.char_end + 1] in ("\n", "")


# --- overlap ------------------------------------------------------------------------------------


def test_consecutive_chunks_of_a_section_overlap_at_a_sentence_start() -> None:
    text = _sentences(60)
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=120)
    assert len(chunks) > 2
    for previous, chunk in pairwise(chunks):
        overlap = previous.char_end - chunk.char_start
        assert 60 <= overlap <= 120
        assert text[chunk.char_start - 2 : chunk.char_start] == ". "


def test_overlap_starts_at_a_word_when_no_sentence_starts_nearby() -> None:
    text = " ".join(f"word{i:04d}" for i in range(300))
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=100)
    assert len(chunks) > 2
    for previous, chunk in pairwise(chunks):
        assert 90 <= previous.char_end - chunk.char_start <= 100
        assert text[chunk.char_start - 1] == " "


def test_overlap_inside_a_run_without_whitespace_is_exact() -> None:
    chunks = chunk_markdown("y" * 700, max_chars=300, overlap_chars=50)
    assert [(c.char_start, c.char_end) for c in chunks] == [(0, 300), (250, 550), (500, 700)]


def test_chunks_of_different_sections_do_not_overlap() -> None:
    text = "# A\n\n" + _sentences(30) + "\n\n# B\n\n" + _sentences(30, 30)
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=150)
    first_b = next(c for c in chunks if c.heading == "B")
    last_a = chunks[first_b.ordinal - 1]
    assert last_a.heading == "A"
    assert first_b.char_start == text.index("# B")
    assert last_a.char_end <= first_b.char_start


def test_zero_overlap_gives_disjoint_chunks() -> None:
    chunks = chunk_markdown(_sentences(60), max_chars=500, overlap_chars=0)
    assert len(chunks) > 2
    for previous, chunk in pairwise(chunks):
        assert previous.char_end < chunk.char_start


def test_overlap_never_reaches_into_a_code_block() -> None:
    code = "```\n" + "\n".join(f"line {i:02d} of code" for i in range(24)) + "\n```"
    text = _sentences(9) + "\n\n" + code + "\n\n" + _sentences(9)
    # The block fits in a chunk, but not together with a full overlap in front of it.
    assert 500 - 150 < len(code) <= 500
    chunks = chunk_markdown(text, max_chars=500, overlap_chars=150)
    code_start, code_end = text.index(code), text.index(code) + len(code)
    assert any(c.char_start <= code_start and code_end <= c.char_end for c in chunks)
    for chunk in chunks:
        disjoint = chunk.char_end <= code_start or code_end <= chunk.char_start
        holds_all = chunk.char_start <= code_start and code_end <= chunk.char_end
        assert disjoint or holds_all


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_chars", [99, 0, -5])
def test_max_chars_below_100_is_rejected_naming_the_argument(max_chars: int) -> None:
    with pytest.raises(ValueError, match=r"max_chars must be at least 100, got -?\d+"):
        chunk_markdown("text", max_chars=max_chars, overlap_chars=0)


@pytest.mark.parametrize(("max_chars", "overlap_chars"), [(1500, -1), (1500, 750), (100, 60)])
def test_overlap_outside_zero_to_half_max_is_rejected_naming_the_argument(
    max_chars: int, overlap_chars: int
) -> None:
    with pytest.raises(ValueError, match=rf"overlap_chars .* got {overlap_chars}"):
        chunk_markdown("text", max_chars=max_chars, overlap_chars=overlap_chars)


def test_largest_allowed_overlap_is_accepted() -> None:
    chunks = chunk_markdown(_sentences(30), max_chars=301, overlap_chars=150)
    assert len(chunks) > 1


# --- properties ---------------------------------------------------------------------------------

_WORDS = st.sampled_from(
    ["alpha", "beta", "gamma", "delta", "x", "Ωmega", "naïve", "ok.", "wait!", "(so)"]
)


@st.composite
def _paragraphs(draw: st.DrawFn) -> str:
    words = draw(st.lists(_WORDS, min_size=1, max_size=80))
    ends = draw(st.sampled_from([".", "!", "?", "", '."']))
    return " ".join(words) + ends


@st.composite
def _headings(draw: st.DrawFn) -> str:
    level = draw(st.integers(1, 6))
    return "#" * level + " " + " ".join(draw(st.lists(_WORDS, max_size=4)))


@st.composite
def _code_blocks(draw: st.DrawFn) -> str:
    lines = draw(
        st.lists(st.sampled_from(["# comment", "x = 1", "", "  indented", "## nope"]), max_size=40)
    )
    return "\n".join(["```", *lines, "```"])


@st.composite
def _markdown(draw: st.DrawFn) -> tuple[str, list[str]]:
    blocks = draw(
        st.lists(
            st.one_of(
                _paragraphs(),
                _headings(),
                _code_blocks(),
                st.text(alphabet="ab", min_size=50, max_size=700),  # long unbreakable runs
                st.lists(_paragraphs(), min_size=1, max_size=6).map(
                    lambda items: "\n".join(f"- {i}" for i in items)
                ),
            ),
            max_size=25,
        )
    )
    separators = draw(
        st.lists(
            st.sampled_from(["\n", "\n\n", "\n\n\n", "  \n \n", "\r\n\r\n"]),
            min_size=len(blocks),
            max_size=len(blocks),
        )
    )
    text = "".join(block + sep for block, sep in zip(blocks, separators, strict=True))
    return text, [b for b in blocks if b.startswith("```")]


_SIZES = st.integers(100, 700).flatmap(
    lambda max_chars: st.tuples(st.just(max_chars), st.integers(0, (max_chars - 1) // 2))
)


def _check_invariants(text: str, max_chars: int, overlap_chars: int) -> list[Chunk]:
    chunks = chunk_markdown(text, max_chars=max_chars, overlap_chars=overlap_chars)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for chunk in chunks:
        assert 0 < len(chunk.text) <= max_chars
        assert chunk.text == chunk.text.strip()
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        for i in range(chunk.char_start, chunk.char_end):
            covered[i] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    for previous, chunk in pairwise(chunks):
        assert previous.char_start < chunk.char_start
        assert previous.char_end < chunk.char_end
        assert previous.char_end - chunk.char_start <= overlap_chars
    return chunks


@settings(max_examples=300)
@given(document=_markdown(), sizes=_SIZES)
def test_markdown_chunks_are_bounded_ordered_exact_and_cover_the_input(
    document: tuple[str, list[str]], sizes: tuple[int, int]
) -> None:
    text, _ = document
    _check_invariants(text, *sizes)


@settings(max_examples=300)
@given(text=st.text(), sizes=_SIZES)
def test_arbitrary_text_chunks_are_bounded_ordered_exact_and_cover_the_input(
    text: str, sizes: tuple[int, int]
) -> None:
    _check_invariants(text, *sizes)


@settings(max_examples=200)
@given(document=_markdown(), sizes=_SIZES)
def test_code_blocks_that_fit_are_inside_one_chunk(
    document: tuple[str, list[str]], sizes: tuple[int, int]
) -> None:
    text, code_blocks = document
    chunks = chunk_markdown(text, max_chars=sizes[0], overlap_chars=sizes[1])
    for block in code_blocks:
        if len(block) <= sizes[0]:
            assert any(block in chunk.text for chunk in chunks)


@given(document=_markdown(), sizes=_SIZES)
def test_chunking_is_deterministic(document: tuple[str, list[str]], sizes: tuple[int, int]) -> None:
    text, _ = document
    # A copy built separately, so no state can hide behind object identity.
    copy = "".join(list(text))
    first = chunk_markdown(text, max_chars=sizes[0], overlap_chars=sizes[1])
    assert chunk_markdown(copy, max_chars=sizes[0], overlap_chars=sizes[1]) == first
