"""Hostile and huge documents, made in memory for tests (and bench/pipeline.py): deep nesting,
decompression bombs in docx and PDF, thousands of pages, huge single lines, NUL bytes, wrong
extensions, and a whale."""

from __future__ import annotations

import functools
import io
import zipfile
import zlib
from dataclasses import dataclass

from tests.samples import docx_bytes


@dataclass(frozen=True, slots=True)
class Hostile:
    filename: str
    content_type: str
    data: bytes


def nested_html(depth: int) -> bytes:
    """`<div><span>` nested `depth` deep around one word."""
    return (
        "<html><body>" + "<div><span>" * depth + "deep" + "</span></div>" * depth + "</body></html>"
    ).encode()


def pdf_pages(pages: int, text: str = "Tide tables for the harbour.", *, bomb_mb: int = 0) -> bytes:
    """A PDF of `pages` pages sharing one content stream; with `bomb_mb`, that stream is a
    FlateDecode stream that inflates to `bomb_mb` MiB."""
    if bomb_mb:
        raw = b"0 0 Td " * (bomb_mb * 1024 * 1024 // 7)
        stream = _compressed(len(raw))
        content = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
    else:
        body = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        stream = body
        content = b"<< /Length %d >>\nstream\n" % len(stream)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the pages' numbers are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        content + stream + b"\nendstream",
    ]
    first_page = len(objects) + 1
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages)).encode()
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages)
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
    )
    objects += [page] * pages
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def _compressed(size: int) -> bytes:
    compressor = zlib.compressobj(9)
    piece = b"0 0 Td " * (1024 * 1024 // 7)
    parts = [compressor.compress(piece) for _ in range(size // len(piece))]
    return b"".join(parts) + compressor.flush()


@functools.lru_cache(maxsize=2)
def docx_bomb(mb: int) -> bytes:
    """A valid .docx whose word/document.xml inflates to about `mb` MiB of one paragraph."""
    base = zipfile.ZipFile(io.BytesIO(docx_bytes("Bomb", ["small"])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for item in base.infolist():
            if item.filename != "word/document.xml":
                bomb.writestr(item, base.read(item))
        with bomb.open("word/document.xml", "w", force_zip64=True) as xml:
            xml.write(
                b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/'
                b'main"><w:body><w:p><w:r><w:t>'
            )
            piece = b"a" * (1024 * 1024)
            for _ in range(mb):
                xml.write(piece)
            xml.write(b"</w:t></w:r></w:p></w:body></w:document>")
    return out.getvalue()


def whale_html(sections: int) -> bytes:
    """One big, healthy HTML page: `sections` sections of a few hundred words each."""
    words = "The harbour master records each vessel, its draught and the tide it sailed on. "
    body = "".join(
        f"<h2>Section {i}</h2><p>{words * 14}</p><p>Entry {i}: {words * 6}</p>"
        for i in range(sections)
    )
    return f"<html><head><title>Whale</title></head><body>{body}</body></html>".encode()


def corpus(*, bomb_mb: int = 512) -> list[Hostile]:
    """The hostile corpus: each must end as a permanent error or a processed document."""
    return [
        Hostile("nested.html", "text/html", nested_html(30_000)),
        Hostile("bomb.docx", _DOCX, docx_bomb(bomb_mb)),
        # pypdf stops inflating a stream at 75 MB by itself; beyond that size only costs time.
        Hostile("bomb.pdf", "application/pdf", pdf_pages(3, bomb_mb=min(bomb_mb, 128))),
        Hostile("thousands.pdf", "application/pdf", pdf_pages(2000)),
        Hostile("one-line.txt", "text/plain", b"tide " * 200_000),  # 1 MB, not one newline
        Hostile("nul.txt", "text/plain", b"tide\x00tables\x00" * 1000),
        Hostile(
            "really-html.pdf", "application/pdf", b"<html><body><p>not a pdf</p></body></html>"
        ),
        Hostile("really-pdf.docx", _DOCX, pdf_pages(2)),
        Hostile("random.html", "text/html", bytes(range(256)) * 64),
    ]


_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
