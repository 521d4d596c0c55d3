"""The mock services as `docpipe mocks` runs them: parsing with docpipe's own extractor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from docpipe_cli.main import extract_for_mocks
from docpipe_mocks import server
from docpipe_mocks.server import MockConfig


@asynccontextmanager
async def serve(host: str, port: int, config: MockConfig) -> AsyncIterator[str]:
    """Serve the mocks on `host`:`port` (0 picks a free port) and yield the bound base URL."""
    async with server.serve(host, port, config, extract_for_mocks) as url:
        yield url
