"""Local extraction of txt, md, html, pdf and docx into markdown-ish text, and its errors."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from collections.abc import Callable

import docx
import pytest
from docx.document import Document as DocxDocument
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from docpipe_contracts.content_types import SUPPORTED_CONTENT_TYPES, content_type_for
from docpipe_contracts.errors import PermanentError
from docpipe_ingest.extraction import (
    EmptyDocumentError,
    UnreadableDocumentError,
    UnsupportedDocumentError,
    extract_markdown,
)

_DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _pdf(*pages: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for page in pages:
        pdf.add_page()
        if page:
            pdf.multi_cell(0, 10, text=page)
    return bytes(pdf.output())


def _encrypted_pdf(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf("Secret plans."))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _docx(build: Callable[[DocxDocument], object]) -> bytes:
    document = docx.Document()
    build(document)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# --- text and markdown --------------------------------------------------------------------------


def test_markdown_is_returned_unchanged() -> None:
    text = "# Title\r\n\r\nSome *text* with `code`.\n\n- item\n"
    assert extract_markdown(text.encode(), filename="a.md") == text


def test_plain_text_is_returned_unchanged() -> None:
    assert extract_markdown(b"line one\nline two\n", filename="notes.txt") == "line one\nline two\n"


def test_utf8_byte_order_mark_is_dropped() -> None:
    assert extract_markdown(b"\xef\xbb\xbfcaf\xc3\xa9", filename="a.txt") == "café"


def test_utf16_with_byte_order_mark_is_decoded() -> None:
    assert extract_markdown("naïve ✓".encode("utf-16"), filename="a.txt") == "naïve ✓"


def test_charset_from_the_content_type_is_used() -> None:
    data = "привет мир".encode("koi8-r")
    extracted = extract_markdown(data, filename="a.txt", content_type="text/plain; charset=KOI8-R")
    assert extracted == "привет мир"


def test_unknown_charset_in_the_content_type_falls_back_to_utf8() -> None:
    data = "café".encode()
    assert (
        extract_markdown(data, filename="a.md", content_type="text/markdown; charset=nope")
        == "café"
    )


def test_text_that_is_not_utf8_falls_back_to_windows_1252() -> None:
    assert extract_markdown("café – ok".encode("cp1252"), filename="old.txt") == "café – ok"


def test_text_with_nul_bytes_is_unreadable_and_says_why() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        extract_markdown("hello".encode("utf-16-le"), filename="wide.txt")
    message = str(caught.value)
    assert "'wide.txt'" in message
    assert "NUL bytes" in message
    assert "save it as UTF-8" in message


def test_text_neither_utf8_nor_windows_1252_is_unreadable_and_names_the_byte() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        extract_markdown(b"abc\x81def", filename="odd.md")
    message = str(caught.value)
    assert "'odd.md'" in message
    assert "neither UTF-8 nor Windows-1252" in message
    assert "byte 0x81 at offset 3" in message


def test_whitespace_only_text_is_empty() -> None:
    with pytest.raises(EmptyDocumentError, match=r"no text could be extracted from 'blank.txt'"):
        extract_markdown(b" \n\t\n", filename="blank.txt")


# --- html ---------------------------------------------------------------------------------------


def test_html_structure_becomes_markdown() -> None:
    html = (
        b"<html><body><h1>Guide</h1><p>First <b>bold</b> paragraph.</p><h2>Steps</h2>"
        b"<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>"
        b"<ol><li>first</li><li>second</li></ol></body></html>"
    )
    assert extract_markdown(html, filename="g.html") == (
        "# Guide\n\nFirst **bold** paragraph.\n\n## Steps\n\n- one\n- two\n  - nested\n\n"
        "1. first\n2. second"
    )


def test_html_head_scripts_styles_and_non_content_elements_are_dropped() -> None:
    html = (
        b"<html><head><title>Tab title</title><style>p { color: red }</style></head>"
        b"<body><script>alert('x')</script><p>Visible.</p><noscript>Enable JS</noscript>"
        b"<template><p>Row template</p></template><svg><text>axis label</text></svg>"
        b"<iframe>Frame fallback</iframe></body></html>"
    )
    assert extract_markdown(html, filename="p.html") == "Visible."


def test_html_links_and_images_keep_only_their_text() -> None:
    html = (
        b'<p>Read <a href="https://example.test/doc">the docs</a> <img src="x.png" alt="x">now.</p>'
    )
    assert extract_markdown(html, filename="p.htm") == "Read the docs now."


def test_html_underscores_and_asterisks_are_not_escaped() -> None:
    html = b"<p>Call snake_case_name with *args.</p>"
    assert extract_markdown(html, filename="p.html") == "Call snake_case_name with *args."


def test_html_charset_from_the_content_type_is_used() -> None:
    html = "<p>café</p>".encode("cp1252")
    assert (
        extract_markdown(html, filename="p", content_type="text/html; charset=windows-1252")
        == "café"
    )


def test_html_without_visible_text_is_empty() -> None:
    with pytest.raises(EmptyDocumentError, match=r"'x.html' \(html\): the page has markup but no"):
        extract_markdown(
            b"<html><body><script>1</script><div></div></body></html>", filename="x.html"
        )


# --- pdf ----------------------------------------------------------------------------------------


def test_pdf_text_is_extracted_page_by_page() -> None:
    data = _pdf("Quarterly report\nRevenue grew.", "Second page.")
    assert (
        extract_markdown(data, filename="r.pdf")
        == "Quarterly report\nRevenue grew.\n\nSecond page."
    )


def test_pdf_pages_without_text_are_skipped() -> None:
    assert extract_markdown(_pdf("One.", "", "Three."), filename="r.pdf") == "One.\n\nThree."


def test_pdf_encrypted_with_an_empty_user_password_is_read() -> None:
    assert extract_markdown(_encrypted_pdf(""), filename="restricted.pdf") == "Secret plans."


def test_password_protected_pdf_is_unreadable_and_asks_to_remove_the_password() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        extract_markdown(_encrypted_pdf("hunter2"), filename="locked.pdf")
    assert str(caught.value) == (
        "cannot read 'locked.pdf': the PDF is password-protected;"
        " remove the password and upload it again"
    )


@pytest.mark.parametrize("data", [_pdf("Some text.")[:300], b"%PDF-1.7\nnot really a pdf"])
def test_corrupt_pdf_is_unreadable_and_asks_for_a_new_export(data: bytes) -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        extract_markdown(data, filename="broken.pdf")
    message = str(caught.value)
    assert message.startswith("cannot read 'broken.pdf': not a valid PDF, or corrupt or truncated")
    assert message.endswith("export it again and upload the new file")


def test_pdf_without_a_text_layer_is_empty_and_suggests_ocr() -> None:
    with pytest.raises(EmptyDocumentError) as caught:
        extract_markdown(_pdf("", ""), filename="scan.pdf")
    assert str(caught.value) == (
        "no text could be extracted from 'scan.pdf' (pdf):"
        " is it a scanned PDF without a text layer? Run OCR on it first"
    )


# --- docx ---------------------------------------------------------------------------------------


def test_docx_heading_styles_become_hash_headings() -> None:
    def build(document: DocxDocument) -> None:
        document.add_heading("Handbook", level=0)
        document.add_heading("Install", level=1)
        document.add_paragraph("Intro paragraph.")
        document.add_heading("Linux", level=2)
        document.add_paragraph("Use apt.")

    assert extract_markdown(_docx(build), filename="h.docx") == (
        "# Handbook\n\n# Install\n\nIntro paragraph.\n\n## Linux\n\nUse apt."
    )


def test_docx_list_items_stay_on_consecutive_lines() -> None:
    def build(document: DocxDocument) -> None:
        document.add_paragraph("Before.")
        document.add_paragraph("apples", style="List Bullet")
        document.add_paragraph("pears", style="List Bullet")
        document.add_paragraph("wash", style="List Number")
        document.add_paragraph("After.")

    assert extract_markdown(_docx(build), filename="l.docx") == (
        "Before.\n\n- apples\n- pears\n1. wash\n\nAfter."
    )


def test_docx_tables_become_rows_in_document_order() -> None:
    def build(document: DocxDocument) -> None:
        document.add_paragraph("Before the table.")
        table = document.add_table(rows=3, cols=2)
        values_by_row = [("OS", "Command"), ("Debian", "apt | dpkg"), ("", "")]
        for row, values in zip(table.rows, values_by_row, strict=True):
            for cell, value in zip(row.cells, values, strict=True):
                cell.text = value
        document.add_paragraph("After the table.")

    assert extract_markdown(_docx(build), filename="t.docx") == (
        "Before the table.\n\n| OS | Command |\n| --- | --- |\n| Debian | apt \\| dpkg |"
        "\n\nAfter the table."
    )


def test_docx_merged_table_cells_appear_once() -> None:
    def build(document: DocxDocument) -> None:
        table = document.add_table(rows=1, cols=3)
        merged = table.cell(0, 0).merge(table.cell(0, 1))
        merged.text = "wide"
        table.cell(0, 2).text = "narrow"

    assert extract_markdown(_docx(build), filename="m.docx") == "| wide | narrow |\n| --- | --- |"


@pytest.mark.parametrize(
    "data",
    [b"PK\x03\x04 but not a zip", b"plain bytes", _docx(lambda d: d.add_paragraph("x"))[:400]],
)
def test_invalid_docx_is_unreadable_and_suggests_saving_as_docx(data: bytes) -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        extract_markdown(data, filename="old.docx")
    message = str(caught.value)
    assert message.startswith("cannot read 'old.docx': not a valid Word .docx file")
    assert "save it as .docx from Word" in message


def test_docx_without_text_is_empty() -> None:
    with pytest.raises(EmptyDocumentError, match=r"'e.docx' \(docx\): the document has no"):
        extract_markdown(_docx(lambda d: d.add_paragraph("   ")), filename="e.docx")


# --- choosing the format ------------------------------------------------------------------------


def test_a_known_content_type_wins_over_the_extension() -> None:
    assert (
        extract_markdown(b"# Not a PDF", filename="x.pdf", content_type="text/markdown")
        == "# Not a PDF"
    )


def test_the_extension_decides_when_the_content_type_is_unknown() -> None:
    data = _pdf("From the extension.")
    extracted = extract_markdown(data, filename="R.PDF", content_type="application/octet-stream")
    assert extracted == "From the extension."


def test_content_type_parameters_and_case_do_not_hide_the_type() -> None:
    html = b"<h1>Hi</h1>"
    assert extract_markdown(html, filename="x", content_type="Text/HTML; charset=utf-8") == "# Hi"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_pdf("Sniffed pdf."), "Sniffed pdf."),
        (_docx(lambda d: d.add_paragraph("Sniffed docx.")), "Sniffed docx."),
        (b"\n  <!DOCTYPE html><html><body><p>Sniffed html.</p></body></html>", "Sniffed html."),
        (b"<!-- generated --><html><p>Commented html.</p></html>", "Commented html."),
    ],
)
def test_the_bytes_decide_when_neither_type_nor_extension_is_known(
    data: bytes, expected: str
) -> None:
    assert (
        extract_markdown(data, filename="upload", content_type="application/octet-stream")
        == expected
    )


def test_a_zip_that_is_not_a_word_document_is_unsupported() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(UnsupportedDocumentError):
        extract_markdown(out.getvalue(), filename="sheet.xlsx")


def test_unsupported_document_message_names_the_file_its_type_and_the_supported_types() -> None:
    with pytest.raises(UnsupportedDocumentError) as caught:
        extract_markdown(b"\x89PNG\r\n\x1a\n", filename="scan.png", content_type="image/png")
    message = str(caught.value)
    assert message.startswith(
        "cannot extract text from 'scan.png' (content type image/png): the format is not supported."
    )
    for named in [*SUPPORTED_CONTENT_TYPES, ".txt", ".md", ".html", ".pdf", ".docx"]:
        assert named in message
    assert caught.value.filename == "scan.png"
    assert caught.value.content_type == "image/png"


def test_unsupported_document_without_a_content_type_says_it_was_not_given() -> None:
    with pytest.raises(UnsupportedDocumentError, match=r"'data\.bin' \(content type not given\)"):
        extract_markdown(b"\x00\x01", filename="data.bin")


@pytest.mark.parametrize(
    "error", [UnsupportedDocumentError, UnreadableDocumentError, EmptyDocumentError]
)
def test_document_errors_are_permanent_so_the_job_is_not_retried(error: type[Exception]) -> None:
    assert issubclass(error, PermanentError)


_SAMPLES: dict[str, tuple[bytes, str]] = {
    "text": (b"plain words", "plain words"),
    "markdown": (b"# md words", "# md words"),
    "html": (b"<p>html words</p>", "html words"),
    "pdf": (_pdf("pdf words"), "pdf words"),
    "docx": (_docx(lambda d: d.add_paragraph("docx words")), "docx words"),
}


@pytest.mark.parametrize(("content_type", "fmt"), sorted(SUPPORTED_CONTENT_TYPES.items()))
def test_every_supported_content_type_is_extracted(content_type: str, fmt: str) -> None:
    data, expected = _SAMPLES[fmt]
    assert extract_markdown(data, filename="upload", content_type=content_type) == expected


# --- content_type_for ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("notes.txt", "text/plain"),
        ("README.md", "text/markdown"),
        ("guide.markdown", "text/markdown"),
        ("page.HTM", "text/html"),
        ("dir/sub/Report.PDF", "application/pdf"),
        ("C:\\Users\\me\\letter.docx", _DOCX_TYPE),
        ("photo.png", "image/png"),
        ("no_extension", "application/octet-stream"),
        ("archive.unknownext", "application/octet-stream"),
        (".md", "application/octet-stream"),
    ],
)
def test_content_type_is_guessed_from_the_extension(filename: str, expected: str) -> None:
    assert content_type_for(filename) == expected


@pytest.mark.parametrize(
    "extension", [".txt", ".text", ".md", ".markdown", ".html", ".htm", ".xhtml", ".pdf", ".docx"]
)
def test_every_supported_extension_maps_to_a_supported_content_type(extension: str) -> None:
    assert content_type_for(f"file{extension}") in SUPPORTED_CONTENT_TYPES


# --- cost on the hot path -----------------------------------------------------------------------


def test_markdown_extraction_imports_no_pdf_docx_or_html_library() -> None:
    script = (
        "import sys\n"
        "from docpipe_ingest.extraction import extract_markdown\n"
        "extract_markdown(b'# hi', filename='a.md')\n"
        "loaded = sorted({'pypdf', 'docx', 'bs4', 'markdownify', 'lxml'} & set(sys.modules))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_html_nested_too_deeply_is_unreadable_and_says_why() -> None:
    nested = ("<div><span>" * 5000 + "deep" + "</span></div>" * 5000).encode()
    with pytest.raises(UnreadableDocumentError, match="nested too deeply") as caught:
        extract_markdown(nested, filename="deep.html")
    assert isinstance(caught.value, PermanentError)


def test_nul_characters_in_the_extracted_text_are_dropped() -> None:
    # Postgres cannot store NUL in text: a document whose markup carries one must still store.
    text = extract_markdown(b"<p>tide\x00 tables</p>", filename="t.html")
    assert text == "tide tables"


def test_a_document_error_crosses_a_process_boundary_with_its_type_and_fields() -> None:
    import pickle

    error = UnsupportedDocumentError(filename="a.xyz", content_type="application/x-thing")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnsupportedDocumentError
    assert (str(copy), copy.filename, copy.content_type) == (
        str(error),
        "a.xyz",
        "application/x-thing",
    )
