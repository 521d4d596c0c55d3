"""A steady arrival of documents, the load of the operator's rollout tests and benchmark."""

from __future__ import annotations

import asyncio

import asyncpg

from docpipe_queue.documents import add_document


async def feed_documents(
    pool: asyncpg.Pool, stop: asyncio.Event, added: list[int], *, per_second: float, owner: str
) -> None:
    """Add a small markdown document (with its job) to pipeline `docs` `per_second` times a
    second until `stop`; each one's number goes into `added`."""
    n = 0
    while not stop.is_set():
        async with pool.acquire() as conn:
            await add_document(
                conn,
                pipeline="docs",
                owner=owner,
                filename=f"{n}.md",
                content_type="text/markdown",
                data=f"# Note {n}\n\nHarbour seals rest on sandbanks, note {n}.\n".encode(),
            )
        added.append(n)
        n += 1
        await asyncio.sleep(1 / per_second)
