"""Retention of the audit trail: `docpipe audit purge --older-than AGE` deletes, in batches, the
events recorded before the cutoff and nothing younger; it is the only path the table lets delete."""

from __future__ import annotations

import json

import asyncpg
import pytest

from docpipe_queue import audit
from tests.integration.test_cli import docpipe

# (age in days, subject) of the events each test starts with.
AGES = [(400, "a"), (120, "b"), (91, "c"), (91, "d"), (91, "e"), (89, "f"), (10, "g"), (0, "h")]


async def seed(pool: asyncpg.Pool) -> None:
    await pool.executemany(
        "insert into docpipe.audit_events (at, subject, owner, action, outcome, status)"
        " values (now() - make_interval(days => $1), $2, $2, 'upload', 'ok', 201)",
        AGES,
    )


async def subjects(pool: asyncpg.Pool) -> list[str]:
    return [r[0] for r in await pool.fetch("select subject from docpipe.audit_events order by id")]


async def test_purge_deletes_only_the_events_older_than_the_age(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await seed(pool)
    result = docpipe(
        "audit", "purge", "--older-than", "90d", "--batch-size", "2", "--json", url=database_url
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deleted": 5}
    assert await subjects(pool) == ["f", "g", "h"]
    # Again: nothing left that old.
    again = docpipe("audit", "purge", "--older-than", "90d", url=database_url)
    assert again.returncode == 0, again.stderr
    assert "deleted 0 audit events recorded more than 90d ago" in again.stdout
    assert await subjects(pool) == ["f", "g", "h"]


async def test_purge_works_in_batches_and_reports_progress(pool: asyncpg.Pool) -> None:
    await seed(pool)
    progress: list[tuple[int, int]] = []
    async with pool.acquire() as conn:
        deleted = await audit.purge(
            conn,
            older_than_s=audit.parse_age("2w"),
            batch_size=2,
            on_progress=lambda done, total: progress.append((done, total)),
        )
    assert deleted == 6
    assert progress == [(2, 6), (4, 6), (6, 6), (6, 6)]
    assert await subjects(pool) == ["g", "h"]


async def test_the_purge_cutoff_holds_inside_a_batch(pool: asyncpg.Pool) -> None:
    """The trigger refuses a younger row even in the purge's transaction: a statement that
    reaches past the declared cutoff fails whole."""
    await seed(pool)
    async with pool.acquire() as conn:
        cutoff = await conn.fetchval(audit.PURGE_CUTOFF, audit.parse_age("90d"))
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await _delete_all_declaring(conn, cutoff)
    assert len(await subjects(pool)) == len(AGES)


async def _delete_all_declaring(conn: asyncpg.pool.PoolConnectionProxy, cutoff: object) -> None:
    async with conn.transaction():
        await conn.execute(audit.PURGE_DECLARE, cutoff)
        await conn.execute("delete from docpipe.audit_events")


def test_purge_needs_a_valid_age(database_url: str) -> None:
    missing = docpipe("audit", "purge", url=database_url)
    assert missing.returncode == 2
    assert "--older-than AGE" in missing.stderr
    wrong = docpipe("audit", "purge", "--older-than", "90", url=database_url)
    assert wrong.returncode == 2
    assert "is not an age" in wrong.stderr
    assert "Traceback" not in wrong.stderr + missing.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86_400), ("12h", 43_200), ("30m", 1800), ("45s", 45), ("2w", 1_209_600)],
)
def test_ages(text: str, seconds: float) -> None:
    assert audit.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "d", "-1d", "1y", "1 day"])
def test_not_ages(text: str) -> None:
    with pytest.raises(ValueError, match="is not an age"):
        audit.parse_age(text)
