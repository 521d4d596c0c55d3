"""Deleting a document deletes its original in object storage (DOCPIPE_ORIGINALS_STORE=s3), against
moto's real S3 server and the intake API over HTTP: at once when the store answers, later by the
workers' sweep when it does not; an upload of the same content cancels a deletion still pending
and puts its object again when a purge may have deleted it under it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from docpipe_api.server import open_api
from docpipe_contracts.errors import PermanentError
from docpipe_providers import original_purge
from docpipe_providers.object_storage import ObjectStorageConfig, ObjectStore, pipeline_key_prefix
from docpipe_providers.original_purge import Purge
from docpipe_queue import original_deletions
from tests.integration.api.conftest import Api, api_settings, process_pending, unique_markdown
from tests.support.object_storage import KEY_ID, SECRET_KEY
from tests.support.ports import free_port

PENDING = "select * from docpipe.original_deletions where purged_at is null"


def s3_settings(config: ObjectStorageConfig, endpoint_url: str | None = None) -> dict[str, str]:
    return {
        "originals_store": "s3",
        "s3_endpoint_url": endpoint_url or config.endpoint_url,
        "s3_bucket": config.bucket,
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET_KEY,
    }


@pytest.fixture
async def s3_api(
    database_url: str, pool: asyncpg.Pool, mocks: str, config: ObjectStorageConfig
) -> AsyncIterator[Api]:
    """The intake API with its originals in the test's bucket."""
    settings = api_settings(database_url, mocks, **s3_settings(config))
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, pool, running)


@pytest.fixture
async def unreachable_api(
    database_url: str, pool: asyncpg.Pool, mocks: str, config: ObjectStorageConfig
) -> AsyncIterator[Api]:
    """The same API, except that nothing listens where it looks for the object storage."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = api_settings(database_url, mocks, **s3_settings(config, dead))
    async with open_api(settings) as running, aiohttp.ClientSession() as session:
        yield Api(running.url, mocks, session, pool, running)


async def upload(api: Api, data: bytes) -> tuple[uuid.UUID, str]:
    """Upload `data` as alice; the new document's id and the key of its original."""
    status, body = await api.upload(data)
    assert status == 201, body
    document_id = uuid.UUID(body["document"]["id"])
    key = await api.pool.fetchval(
        "select content_key from docpipe.documents where id = $1", document_id
    )
    assert key is not None
    return document_id, key


async def delete(api: Api, document_id: uuid.UUID) -> None:
    status, body, _ = await api.call("DELETE", f"/v1/documents/{document_id}")
    assert status == 204, body


async def assert_gone(store: ObjectStore, key: str) -> None:
    with pytest.raises(PermanentError) as missing:
        await store.get(key)
    assert missing.value.status == 404


async def deleted_while_unreachable(
    s3_api: Api, unreachable_api: Api, title: str
) -> tuple[uuid.UUID, bytes, str]:
    """A document uploaded, then deleted while its API could not reach the store (its
    deletion pending): its id, content and key."""
    data = unique_markdown(title)
    document_id, key = await upload(s3_api, data)
    await delete(unreachable_api, document_id)
    return document_id, data, key


async def make_due(pool: asyncpg.Pool) -> None:
    """As if every failed deletion's retry time had come."""
    await pool.execute("update docpipe.original_deletions set next_attempt_at = now()")


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_deleting_a_processed_document_deletes_its_original(
    s3_api: Api, store: ObjectStore
) -> None:
    data = unique_markdown("Tides")
    document_id, key = await upload(s3_api, data)
    await process_pending(s3_api, originals=store)
    assert (
        await s3_api.pool.fetchval(
            "select status from docpipe.documents where id = $1", document_id
        )
        == "processed"
    )
    deleted_before = counted("docpipe_originals_deleted_total")

    await delete(s3_api, document_id)

    await assert_gone(store, key)
    assert await s3_api.pool.fetch(PENDING) == []
    marker = await s3_api.pool.fetchrow(
        "select purged_at, attempts from docpipe.original_deletions where content_key = $1", key
    )
    assert marker is not None
    assert marker["purged_at"] is not None
    assert marker["attempts"] == 0
    assert counted("docpipe_originals_deleted_total") == deleted_before + 1


async def test_a_delete_while_the_store_is_unreachable_is_purged_by_the_sweep(
    s3_api: Api, unreachable_api: Api, store: ObjectStore
) -> None:
    failures_before = counted("docpipe_original_deletion_failures_total")

    document_id, data, key = await deleted_while_unreachable(s3_api, unreachable_api, "Harbour")

    assert (
        await s3_api.pool.fetchval(
            "select count(*) from docpipe.documents where id = $1", document_id
        )
        == 0
    )
    (row,) = await s3_api.pool.fetch(PENDING + " and next_attempt_at > now()")
    assert row["content_key"] == key
    assert row["attempts"] == 1
    assert "127.0.0.1" in row["last_error"]
    assert counted("docpipe_original_deletion_failures_total") == failures_before + 1
    assert await store.get(key) == data

    prefix = pipeline_key_prefix(store.config.prefix, "default")
    # Before its retry is due, a sweep leaves it.
    assert await original_purge.sweep(s3_api.pool, store, prefix) == []
    assert await store.get(key) == data

    await make_due(s3_api.pool)
    assert await original_purge.sweep(s3_api.pool, store, prefix) == [Purge.DELETED]
    await assert_gone(store, key)
    assert await s3_api.pool.fetch(PENDING) == []
    assert await s3_api.pool.fetchval(
        "select purged_at is not null from docpipe.original_deletions where content_key = $1", key
    )


