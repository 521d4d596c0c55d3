"""Document parsers the pipeline can use: built-in extraction, or the LlamaParse service."""

from __future__ import annotations

from docpipe_ingest.chunking import Chunk
from docpipe_ingest.extraction import document_format, extract_markdown
from docpipe_ingest.isolation import ParseLimits, ParsePool

# Plain text below this size is decoded inline: decoding is linear in the bytes, bounded and
# cheap (a round trip to a child would cost more than the work). Everything else, and large
# text, parses in a child process under the parse limits (docpipe_ingest.isolation).
_INLINE_FORMATS = frozenset({"text", "markdown"})
INLINE_MAX_BYTES = 256 * 1024


class LocalParser:
    """Extraction with the built-in libraries (txt, md, html, pdf, docx); no network."""

    def __init__(self, pool: ParsePool | None = None) -> None:
        self.pool = pool or ParsePool(limits=ParseLimits())

    async def parse(self, data: bytes, *, filename: str, content_type: str) -> str:
        if len(data) <= INLINE_MAX_BYTES:
            fmt, _ = document_format(data, filename=filename, content_type=content_type)
            if fmt in _INLINE_FORMATS:
                return extract_markdown(data, filename=filename, content_type=content_type)
        return await self.pool.parse(data, filename=filename, content_type=content_type)

    async def page_count(self, data: bytes, *, filename: str, content_type: str) -> int | None:
        """The number of pages of a PDF (parsed in page ranges when large); None otherwise."""
        fmt, _ = document_format(data, filename=filename, content_type=content_type)
        if fmt != "pdf":
            return None
        return await self.pool.pdf_page_count(data, filename=filename)

    async def parse_pages(self, data: bytes, *, filename: str, first: int, last: int) -> str:
        """The text of a PDF's pages [first, last)."""
        return await self.pool.parse_pdf_pages(data, filename=filename, first=first, last=last)

    async def chunk(self, text: str, *, max_chars: int, overlap_chars: int) -> list[Chunk]:
        """Chunk a large document's text in a parse child (see `chunking.chunk_markdown`)."""
        return await self.pool.chunk(text, max_chars=max_chars, overlap_chars=overlap_chars)

    async def aclose(self) -> None:
        await self.pool.close()
