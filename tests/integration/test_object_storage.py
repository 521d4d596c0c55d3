"""Originals in S3-compatible object storage (`DOCPIPE_ORIGINALS_STORE=s3`) against moto's real S3
server over HTTP: the intake API puts the upload's bytes in the bucket and the database keeps only
the hash and the key; the worker's load stage reads them back from the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import aiohttp
import asyncpg
import pytest

from docpipe_api.auth import mint_token
from docpipe_api.server import open_api
from docpipe_contracts.errors import PermanentError
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import OpenAIEmbedder
from docpipe_providers.object_storage import ObjectStorageConfig, ObjectStore, storage_config
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS
from tests.integration.api.conftest import SECRET, api_settings
from tests.support.mocks import serve
from tests.support.object_storage import KEY_ID, SECRET_KEY


async def test_an_object_put_is_read_back(store: ObjectStore) -> None:
    key = store.key_for("default", "alice@example.org", "ab" * 32)
    await store.put(key, b"\x00original bytes\xff")
    assert await store.get(key) == b"\x00original bytes\xff"


async def test_a_missing_object_is_a_permanent_error(store: ObjectStore) -> None:
    with pytest.raises(PermanentError) as refused:
        await store.get("originals/none/such")
    assert refused.value.status == 404


async def test_an_object_deleted_is_gone(store: ObjectStore) -> None:
    key = store.key_for("default", "alice@example.org", "ef" * 32)
    await store.put(key, b"to be deleted")
    await store.delete(key)
    with pytest.raises(PermanentError) as refused:
        await store.get(key)
    assert refused.value.status == 404


async def test_deleting_an_object_already_gone_succeeds(store: ObjectStore) -> None:
    await store.delete("originals/none/such")


async def test_a_delete_the_store_refuses_is_an_error(config: ObjectStorageConfig) -> None:
    async with aiohttp.ClientSession() as session:
        # A bucket never created: S3 answers 404 NoSuchBucket, which is not "the object is gone".
        objects = ObjectStore(session, config)
        with pytest.raises(PermanentError):
            await objects.delete("originals/none/such")


async def test_owners_never_share_a_key(store: ObjectStore) -> None:
    digest = "cd" * 32
    assert store.key_for("p", "alice", digest) != store.key_for("p", "bob", digest)


def test_s3_without_a_bucket_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DOCPIPE_S3_BUCKET"):
        storage_config(
            "s3",
            endpoint_url=None,
            bucket=None,
            region="us-east-1",
            prefix="originals/",
            access_key_id="k",
            secret_access_key="s",
        )


async def test_uploads_go_to_the_bucket_and_the_worker_reads_them_from_there(
    database_url: str, pool: asyncpg.Pool, config: ObjectStorageConfig, store: ObjectStore
) -> None:
    data = f"# Tides\n\nHigh water at the harbour {uuid.uuid4().hex} comes twice a day.\n".encode()
    async with serve("127.0.0.1", 0, MockConfig()) as mocks:
        settings = api_settings(
            database_url,
            mocks,
            originals_store="s3",
            s3_endpoint_url=config.endpoint_url,
            s3_bucket=config.bucket,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET_KEY,
        )
        async with open_api(settings) as running, aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="tides.md", content_type="text/markdown")
            token = mint_token(SECRET, subject="alice", scopes=["write"])
            async with session.post(
                f"{running.url}/v1/pipelines/default/documents",
                data=form,
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == 201, await response.text()
                document_id = uuid.UUID((await response.json())["document"]["id"])
            row = await pool.fetchrow(
                "select content, content_key, sha256 from docpipe.documents where id = $1",
                document_id,
            )
            assert row is not None
            assert row["content"] is None
            assert row["sha256"] == hashlib.sha256(data).hexdigest()
            assert await store.get(row["content_key"]) == data

            pipeline = IngestPipeline(
                pool,
                LocalParser(),
                OpenAIEmbedder(
                    session,
                    api_key="test",
                    base_url=f"{mocks}/v1",
                    dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
                ),
                chunking=ChunkingConfig(),
                dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
                revision="test",
                originals=ObjectStore(session, config),
            )
            consumer = Consumer(
                pool, pipeline, ConsumerConfig(pipeline="default", poll_interval_s=0.05)
            )
            task = asyncio.create_task(consumer.run())
            try:
                for _ in range(200):
                    status = await pool.fetchval(
                        "select status from docpipe.documents where id = $1", document_id
                    )
                    if status in ("processed", "failed"):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await consumer.drain(grace_s=2)
                await task
    assert status == "processed"
    chunks = await pool.fetch(
        "select content from docpipe.chunks where document_id = $1", document_id
    )
    assert any("High water at the harbour" in r["content"] for r in chunks)


async def test_a_worker_without_object_storage_fails_a_document_kept_there_clearly(
    pool: asyncpg.Pool,
) -> None:
    from docpipe_queue import jobs
    from docpipe_queue.documents import add_document

    async with pool.acquire() as conn:
        await add_document(
            conn,
            pipeline="default",
            owner="alice",
            filename="tides.md",
            content_type="text/markdown",
            data=b"# Tides\n",
            content_key="originals/default/x/abc",
        )
    (job,) = await jobs.claim(pool, "default", 1, lease_s=30, worker="test")
    async with aiohttp.ClientSession() as session:
        pipeline = IngestPipeline(
            pool,
            LocalParser(),
            OpenAIEmbedder(session, api_key="k", dimensions=DEFAULT_EMBEDDING_DIMENSIONS),
            chunking=ChunkingConfig(),
            dimensions=DEFAULT_EMBEDDING_DIMENSIONS,
            revision="test",
        )
        with pytest.raises(PermanentError, match="DOCPIPE_ORIGINALS_STORE=s3"):
            await pipeline(job)