async def test_a_sweep_covers_only_its_pipelines_keys(
    s3_api: Api, unreachable_api: Api, store: ObjectStore
) -> None:
    _, _, key = await deleted_while_unreachable(s3_api, unreachable_api, "Quays")
    await make_due(s3_api.pool)

    other = pipeline_key_prefix(store.config.prefix, "other")
    assert await original_purge.sweep(s3_api.pool, store, other) == []
    assert [r["content_key"] for r in await s3_api.pool.fetch(PENDING)] == [key]


async def test_a_reupload_before_the_purge_cancels_the_deletion(
    s3_api: Api, unreachable_api: Api, store: ObjectStore
) -> None:
    document_id, data, key = await deleted_while_unreachable(s3_api, unreachable_api, "Moorings")
    assert len(await s3_api.pool.fetch(PENDING)) == 1

    again, again_key = await upload(s3_api, data)

    assert again != document_id
    assert again_key == key
    assert await s3_api.pool.fetchval("select count(*) from docpipe.original_deletions") == 0
    prefix = pipeline_key_prefix(store.config.prefix, "default")
    assert await original_purge.sweep(s3_api.pool, store, prefix) == []
    assert await store.get(key) == data


async def test_a_deletion_of_a_key_a_document_names_again_is_dropped_and_the_object_kept(
    s3_api: Api, store: ObjectStore
) -> None:
    # As when the document came back through a path that did not cancel the deletion (an API
    # of a release before the outbox, during an upgrade).
    data = unique_markdown("Slipways")
    _, key = await upload(s3_api, data)
    await original_deletions.request_deletion(s3_api.pool, key)

    assert await original_purge.purge(s3_api.pool, store, key) is Purge.IN_USE

    assert await s3_api.pool.fetchval("select count(*) from docpipe.original_deletions") == 0
    assert await store.get(key) == data


async def test_an_upload_racing_a_purge_of_its_key_puts_its_object_again(
    s3_api: Api, unreachable_api: Api, store: ObjectStore
) -> None:
    _, data, key = await deleted_while_unreachable(s3_api, unreachable_api, "Breakwaters")
    await make_due(s3_api.pool)

    # A purge takes the key's row, as original_purge.purge does...
    async with s3_api.pool.acquire() as purging:
        transaction = purging.transaction()
        await transaction.start()
        try:
            assert await original_deletions.lock_due(purging, key) == 1
            # ...the same content is uploaded meanwhile: its PUT and insert done, it waits for
            # the row...
            uploading = asyncio.create_task(s3_api.upload(data))
            async with asyncio.timeout(10):
                while not await s3_api.pool.fetchval(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                    " and query like '%original_deletions%'"
                ):
                    assert not uploading.done(), uploading.result()
                    await asyncio.sleep(0.02)
            # ...and the purge, which cannot see the uncommitted document, deletes the object.
            assert not await original_deletions.in_use(purging, key)
            await store.delete(key)
            await original_deletions.mark_purged(purging, key)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()

    status, body = await uploading
    assert status == 201, body
    assert await store.get(key) == data
    assert await s3_api.pool.fetchval("select count(*) from docpipe.original_deletions") == 0


async def test_the_sweep_forgets_markers_purged_more_than_a_day_ago(
    pool: asyncpg.Pool, store: ObjectStore
) -> None:
    await pool.execute(
        "insert into docpipe.original_deletions (content_key, purged_at) values"
        " ('originals/default/a/old', now() - interval '25 hours'),"
        " ('originals/default/a/recent', now() - interval '23 hours')"
    )
    await original_purge.sweep(pool, store, pipeline_key_prefix(store.config.prefix, "default"))
    keys = await pool.fetch("select content_key from docpipe.original_deletions")
    assert [r["content_key"] for r in keys] == ["originals/default/a/recent"]


async def test_the_workers_sweep_loop_purges_and_exports_the_pending_count(
    pool: asyncpg.Pool, store: ObjectStore
) -> None:
    key = store.key_for("default", "alice", "ab" * 32)
    await store.put(key, b"an original of a deleted document")
    await pool.execute(
        "insert into docpipe.original_deletions (content_key, next_attempt_at)"
        " values ($1, now() + interval '1 hour')",
        key,
    )
    sweeping = asyncio.create_task(original_purge.run(pool, store, "default", interval_s=0.05))
    try:
        async with asyncio.timeout(10):
            while counted("docpipe_original_deletions_pending", pipeline="default") != 1:
                await asyncio.sleep(0.02)
            assert await store.get(key) == b"an original of a deleted document"
            await make_due(pool)
            while counted("docpipe_original_deletions_pending", pipeline="default") != 0:
                await asyncio.sleep(0.02)
    finally:
        sweeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweeping
    await assert_gone(store, key)
