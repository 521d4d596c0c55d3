"""Cost accounting end to end: documents processed by the real pipeline against the mock services
store the tokens and pages the mocks reported; the intake API's document detail shows them;
`docpipe usage` sums them per owner and per pipeline, with cost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from docpipe_api.server import open_api
from docpipe_ingest.parsers import LocalParser
from docpipe_ingest.pipeline import ChunkingConfig, IngestPipeline, Parser
from docpipe_mocks.llamaparse import LlamaParseSettings
from docpipe_mocks.openai import estimate_tokens
from docpipe_mocks.server import MockConfig
from docpipe_providers.embeddings import DEFAULT_MODEL, OpenAIEmbedder
from docpipe_providers.llamaparse import LlamaParseClient
from docpipe_queue.consumer import Consumer, ConsumerConfig
from docpipe_queue.documents import add_document
from docpipe_queue.migrator import DEFAULT_EMBEDDING_DIMENSIONS, load_migrations, migrate
from docpipe_queue.retry import RetryPolicy
from tests.integration.api.conftest import api_settings
from tests.samples import markdown_bytes
from tests.support.mocks import serve

DIMS = DEFAULT_EMBEDDING_DIMENSIONS
KEY = "usage-test-key"
PARAGRAPHS = [
    "Harbour seals rest on sandbanks at low tide and hunt flatfish when the water returns.",
    "Volunteers count the seals every August from the dunes with binoculars and notebooks.",
]


def pdf_pages(pages: int) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for page in range(pages):
        pdf.add_page()
        for paragraph in PARAGRAPHS:
            pdf.multi_cell(0, 8, f"Page {page + 1}. {paragraph}")
            pdf.ln(4)
    return bytes(pdf.output())


@dataclass
class Stack:
    pool: asyncpg.Pool
    session: aiohttp.ClientSession
    mocks: str

    def pipeline(self, parser: Parser) -> IngestPipeline:
        embedder = OpenAIEmbedder(
            self.session,
            api_key=KEY,
            base_url=f"{self.mocks}/v1",
            dimensions=DIMS,
            request_timeout=5.0,
            max_batch_inputs=4,  # several embedding requests per document
        )
        return IngestPipeline(
            self.pool,
            parser,
            embedder,
            chunking=ChunkingConfig(max_chars=200, overlap_chars=20),
            dimensions=DIMS,
            revision="test",
        )

    def llamaparse(self) -> LlamaParseClient:
        return LlamaParseClient(
            self.session, api_key=KEY, base_url=self.mocks, poll_interval=0.02, request_timeout=5
        )

    async def mock_usage(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the mocks served this test's key: (openai, llamaparse)."""
        async with self.session.get(f"{self.mocks}/_admin/stats") as response:
            assert response.status == 200
            quotas = (await response.json())["quotas"]
        return quotas["openai"].get(KEY, {}), quotas["llamaparse"].get(KEY, {})


@pytest.fixture
async def stack(pool: asyncpg.Pool) -> AsyncIterator[Stack]:
    config = MockConfig(llamaparse=LlamaParseSettings(pending_polls=1))
    async with serve("127.0.0.1", 0, config) as url, aiohttp.ClientSession() as session:
        yield Stack(pool, session, url)


async def add(
    pool: asyncpg.Pool,
    data: bytes,
    *,
    pipeline: str = "docs",
    owner: str = "alice",
    filename: str = "notes.md",
    content_type: str = "text/markdown",
    reprocess: bool = False,
) -> uuid.UUID:
    async with pool.acquire() as conn:
        added = await add_document(
            conn,
            pipeline=pipeline,
            owner=owner,
            filename=filename,
            content_type=content_type,
            data=data,
            reprocess=reprocess,
        )
    return added.document_id


async def drain(
    stack: Stack, handler: IngestPipeline, pipeline: str, timeout_s: float = 30
) -> None:
    """Run a consumer of `pipeline` until none of its jobs is queued or running."""
    consumer = Consumer(
        stack.pool,
        handler,
        ConsumerConfig(
            pipeline=pipeline,
            concurrency=4,
            poll_interval_s=0.05,
            retry_policy=RetryPolicy(base_s=0.05, cap_s=0.2),
        ),
    )
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while await stack.pool.fetchval(
            "select count(*) from docpipe.jobs where pipeline = $1"
            " and status in ('queued', 'running')",
            pipeline,
        ):
            assert time.monotonic() < deadline, "jobs still unfinished"
            await asyncio.sleep(0.05)
    finally:
        await consumer.drain(grace_s=2)
        await task
    failed = await stack.pool.fetch(
        "select filename, error from docpipe.documents where pipeline = $1 and status <> "
        "'processed'",
        pipeline,
    )
    assert not failed, [tuple(r) for r in failed]


