"""Local text extraction: an uploaded file's bytes become markdown-ish text ready for chunking."""

from __future__ import annotations

import codecs
import io
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from docpipe_contracts.content_types import (
    EXTENSION_CONTENT_TYPES,
    SUPPORTED_CONTENT_TYPES,
    SUPPORTED_SUMMARY,
    extension_of,
)
from docpipe_contracts.errors import PermanentError

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph
    from pypdf import PdfReader


# Not the input's fault as such, but the limits it hit: reported as what they are (the parse
# isolation names the limit), never disguised as a corrupt file.
_RESOURCE_ERRORS = (RecursionError, MemoryError)

# Formats whose bytes may carry no text and still be valid, with a hint on why that happens.
_EMPTY_HINTS: Mapping[str, str] = MappingProxyType(
    {
        "pdf": "is it a scanned PDF without a text layer? Run OCR on it first",
        "html": "the page has markup but no visible text",
        "docx": "the document has no paragraphs or tables with text",
    }
)


class DocumentError(PermanentError):
    """A document the pipeline cannot turn into text; retrying the same bytes cannot help."""

    def __init__(self, message: str, *, filename: str) -> None:
        super().__init__(message)
        self.filename = filename

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses from the parse's child process to the worker whatever the subclass's signature.
        return (_rebuild_document_error, (type(self), str(self), self.__dict__))


def _rebuild_document_error(
    cls: type[DocumentError], message: str, state: dict[str, Any]
) -> DocumentError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UnsupportedDocumentError(DocumentError):
    """Neither the content type, the file extension nor the bytes name a supported format."""

    def __init__(self, *, filename: str, content_type: str | None) -> None:
        super().__init__(
            f"cannot extract text from {filename!r} (content type {content_type or 'not given'}):"
            f" the format is not supported. Supported formats are {SUPPORTED_SUMMARY}.",
            filename=filename,
        )
        self.content_type = content_type


class UnreadableDocumentError(DocumentError):
    """The format is supported but the bytes are corrupt, encrypted or undecodable."""


class EmptyDocumentError(DocumentError):
    """The document was read but holds no text."""


def extract_markdown(data: bytes, *, filename: str, content_type: str | None = None) -> str:
    """Extract the text of a txt, md, html, pdf or docx document as markdown-ish text.

    Raises UnsupportedDocumentError, UnreadableDocumentError or EmptyDocumentError.
    """
    fmt, charset = document_format(data, filename=filename, content_type=content_type)
    try:
        text = _EXTRACTORS[fmt](data, filename, charset)
    except RecursionError as exc:
        # Deterministic: the same bytes nest as deep on every attempt.
        raise UnreadableDocumentError(
            f"cannot read {filename!r}: its structure is nested too deeply to parse"
            f" ({type(exc).__name__}: {exc})",
            filename=filename,
        ) from None
    # NUL can be in markup or a PDF's text layer, and cannot be stored in a Postgres text column.
    text = text.replace("\x00", "")
    if not text.strip():
        hint = _EMPTY_HINTS.get(fmt, "the file holds only whitespace")
        raise EmptyDocumentError(
            f"no text could be extracted from {filename!r} ({fmt}): {hint}", filename=filename
        )
    return text


def document_format(
    data: bytes, *, filename: str, content_type: str | None = None
) -> tuple[str, str | None]:
    """The document's format ('text', 'markdown', 'html', 'pdf', 'docx') and declared charset:
    from its content type, else its file extension, else its bytes."""
    media_type, charset = _parse_content_type(content_type)
    fmt = (
        SUPPORTED_CONTENT_TYPES.get(media_type)
        or SUPPORTED_CONTENT_TYPES.get(EXTENSION_CONTENT_TYPES.get(extension_of(filename), ""))
        or _sniff_format(data)
    )
    if fmt is None:
        raise UnsupportedDocumentError(filename=filename, content_type=content_type)
    return fmt, charset


def pdf_page_count(data: bytes, *, filename: str) -> int:
    """How many pages the PDF has (for processing a large one in page ranges)."""
    return len(_pdf_reader(data, filename).pages)


def extract_pdf_pages(data: bytes, *, filename: str, first: int, last: int) -> str:
    """The text of pages `first` (inclusive) to `last` (exclusive) of a PDF, '' when none."""
    reader = _pdf_reader(data, filename)
    try:
        pages = [reader.pages[i].extract_text() for i in range(first, min(last, len(reader.pages)))]
    except _RESOURCE_ERRORS:
        raise
    except Exception as exc:  # pypdf raises many unrelated types on malformed input
        raise _corrupt_pdf(filename, exc) from exc
    return "\n\n".join(text.strip() for text in pages if text.strip()).replace("\x00", "")


