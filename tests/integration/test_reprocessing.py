"""Reprocessing a revision's output (docpipe_queue.reprocessing, `docpipe documents reprocess`)
against real Postgres: exactly the documents with a chunk of the revision go back to the queue,
once, below new uploads; a worker of another revision then replaces every one of their chunks."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg

from docpipe_queue import jobs as queue
from docpipe_queue.documents import add_document
from docpipe_queue.reprocessing import DEFAULT_SUBJECT, REPROCESS_PRIORITY, reprocess_revision
from tests.integration.test_cli import docpipe
from tests.integration.test_output_quality import (
    PARAGRAPHS,
    PIPELINE,
    Stack,
    add,
    drain,
    stack,
)
from tests.samples import markdown_bytes

__all__ = ["stack"]  # the fixture, used by name


async def processed_by_a_and_b(s: Stack) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Two documents processed by revision A, then one by revision B."""
    of_a = [await add(s.pool, "a1"), await add(s.pool, "a2", owner="bob")]
    await drain(s.pool, s.pipeline("A"))
    of_b = [await add(s.pool, "b1")]
    await drain(s.pool, s.pipeline("B"))
    return of_a, of_b


async def active_jobs(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "select document_id, priority, owner, status from docpipe.jobs"
        " where status in ('queued', 'running') order by document_id"
    )


async def test_reprocessing_a_revision_enqueues_each_of_its_documents_once(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)

    async with stack.pool.acquire() as conn:
        first = await reprocess_revision(conn, revision="A")
        again = await reprocess_revision(conn, revision="A")

    jobs = await active_jobs(stack.pool)
    assert (first, again) == (2, 0)
    assert [j["document_id"] for j in jobs] == sorted(of_a)
    assert {j["priority"] for j in jobs} == {REPROCESS_PRIORITY}
    owners = await stack.pool.fetch(
        "select id, owner, status from docpipe.documents where id = any($1::uuid[])", of_a
    )
    assert {(j["document_id"], j["owner"]) for j in jobs} == {(o["id"], o["owner"]) for o in owners}
    assert {o["status"] for o in owners} == {"pending"}


async def test_after_a_worker_of_another_revision_no_chunk_of_the_revision_remains(
    stack: Stack,
) -> None:
    of_a, of_b = await processed_by_a_and_b(stack)
    before = await stack.pool.fetchval("select count(*) from docpipe.chunks")
    async with stack.pool.acquire() as conn:
        await reprocess_revision(conn, revision="A")

    await drain(stack.pool, stack.pipeline("B"))

    rows = await stack.pool.fetch(
        "select document_id, revision, count(*) from docpipe.chunks group by 1, 2"
    )
    assert {r["revision"] for r in rows} == {"B"}
    assert {r["document_id"] for r in rows} == set(of_a) | set(of_b)
    assert await stack.pool.fetchval("select count(*) from docpipe.chunks") == before
    statuses = await stack.pool.fetch("select distinct status from docpipe.documents")
    assert [s["status"] for s in statuses] == ["processed"]


async def test_a_document_with_a_queued_job_is_left_to_that_job(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)
    async with stack.pool.acquire() as conn:
        again = await add_document(
            conn,
            pipeline=PIPELINE,
            owner="alice",
            filename="a1.md",
            content_type="text/markdown",
            data=markdown_bytes("a1", PARAGRAPHS * 3),
            reprocess=True,
        )
        enqueued = await reprocess_revision(conn, revision="A")

    jobs = await active_jobs(stack.pool)
    assert again.document_id == of_a[0]
    assert enqueued == 1
    assert sorted(j["document_id"] for j in jobs) == sorted(of_a)
    assert [j["priority"] for j in jobs if j["document_id"] == of_a[0]] == [0]


async def test_only_the_pipeline_asked_for_is_reprocessed(stack: Stack) -> None:
    await processed_by_a_and_b(stack)

    async with stack.pool.acquire() as conn:
        elsewhere = await reprocess_revision(conn, revision="A", pipeline="other")
        unknown = await reprocess_revision(conn, revision="C")
        here = await reprocess_revision(conn, revision="A", pipeline=PIPELINE)

    assert (elsewhere, unknown, here) == (0, 0, 2)


async def test_batches_of_one_document_reprocess_every_document(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)

    async with stack.pool.acquire() as conn:
        enqueued = await reprocess_revision(conn, revision="A", batch_size=1)

    assert enqueued == 2
    assert sorted(j["document_id"] for j in await active_jobs(stack.pool)) == sorted(of_a)


async def test_concurrent_reprocessing_enqueues_each_document_once(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)

    async def run() -> int:
        async with stack.pool.acquire() as conn:
            return await reprocess_revision(conn, revision="A", batch_size=1)

    counts = await asyncio.gather(*(run() for _ in range(4)))

    assert sum(counts) == 2
    assert sorted(j["document_id"] for j in await active_jobs(stack.pool)) == sorted(of_a)


async def test_a_new_upload_of_the_owner_is_claimed_before_its_reprocessing(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)
    async with stack.pool.acquire() as conn:
        await reprocess_revision(conn, revision="A")
    new = await add(stack.pool, "new upload")

    claimed = await queue.claim(stack.pool, PIPELINE, 1, lease_s=30, worker="w", after_owner="")

    assert [job.document_id for job in claimed] == [new]
    assert new not in of_a


async def test_each_reprocessed_document_is_recorded_in_the_audit_trail(stack: Stack) -> None:
    of_a, _ = await processed_by_a_and_b(stack)

    async with stack.pool.acquire() as conn:
        await reprocess_revision(conn, revision="A", subject="operator:rollback")
        await reprocess_revision(conn, revision="B")

    rows = await stack.pool.fetch(
        "select a.subject, a.owner, a.action, a.outcome, a.document_id, a.job_id, a.request_id,"
        " j.correlation_id from docpipe.audit_events a join docpipe.jobs j on j.id = a.job_id"
        " order by a.id"
    )
    assert [(r["subject"], r["action"], r["outcome"]) for r in rows] == [
        ("operator:rollback", "reprocess", "ok"),
        ("operator:rollback", "reprocess", "ok"),
        (DEFAULT_SUBJECT, "reprocess", "ok"),
    ]
    assert {r["document_id"] for r in rows[:2]} == set(of_a)
    assert {r["owner"] for r in rows[:2]} == {"alice", "bob"}
    assert all(r["request_id"] == r["correlation_id"] for r in rows)
    assert rows[0]["request_id"] == rows[1]["request_id"] != rows[2]["request_id"]


async def test_the_command_reprocesses_a_revision_and_says_how_many(
    stack: Stack, database_url: str
) -> None:
    of_a, _ = await processed_by_a_and_b(stack)

    first = await asyncio.to_thread(
        docpipe, "documents", "reprocess", "--revision", "A", "--json", url=database_url
    )
    again = await asyncio.to_thread(
        docpipe, "documents", "reprocess", "--revision", "A", "--pipeline", PIPELINE,
        url=database_url,
    )  # fmt: skip
    missing = await asyncio.to_thread(docpipe, "documents", "reprocess", url=database_url)

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"revision": "A", "pipeline": None, "enqueued": 2}
    assert again.stdout.strip() == (
        f"re-enqueued 0 documents with chunks of revision A in pipeline {PIPELINE}"
    )
    assert missing.returncode == 2
    assert "needs --revision R" in missing.stderr
    subjects = await stack.pool.fetch("select distinct subject from docpipe.audit_events")
    assert [s["subject"].startswith("cli:") for s in subjects] == [True]
    assert len(await active_jobs(stack.pool)) == len(of_a)
