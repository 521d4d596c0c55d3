"""Document parsers the pipeline can use: built-in extraction, or the LlamaParse service."""

from __future__ import annotations

import asyncio

from docpipe_ingest.extraction import extract_markdown

# Text formats are decoded inline; the others parse in a thread so one large PDF does not stall
# every other job of the worker's event loop.
_INLINE_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown"})


class LocalParser:
    """Extraction with the built-in libraries (txt, md, html, pdf, docx); no network."""

    async def parse(self, data: bytes, *, filename: str, content_type: str) -> str:
        if content_type.split(";")[0].strip().lower() in _INLINE_TYPES:
            return extract_markdown(data, filename=filename, content_type=content_type)
        return await asyncio.to_thread(
            extract_markdown, data, filename=filename, content_type=content_type
        )
