"""The purge of deleted documents' originals from object storage: the outbox rows
(`docpipe_queue.original_deletions`) become S3 DeleteObject requests. The intake API purges a
document's key right after deleting it; each worker with object storage sweeps the keys of its
pipeline that are still pending (the API's try failed, or the API had no object storage)."""

from __future__ import annotations

import asyncio
import enum
import logging
import random

import asyncpg

from docpipe_contracts.errors import PermanentError, TransientError
from docpipe_providers import metrics
from docpipe_providers.object_storage import ObjectStore, pipeline_key_prefix
from docpipe_queue import original_deletions

log = logging.getLogger(__name__)

# The DELETE runs while its outbox row is locked (an upload of the same content waits on that
# lock to learn whether the object went), so it gets a short timeout of its own.
DELETE_TIMEOUT_S = 10.0
# Keys purged per sweep, one at a time: a sweep stays short however long the backlog.
SWEEP_BATCH = 20


class Purge(enum.Enum):
    """How the purge of one key ended."""

    DELETED = "deleted"  # the object is gone, the row kept as a marker
    IN_USE = "in_use"  # the content was uploaded again: the request is dropped, the object kept
    FAILED = "failed"  # the DELETE failed: the request waits for its retry
    SKIPPED = "skipped"  # not pending, not due yet, or another purge or an upload holds it


async def purge(pool: asyncpg.Pool, store: ObjectStore, content_key: str) -> Purge:
    """Delete the object of one requested key, in one transaction that holds the key's row."""
    async with pool.acquire() as conn, conn.transaction():
        attempts = await original_deletions.lock_due(conn, content_key)
        if attempts is None:
            return Purge.SKIPPED
        if await original_deletions.in_use(conn, content_key):
            await original_deletions.forget(conn, content_key)
            return Purge.IN_USE
        try:
            await store.delete(content_key, timeout_s=DELETE_TIMEOUT_S)
        except (TransientError, PermanentError) as exc:
            await original_deletions.record_failure(conn, content_key, attempts + 1, str(exc))
            metrics.ORIGINAL_DELETION_FAILURES.inc()
            log.warning(
                "deleting an original failed; it is tried again later",
                extra={"content_key": content_key, "attempts": attempts + 1, "error": str(exc)},
            )
            return Purge.FAILED
        await original_deletions.mark_purged(conn, content_key)
    metrics.ORIGINALS_DELETED.inc()
    return Purge.DELETED


async def sweep(
    pool: asyncpg.Pool, store: ObjectStore, key_prefix: str, *, batch: int = SWEEP_BATCH
) -> list[Purge]:
    """Purge up to `batch` due keys under `key_prefix`, and forget day-old purged markers."""
    outcomes = [
        await purge(pool, store, key)
        for key in await original_deletions.due(pool, key_prefix, batch)
    ]
    await original_deletions.forget_purged(pool)
    return outcomes


async def run(pool: asyncpg.Pool, store: ObjectStore, pipeline: str, *, interval_s: float) -> None:
    """Sweep the pipeline's keys about every `interval_s` and export how many are pending. Runs
    until cancelled; a failing sweep is logged and the next one tries again."""
    key_prefix = pipeline_key_prefix(store.config.prefix, pipeline)
    pending = metrics.ORIGINAL_DELETIONS_PENDING.labels(pipeline)
    while True:
        # Jitter keeps a fleet's sweeps apart (they skip each other's rows anyway).
        await asyncio.sleep(interval_s * random.uniform(0.5, 1.5))
        try:
            await sweep(pool, store, key_prefix)
            pending.set(await original_deletions.pending(pool, key_prefix))
        except Exception as exc:  # the database away: the next sweep tries again
            log.warning("sweep of deleted originals failed: %s", exc)