def _parse_content_type(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    media_type, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return media_type.strip().lower(), charset


def _sniff_format(data: bytes) -> str | None:
    head = data[:1024]
    # The PDF header may follow a little junk; readers accept it within the first kilobyte.
    if b"%PDF-" in head:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile:
            return None
        return "docx" if "word/document.xml" in names else None
    lowered = head.lower()
    if lowered.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<!doctype html", b"<html")):
        return "html"
    return "html" if b"<html" in lowered else None


def _decode_text(data: bytes, filename: str, charset: str | None) -> str:
    # A byte-order mark is the strongest evidence of an encoding, then the sender's charset.
    if data.startswith(codecs.BOM_UTF8):
        declared = "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        declared = "utf-16"
    else:
        declared = charset or ""
    if declared:
        try:
            return data.decode(declared)
        except (LookupError, UnicodeDecodeError):
            pass  # an unknown or wrong charset: guess as if none was given
    if b"\x00" in data:
        raise UnreadableDocumentError(
            f"cannot read {filename!r} as text: it contains NUL bytes, so it is binary, or"
            " UTF-16 without a byte-order mark; save it as UTF-8 text",
            filename=filename,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error = exc
    try:
        # Last, because it decodes almost any bytes: only a guess for legacy Windows files.
        return data.decode("cp1252")
    except UnicodeDecodeError:
        pass
    raise UnreadableDocumentError(
        f"cannot decode {filename!r} as text: it is neither UTF-8 nor Windows-1252"
        f" (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8 text",
        filename=filename,
    ) from error


def _extract_text(data: bytes, filename: str, charset: str | None) -> str:
    return _decode_text(data, filename, charset)


_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def _extract_html(data: bytes, filename: str, charset: str | None) -> str:
    from bs4 import BeautifulSoup
    from markdownify import ATX, MarkdownConverter

    soup = BeautifulSoup(data, "html.parser", from_encoding=charset)
    for tag in soup(["head", "title", "script", "style", "noscript", "template", "svg", "iframe"]):
        tag.decompose()
    # Links and images keep only their text: URLs add noise to embeddings, not meaning.
    converter = MarkdownConverter(
        heading_style=ATX,
        bullets="-",
        strip=["a", "img"],
        escape_asterisks=False,
        escape_underscores=False,
    )
    markdown: str = converter.convert_soup(soup)
    # markdownify marks <br> with two trailing spaces; they only matter to a renderer.
    markdown = _TRAILING_SPACE.sub("", markdown)
    return _BLANK_RUNS.sub("\n\n", markdown).strip()


def _pdf_reader(data: bytes, filename: str) -> PdfReader:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        # An empty user password only restricts editing or printing: such files open as is.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise UnreadableDocumentError(
                f"cannot read {filename!r}: the PDF is password-protected;"
                " remove the password and upload it again",
                filename=filename,
            )
        len(reader.pages)  # reads the page tree: a broken one fails here, not later
    except (DocumentError, *_RESOURCE_ERRORS):
        raise
    except Exception as exc:  # pypdf raises many unrelated types on malformed input
        raise _corrupt_pdf(filename, exc) from exc
    return reader


def _corrupt_pdf(filename: str, exc: Exception) -> UnreadableDocumentError:
    return UnreadableDocumentError(
        f"cannot read {filename!r}: not a valid PDF, or corrupt or truncated ({exc});"
        " export it again and upload the new file",
        filename=filename,
    )


def _extract_pdf(data: bytes, filename: str, charset: str | None) -> str:
    return extract_pdf_pages(data, filename=filename, first=0, last=sys.maxsize)


_HEADING_STYLE = re.compile(r"Heading ([1-9])")


def _extract_docx(data: bytes, filename: str, charset: str | None) -> str:
    import docx
    from docx.text.paragraph import Paragraph

    parts: list[str] = []
    in_list = False
    try:
        document = docx.Document(io.BytesIO(data))
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                block, is_list_item = _paragraph_markdown(item)
            else:
                block, is_list_item = _table_markdown(item), False
            if not block:
                continue
            # Items of one list stay on consecutive lines, as a markdown list.
            parts.append("\n" if in_list and is_list_item else "\n\n")
            parts.append(block)
            in_list = is_list_item
    except _RESOURCE_ERRORS:
        raise
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml errors... on bad input
        raise UnreadableDocumentError(
            f"cannot read {filename!r}: not a valid Word .docx file ({exc}); if it is an old"
            " .doc file or another format renamed, save it as .docx from Word and upload again",
            filename=filename,
        ) from exc
    return "".join(parts[1:])


def _paragraph_markdown(paragraph: Paragraph) -> tuple[str, bool]:
    """The paragraph as markdown, and whether it is a list item."""
    text = paragraph.text.strip()
    style = (paragraph.style.name if paragraph.style is not None else None) or ""
    if not text:
        return "", False
    if style == "Title":
        return f"# {text}", False
    heading = _HEADING_STYLE.fullmatch(style)
    if heading:
        return f"{'#' * min(int(heading.group(1)), 6)} {text}", False
    if style.startswith("List Bullet"):
        return f"- {text}", True
    if style.startswith("List Number"):
        return f"1. {text}", True
    return text, False


def _table_markdown(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous: object = None
        for cell in row.cells:
            # A horizontally merged cell is yielded once per grid column it spans.
            if cell is previous:
                continue
            previous = cell
            cells.append(" ".join(cell.text.split()).replace("|", "\\|"))
        if any(cells):
            rows.append(f"| {' | '.join(cells)} |")
            if len(rows) == 1:
                rows.append(f"|{' --- |' * len(cells)}")
    return "\n".join(rows)


_EXTRACTORS: Mapping[str, Callable[[bytes, str, str | None], str]] = MappingProxyType(
    {
        "text": _extract_text,
        "markdown": _extract_text,
        "html": _extract_html,
        "pdf": _extract_pdf,
        "docx": _extract_docx,
    }
)
