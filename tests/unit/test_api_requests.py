"""Pure parsing of intake API inputs: file names, content types, cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from docpipe_api.app import (
    clean_filename,
    decode_cursor,
    encode_cursor,
    upload_content_type,
)
from docpipe_api.problems import ProblemError


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("../../etc/passwd.md", "passwd.md"),
        ("C:\\Users\\me\\notes.txt", "notes.txt"),
        ("na\x00me\x1f.md", "name.md"),
        ("", "upload"),
        (None, "upload"),
        ("/", "upload"),
        ("x" * 300 + ".md", "x" * 255),
    ],
)
def test_file_names_are_stored_without_paths_or_control_characters(
    given: str | None, stored: str
) -> None:
    assert clean_filename(given) == stored


def test_a_declared_content_type_loses_its_parameters() -> None:
    assert upload_content_type("text/plain; charset=utf-8", "a.bin") == "text/plain"


def test_an_undeclared_content_type_is_taken_from_the_extension() -> None:
    assert upload_content_type(None, "report.pdf") == "application/pdf"
    assert upload_content_type("application/octet-stream", "a.docx").endswith("document")


def test_an_unsupported_content_type_is_415() -> None:
    with pytest.raises(ProblemError) as caught:
        upload_content_type("image/png", "a.png")
    assert caught.value.status == 415


def test_a_cursor_round_trips() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    document_id = uuid.uuid4()
    assert decode_cursor(encode_cursor(moment, document_id)) == (moment, document_id)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm9wZQ", "WyIyMDI2LTAxLTAyIiwgIngiXQ"])
def test_a_forged_cursor_is_422(cursor: str) -> None:
    with pytest.raises(ProblemError) as caught:
        decode_cursor(cursor)
    assert (caught.value.status, caught.value.field) == (422, "cursor")
