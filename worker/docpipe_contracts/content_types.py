"""The document formats docpipe accepts: content types, file extensions, and the guess from a
filename. The intake API refuses what is not here; the ingest pipeline extracts what is."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from types import MappingProxyType

_DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

SUPPORTED_CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "text/plain": "text",
        "text/markdown": "markdown",
        "text/x-markdown": "markdown",
        "text/html": "html",
        "application/xhtml+xml": "html",
        "application/pdf": "pdf",
        _DOCX_TYPE: "docx",
    }
)

EXTENSION_CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".txt": "text/plain",
        ".text": "text/plain",
        ".md": "text/markdown",
        ".markdown": "text/markdown",
        ".html": "text/html",
        ".htm": "text/html",
        ".xhtml": "application/xhtml+xml",
        ".pdf": "application/pdf",
        ".docx": _DOCX_TYPE,
    }
)


def _describe_formats() -> str:
    described = []
    for fmt in dict.fromkeys(SUPPORTED_CONTENT_TYPES.values()):
        types = [ct for ct, f in SUPPORTED_CONTENT_TYPES.items() if f == fmt]
        extensions = [ext for ext, ct in EXTENSION_CONTENT_TYPES.items() if ct in types]
        described.append(f"{fmt} ({', '.join(extensions)}: {', '.join(types)})")
    return "; ".join(described)


SUPPORTED_SUMMARY = _describe_formats()


def content_type_for(filename: str) -> str:
    """Guess a content type from `filename`'s extension; application/octet-stream if unknown."""
    known = EXTENSION_CONTENT_TYPES.get(extension_of(filename))
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def extension_of(filename: str) -> str:
    """The lower-cased extension of `filename` (with its dot), or "" if it has none."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    dot = base.rfind(".")
    # A leading dot marks a hidden file, not an extension.
    return base[dot:].lower() if dot > 0 else ""