async def usage_row(pool: asyncpg.Pool, doc_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow("select * from docpipe.document_usage where document_id = $1", doc_id)
    assert row is not None, f"no usage stored for {doc_id}"
    return row


async def mock_tokens_of_chunks(pool: asyncpg.Pool, doc_id: uuid.UUID) -> int:
    """The tokens the mock's `usage` reports for the chunks the document was embedded as."""
    contents = await pool.fetch("select content from docpipe.chunks where document_id = $1", doc_id)
    return sum(estimate_tokens(r["content"]) for r in contents)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Processed:
    ids: dict[str, uuid.UUID]


async def process_three_documents(stack: Stack) -> Processed:
    """alice: a 3-page PDF and a markdown document in `docs` (LlamaParse); bob: one markdown
    document in `notes` (local parser, no pages)."""
    ids = {
        "pdf": await add(
            stack.pool, pdf_pages(3), filename="seals.pdf", content_type="application/pdf"
        ),
        "md": await add(stack.pool, markdown_bytes("Seal survey", PARAGRAPHS * 4)),
        "bob": await add(
            stack.pool, markdown_bytes("Tides", PARAGRAPHS * 2), pipeline="notes", owner="bob"
        ),
    }
    await drain(stack, stack.pipeline(stack.llamaparse()), "docs")
    await drain(stack, stack.pipeline(LocalParser()), "notes")
    return Processed(ids)


async def test_stored_usage_is_what_the_mock_providers_reported(stack: Stack) -> None:
    tokens_before = sample("docpipe_usage_tokens_total", pipeline="docs", model=DEFAULT_MODEL)
    pages_before = sample("docpipe_usage_pages_total", pipeline="docs")
    processed = await process_three_documents(stack)
    ids = processed.ids

    rows = {name: await usage_row(stack.pool, doc_id) for name, doc_id in ids.items()}
    for name, doc_id in ids.items():
        row = rows[name]
        assert row["embedding_tokens"] == await mock_tokens_of_chunks(stack.pool, doc_id), name
        assert row["embedding_model"] == DEFAULT_MODEL
        chunks = await stack.pool.fetchval(
            "select chunk_count from docpipe.documents where id = $1", doc_id
        )
        embed_requests = -(-chunks // 4)  # batches of 4 inputs
        parse_requests = 0 if name == "bob" else 1
        assert row["provider_requests"] == embed_requests + parse_requests, name
    assert [rows[n]["parsed_pages"] for n in ("pdf", "md", "bob")] == [3, 1, 0]
    assert (rows["pdf"]["owner"], rows["pdf"]["pipeline"]) == ("alice", "docs")
    assert (rows["bob"]["owner"], rows["bob"]["pipeline"]) == ("bob", "notes")

    # The mocks' own ledger of this key agrees with the sums.
    openai, llamaparse = await stack.mock_usage()
    assert sum(r["embedding_tokens"] for r in rows.values()) == openai["tokens"]
    assert sum(r["parsed_pages"] for r in rows.values()) == llamaparse["pages"] == 4
    assert sum(r["provider_requests"] for r in rows.values()) == (
        openai["requests"] + llamaparse["uploads"]
    )

    # And the counters were incremented by the stored totals.
    docs_tokens = rows["pdf"]["embedding_tokens"] + rows["md"]["embedding_tokens"]
    after = sample("docpipe_usage_tokens_total", pipeline="docs", model=DEFAULT_MODEL)
    assert after - tokens_before == docs_tokens
    assert sample("docpipe_usage_pages_total", pipeline="docs") - pages_before == 4


async def test_reprocessing_replaces_the_figures_and_deleting_keeps_them(stack: Stack) -> None:
    data = markdown_bytes("Seal survey", PARAGRAPHS * 3)
    doc_id = await add(stack.pool, data)
    await drain(stack, stack.pipeline(stack.llamaparse()), "docs")
    first = await usage_row(stack.pool, doc_id)

    assert await add(stack.pool, data, reprocess=True) == doc_id
    await drain(stack, stack.pipeline(LocalParser()), "docs")
    second = await usage_row(stack.pool, doc_id)
    assert await stack.pool.fetchval("select count(*) from docpipe.document_usage") == 1
    # The same chunks, embedded again: the same tokens; parsed locally this time: no pages.
    assert second["embedding_tokens"] == first["embedding_tokens"]
    assert (first["parsed_pages"], second["parsed_pages"]) == (1, 0)
    assert second["provider_requests"] == first["provider_requests"] - 1
    assert second["recorded_at"] > first["recorded_at"]

    await stack.pool.execute("delete from docpipe.documents where id = $1", doc_id)
    assert (await usage_row(stack.pool, doc_id))["embedding_tokens"] == first["embedding_tokens"]


async def test_a_store_that_lost_its_lease_records_no_usage(stack: Stack) -> None:
    doc_id = await add(stack.pool, markdown_bytes("Seal survey", PARAGRAPHS))
    handler = stack.pipeline(LocalParser())
    original = handler._store

    stored = asyncio.Event()

    async def lose_the_lease_first(*args: Any) -> None:
        await stack.pool.execute(
            "update docpipe.jobs set lease_token = gen_random_uuid() where document_id = $1",
            doc_id,
        )
        try:
            await original(*args)
        finally:
            stored.set()

    handler._store = lose_the_lease_first  # type: ignore[method-assign, assignment]
    consumer = Consumer(
        stack.pool,
        handler,
        ConsumerConfig(pipeline="docs", concurrency=1, poll_interval_s=0.05),
    )
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(20):
            await stored.wait()
    finally:
        await consumer.drain(grace_s=1)
        await task
    assert await stack.pool.fetchval("select count(*) from docpipe.chunks") == 0
    assert await stack.pool.fetchval("select count(*) from docpipe.document_usage") == 0


async def test_the_document_detail_shows_usage_and_its_cost(
    stack: Stack, database_url: str
) -> None:
    from docpipe_api.auth import mint_token
    from tests.integration.api.conftest import SECRET

    ids = (await process_three_documents(stack)).ids
    pending = await add(stack.pool, markdown_bytes("Later", ["Not processed yet."]))
    row = await usage_row(stack.pool, ids["pdf"])
    settings = api_settings(
        database_url,
        stack.mocks,
        pipelines="docs,notes",
        price_per_million_tokens=0.02,
        price_per_thousand_pages=3.0,
    )
    headers = {"Authorization": f"Bearer {mint_token(SECRET, subject='alice', scopes=['read'])}"}
    async with open_api(settings) as running:
        async with stack.session.get(
            f"{running.url}/v1/documents/{ids['pdf']}", headers=headers
        ) as response:
            assert response.status == 200
            body = await response.json()
        async with stack.session.get(
            f"{running.url}/v1/documents/{pending}", headers=headers
        ) as response:
            assert response.status == 200
            unprocessed = await response.json()
        # Another owner's document stays invisible, usage and all.
        async with stack.session.get(
            f"{running.url}/v1/documents/{ids['bob']}", headers=headers
        ) as response:
            assert response.status == 404

    tokens = row["embedding_tokens"]
    assert body["status"] == "processed"
    assert body["usage"] == {
        "tokens": tokens,
        "pages": 3,
        "requests": row["provider_requests"],
        "model": DEFAULT_MODEL,
        "cost": round(tokens * 0.02 / 1_000_000 + 3 * 3.0 / 1000, 9),
    }
    assert unprocessed["usage"] is None

    # Without prices the figures are shown and the cost is null.
    unpriced_settings = api_settings(database_url, stack.mocks, pipelines="docs")
    async with open_api(unpriced_settings) as running:
        url = f"{running.url}/v1/documents/{ids['pdf']}"
        async with stack.session.get(url, headers=headers) as response:
            unpriced = await response.json()
    assert unpriced["usage"]["tokens"] == tokens
    assert unpriced["usage"]["cost"] is None


def docpipe(
    *args: str, url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DOCPIPE_PRICE_PER_")}
    return subprocess.run(
        [sys.executable, "-m", "docpipe_cli.main", *args],
        env={**clean, "DATABASE_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_docpipe_usage_sums_per_owner_and_per_pipeline_with_cost(
    stack: Stack, database_url: str
) -> None:
    ids = (await process_three_documents(stack)).ids
    rows = {name: await usage_row(stack.pool, doc_id) for name, doc_id in ids.items()}
    alice_tokens = rows["pdf"]["embedding_tokens"] + rows["md"]["embedding_tokens"]
    bob_tokens = rows["bob"]["embedding_tokens"]

    by_owner = docpipe(
        "usage", "--by", "owner", "--price-per-million-tokens", "0.02",
        "--price-per-thousand-pages", "3", "--json", url=database_url,
    )  # fmt: skip
    assert by_owner.returncode == 0, by_owner.stderr
    report = json.loads(by_owner.stdout)
    lines = {line["key"]: line for line in report["rows"]}
    assert lines["alice"]["tokens"] == alice_tokens
    assert lines["alice"]["pages"] == 4
    assert lines["alice"]["documents"] == 2
    assert lines["alice"]["models"] == [DEFAULT_MODEL]
    assert lines["alice"]["cost"] == round(alice_tokens * 0.02 / 1e6 + 4 * 3 / 1000, 9)
    assert (lines["bob"]["tokens"], lines["bob"]["pages"]) == (bob_tokens, 0)
    assert lines["bob"]["cost"] == round(bob_tokens * 0.02 / 1e6, 9)
    assert report["total"]["tokens"] == alice_tokens + bob_tokens
    assert report["total"]["requests"] == sum(r["provider_requests"] for r in rows.values())

    # Prices from the environment; per pipeline; as a table.
    by_pipeline = docpipe(
        "usage", "--by", "pipeline", "--since", "1d", url=database_url,
        env={"DOCPIPE_PRICE_PER_MILLION_TOKENS": "1000"},
    )  # fmt: skip
    assert by_pipeline.returncode == 0, by_pipeline.stderr
    table = by_pipeline.stdout.splitlines()
    assert table[0].split() == ["pipeline", "documents", "tokens", "pages", "requests", "cost"]
    docs = next(line.split() for line in table if line.startswith("docs "))
    assert docs[:4] == ["docs", "2", str(alice_tokens), "4"]
    assert float(docs[5]) == pytest.approx(alice_tokens * 1000 / 1e6)
    assert "1000 per million tokens" in table[-1]

    # --since after everything was recorded: nothing.
    future = docpipe("usage", "--by", "owner", "--since", "2999-01-01", "--json", url=database_url)
    assert future.returncode == 0, future.stderr
    empty = json.loads(future.stdout)
    assert (empty["rows"], empty["total"]["tokens"], empty["total"]["cost"]) == ([], 0, None)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--since", "last tuesday"], {}, "--since must be a date"),
        (["--price-per-million-tokens", "-1"], {}, "--price-per-million-tokens must be a finite"),
        (
            [],
            {"DOCPIPE_PRICE_PER_THOUSAND_PAGES": "cheap"},
            "DOCPIPE_PRICE_PER_THOUSAND_PAGES must",
        ),
        (["--by", "model"], {}, "invalid choice: 'model'"),
    ],
)
def test_docpipe_usage_refuses_bad_input_clearly(
    database_url: str, args: list[str], env: dict[str, str], message: str
) -> None:
    if "--by" not in args:
        args = ["--by", "owner", *args]
    result = docpipe("usage", *args, url=database_url, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_database_from_before_cost_accounting_upgrades_in_place(
    empty_database_url: str,
) -> None:
    older = [m for m in load_migrations() if m.version < 4]
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, older)
        doc_id = await conn.fetchval(
            "insert into docpipe.documents"
            " (pipeline, owner, filename, content_type, size_bytes, sha256, content, status)"
            " values ('docs', 'alice', 'a.md', 'text/markdown', 1, 'x', 'x', 'processed')"
            " returning id"
        )
        upto_usage = [m for m in load_migrations() if m.version <= 4]
        assert await migrate(conn, upto_usage) == ["0004_usage.sql"]
        await migrate(conn)  # and whatever came after
        assert await conn.fetchval("select count(*) from docpipe.document_usage") == 0
        assert (
            await conn.fetchval("select status from docpipe.documents where id = $1", doc_id)
            == "processed"
        )
    finally:
        await conn.close()
    result = docpipe("usage", "--by", "owner", "--json", url=empty_database_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == []
