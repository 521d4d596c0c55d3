"""The audit trail: every statement on `docpipe.audit_events` (migration 0009).

The intake API records each state-changing request here: in the action's own transaction when it
succeeds (so a row exists exactly when the action took effect), in a short transaction of its own
when it is refused. Admins read it through GET /v1/audit; `docpipe audit purge` trims it, and is
the only path the table's trigger lets delete (rows older than the cutoff it declares)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from docpipe_queue.jobs import Executor

Connection = asyncpg.Connection | PoolConnectionProxy

Outcome = Literal["ok", "refused", "failed"]
# The state-changing actions of the intake API (`reprocess`: an upload with ?reprocess=true).
ACTIONS = ("upload", "reprocess", "delete", "retry")
OUTCOMES: tuple[Outcome, ...] = ("ok", "refused", "failed")

# The transaction-local setting through which `purge` declares its cutoff to the table's trigger.
PURGE_SETTING = "docpipe.audit_purge_before"
DEFAULT_PURGE_BATCH = 10_000


def outcome_of(status: int) -> Outcome:
    """ok for a success, refused for a 4xx (the caller's request), failed for a 5xx."""
    if status < 400:
        return "ok"
    return "refused" if status < 500 else "failed"


@dataclass(frozen=True, slots=True)
class Event:
    """One request to record: who (`subject`, acting on `owner`'s documents), what, on what, and
    how it ended (`status`, and the error code when it did not succeed)."""

    subject: str
    owner: str
    action: str
    status: int
    request_id: str | None = None
    pipeline: str | None = None
    document_id: uuid.UUID | None = None
    job_id: int | None = None
    error: str | None = None

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.status)


INSERT_EVENT = """
insert into docpipe.audit_events
    (subject, owner, request_id, action, pipeline, document_id, job_id, outcome, status, error)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
returning id
"""


async def record(conn: Executor, event: Event) -> int:
    """Append `event`; its id. Run it on the action's connection, inside its transaction."""
    event_id: int = await conn.fetchval(
        INSERT_EVENT,
        event.subject,
        event.owner,
        event.request_id,
        event.action,
        event.pipeline,
        event.document_id,
        event.job_id,
        event.outcome,
        event.status,
        event.error,
    )
    return event_id


EVENT_COLUMNS = (
    "id, at, subject, owner, request_id, action, pipeline, document_id, job_id, outcome, status,"
    " error"
)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list (None: no condition). `since` is inclusive, `until` exclusive;
    `before_id` is the page cursor: only events older (smaller id) than it."""

    subject: str | None = None
    owner: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None


def list_statement(wanted: EventFilter) -> tuple[str, list[object]]:
    """The listing statement for `wanted` and its parameters, the limit last. Only the conditions
    given are in it, so that the planner can use the subject or owner index for a filter on it."""
    conditions: list[str] = []
    values: list[object] = []
    for column, operator, value in (
        ("subject", "=", wanted.subject),
        ("owner", "=", wanted.owner),
        ("action", "=", wanted.action),
        ("outcome", "=", wanted.outcome),
        ("at", ">=", wanted.since),
        ("at", "<", wanted.until),
        ("id", "<", wanted.before_id),
    ):
        if value is not None:
            values.append(value)
            conditions.append(f"{column} {operator} ${len(values)}")
    where = f"where {' and '.join(conditions)}\n" if conditions else ""
    statement = (
        f"select {EVENT_COLUMNS} from docpipe.audit_events\n{where}"
        f"order by id desc\nlimit ${len(values) + 1}"
    )
    return statement, values


async def list_events(conn: Executor, wanted: EventFilter, *, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` events matching `wanted`, newest (largest id) first."""
    statement, values = list_statement(wanted)
    return list(await conn.fetch(statement, *values, limit))


# -- retention ---------------------------------------------------------------------------------

PURGE_CUTOFF = "select now() - make_interval(secs => $1)"
PURGE_COUNT = "select count(*) from docpipe.audit_events where at < $1"
# Declares the cutoff to the append-only trigger, for this transaction only.
PURGE_DECLARE = f"select set_config('{PURGE_SETTING}', $1::timestamptz::text, true)"
# One batch: the oldest rows first, through audit_events_at.
PURGE_BATCH = """
delete from docpipe.audit_events
where id = any(array(
    select id from docpipe.audit_events where at < $1 order by at limit $2
))
"""


async def purge(
    conn: Connection,
    *,
    older_than_s: float,
    batch_size: int = DEFAULT_PURGE_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete the events recorded more than `older_than_s` ago, in transactions of at most
    `batch_size` rows (each declares the cutoff to the table's trigger, which refuses any
    younger row); return how many. `on_progress(deleted, total)` follows it."""
    if not older_than_s >= 0:
        raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cutoff: datetime = await conn.fetchval(PURGE_CUTOFF, float(older_than_s))
    total: int = await conn.fetchval(PURGE_COUNT, cutoff)
    deleted = 0
    while True:
        async with conn.transaction():
            await conn.execute(PURGE_DECLARE, cutoff)
            status = await conn.execute(PURGE_BATCH, cutoff, batch_size)
        done = int(status.split()[-1])
        deleted += done
        if on_progress is not None:
            on_progress(deleted, max(total, deleted))
        if done < batch_size:
            return deleted


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_age(text: str) -> float:
    """Seconds in an age such as `90d`, `12h`, `30m`, `45s` or `2w`; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an age: a number and a unit, s, m, h, d or w (e.g. 90d, 12h)"
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]
