"""The outbox of originals to delete from object storage (migration 0014): deleting a document
asks for its object's deletion in the delete's transaction; a purge (`docpipe_providers.
original_purge`) deletes the object later, unless the content was uploaded again meanwhile.

An upload of the same content by the same owner (the same key) cancels a pending deletion. One
that finds the key already purged may have put its object just before the purge deleted it, and
puts it again before it commits (`must_put_again`). Keys are per (pipeline, owner, sha256), as
documents are unique on those, so a key names at most one document at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from docpipe_queue.jobs import Executor
from docpipe_queue.retry import RetryPolicy, backoff_delay

# A failed purge waits 5 s, then twice as long after each failure, up to 15 minutes. No jitter:
# the sweeps that retry are jittered already.
PURGE_RETRY = RetryPolicy(base_s=5.0, cap_s=900.0, jitter=0.0)
# How long a purged key is kept as a marker for uploads of the same content (see module doc).
MARKER_KEEP_S = 86_400.0

# A new request, or one for a key purged or pending before: pending again, from scratch.
REQUEST_ORIGINAL_DELETION = """
insert into docpipe.original_deletions (content_key) values ($1)
on conflict (content_key) do update
set requested_at = now(), attempts = 0, last_error = null, next_attempt_at = now(),
    purged_at = null
"""

# Run by an upload after it inserted the document that names the key. It waits while a purge
# holds the row (the purge's lock spans its DELETE of the object), so it sees how that ended.
CANCEL_ORIGINAL_DELETION = """
delete from docpipe.original_deletions where content_key = $1 returning purged_at
"""

# A purge's hold on one key: only a pending row whose time has come, and never one another purge
# or an upload holds (skipped, not waited for).
LOCK_DUE_ORIGINAL_DELETION = """
select attempts from docpipe.original_deletions
where content_key = $1 and purged_at is null and next_attempt_at <= now()
for update skip locked
"""

ORIGINAL_IN_USE = """
select exists (select 1 from docpipe.documents where content_key = $1)
"""

FORGET_ORIGINAL_DELETION = "delete from docpipe.original_deletions where content_key = $1"

MARK_ORIGINAL_PURGED = """
update docpipe.original_deletions set purged_at = now(), last_error = null
where content_key = $1
"""

RECORD_ORIGINAL_DELETION_FAILURE = """
update docpipe.original_deletions
set attempts = attempts + 1, last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
where content_key = $1
"""

# The keys a sweep purges: due, oldest first, under one key prefix (a worker purges the keys of
# its own pipeline and object store only: another pipeline's may live in another bucket).
DUE_ORIGINAL_DELETIONS = """
select content_key from docpipe.original_deletions
where purged_at is null and next_attempt_at <= now() and starts_with(content_key, $1)
order by next_attempt_at
limit $2
"""

PENDING_ORIGINAL_DELETIONS = """
select count(*) from docpipe.original_deletions
where purged_at is null and starts_with(content_key, $1)
"""

FORGET_PURGED_ORIGINALS = """
delete from docpipe.original_deletions
where purged_at < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What an upload's cancel found: no request (`found` False), a pending one, or a purge."""

    found: bool
    purged_at: datetime | None = None


def must_put_again(cancelled: Cancelled) -> bool:
    """Whether an upload must put its object again before it commits: only when the key had
    been purged, as the purge may have deleted the object this upload had just put."""
    return cancelled.found and cancelled.purged_at is not None


def retry_delay_s(attempts: int) -> float:
    """Seconds until a purge that has now failed `attempts` times (1-based) is tried again."""
    return backoff_delay(PURGE_RETRY, attempts)


async def request_deletion(conn: Executor, content_key: str) -> None:
    """Ask for the object's deletion (in the transaction that deletes its document)."""
    await conn.execute(REQUEST_ORIGINAL_DELETION, content_key)


async def cancel_deletion(conn: Executor, content_key: str) -> Cancelled:
    """Withdraw a request for the key (in the transaction of an upload that names it again)."""
    row = await conn.fetchrow(CANCEL_ORIGINAL_DELETION, content_key)
    return Cancelled(False) if row is None else Cancelled(True, row["purged_at"])


async def lock_due(conn: Executor, content_key: str) -> int | None:
    """Lock the key's pending request for a purge: its failed attempts so far, or None when it
    is not due, not pending, or held by someone else. Inside a transaction."""
    attempts = await conn.fetchval(LOCK_DUE_ORIGINAL_DELETION, content_key)
    return None if attempts is None else int(attempts)


async def in_use(conn: Executor, content_key: str) -> bool:
    """Whether a document names the key (its content was uploaded again)."""
    return bool(await conn.fetchval(ORIGINAL_IN_USE, content_key))


async def forget(conn: Executor, content_key: str) -> None:
    """Drop the key's request (its content is in use again)."""
    await conn.execute(FORGET_ORIGINAL_DELETION, content_key)


async def mark_purged(conn: Executor, content_key: str) -> None:
    """Record the key's object deleted; the row stays a day as a marker for uploads."""
    await conn.execute(MARK_ORIGINAL_PURGED, content_key)


async def record_failure(conn: Executor, content_key: str, attempts: int, error: str) -> None:
    """Count a failed purge (`attempts` failures so far, this one included) and schedule the
    next."""
    await conn.execute(
        RECORD_ORIGINAL_DELETION_FAILURE, content_key, error[:1000], retry_delay_s(attempts)
    )


async def due(pool: asyncpg.Pool, key_prefix: str, limit: int) -> list[str]:
    """Up to `limit` due keys under `key_prefix`, oldest first."""
    rows = await pool.fetch(DUE_ORIGINAL_DELETIONS, key_prefix, limit)
    return [row["content_key"] for row in rows]


async def pending(pool: asyncpg.Pool, key_prefix: str) -> int:
    """Requests under `key_prefix` not yet done (due or waiting for their retry)."""
    return int(await pool.fetchval(PENDING_ORIGINAL_DELETIONS, key_prefix))


async def forget_purged(pool: asyncpg.Pool, older_than_s: float = MARKER_KEEP_S) -> int:
    """Drop the markers of keys purged more than `older_than_s` ago; how many."""
    status = await pool.execute(FORGET_PURGED_ORIGINALS, older_than_s)
    return int(status.split()[-1])
