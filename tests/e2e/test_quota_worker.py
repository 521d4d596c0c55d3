"""A rate limit is not a failure (issue 13): real `docpipe worker` processes against the mocks,
through a storm of 429s and through an account out of credit, lose no document and spend no
attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from docpipe_cli.devstack import free_port
from docpipe_mocks.faults import FaultConfig, ServiceFaults
from docpipe_mocks.quotas import OpenAIQuotas, QuotaConfig
from docpipe_mocks.server import MockConfig
from tests.e2e.test_worker_process import (
    add_documents,
    processed_all,
    spawn_worker,
    stop,
    wait_until,
)
from tests.support.mocks import serve


async def metric(port: int, name: str, **labels: str) -> float | None:
    """The sum of the worker's samples of `name` matching `labels`; None if it has none."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


async def mock_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_admin/stats") as response:
        body: dict[str, Any] = await response.json()
    return body


async def put_quotas(url: str, quotas: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{url}/_admin/quotas", json=quotas) as response,
    ):
        assert response.status == 200, await response.text()


async def job_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("select status, attempts, last_error from docpipe.jobs order by id")


def gauge_is(port: int, name: str, value: float, **labels: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return await metric(port, name, **labels) == value
        except (aiohttp.ClientError, OSError):
            return False  # not serving yet

    return check


async def test_a_storm_of_429s_spends_no_attempt_and_kills_no_document(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    total = 30
    storm = MockConfig(
        faults=FaultConfig(openai=ServiceFaults(rate_limit_rate=0.6, retry_after_seconds=1))
    )
    async with serve("127.0.0.1", 0, storm) as url:
        await add_documents(pool, total)
        port = free_port()
        log = tmp_path / "worker.log"
        # One request per document, so that the storm is many requests long: shared requests
        # would carry all 30 documents in a handful, and a handful of 60 % 429s proves little.
        proc = await spawn_worker(
            database_url,
            url,
            port,
            log,
            DOCPIPE_CONCURRENCY="8",
            DOCPIPE_EMBEDDING_SHARED_REQUESTS="false",
        )
        try:
            await wait_until(processed_all(pool, total), 120, "every document processed")
            rate_limited = await metric(port, "docpipe_quota_rate_limited_total", pipeline="p")
            retried = await metric(port, "docpipe_jobs_retried_total", pipeline="p")
            dead = await metric(port, "docpipe_jobs_dead_total", pipeline="p")
            waited = await metric(port, "docpipe_quota_wait_seconds_total", pipeline="p")
        finally:
            await stop(proc)
        requests = (await mock_stats(url))["requests"]["POST /v1/embeddings"]

    assert requests.get("429", 0) >= 10, f"the storm happened: {requests}"
    assert requests["200"] >= total
    rows = await job_rows(pool)
    assert [r["status"] for r in rows] == ["succeeded"] * total, log.read_text()[-3000:]
    assert {r["attempts"] for r in rows} == {1}, "no 429 used up an attempt"
    assert all(r["last_error"] is None for r in rows), "no 429 was recorded as a failure"
    failed = await pool.fetchval(
        "select count(*) from docpipe.documents where status <> 'processed'"
    )
    assert failed == 0
    assert rate_limited == requests["429"], "every 429 was counted as a rate limit"
    assert waited is not None
    assert waited >= 1.0, "the retry-afters were waited out"
    assert not retried
    assert not dead


async def test_insufficient_quota_holds_the_work_until_credit_returns_and_nothing_dies(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    total = 10
    broke = MockConfig(quotas=QuotaConfig(openai=OpenAIQuotas(insufficient_quota=True)))
    async with serve("127.0.0.1", 0, broke) as url:
        await add_documents(pool, total)
        port = free_port()
        log = tmp_path / "worker.log"
        # A hold far longer than the lease: the heartbeats keep the jobs' leases meanwhile.
        proc = await spawn_worker(
            database_url, url, port, log,
            DOCPIPE_CONCURRENCY="4", DOCPIPE_LEASE_SECONDS="2",
            DOCPIPE_QUOTA_HOLD_SECONDS="0.5",
        )  # fmt: skip
        try:
            await wait_until(
                gauge_is(port, "docpipe_quota_held", 1.0, pipeline="p", provider="openai"),
                60,
                "the worker reports the hold",
            )
            await asyncio.sleep(6)  # three leases' worth of holding
            assert proc.returncode is None
            during = await job_rows(pool)
            refused = (await mock_stats(url))["requests"]["POST /v1/embeddings"]["429"]
            await put_quotas(url, {})
            await wait_until(processed_all(pool, total), 60, "every document processed")
            held_after = await metric(port, "docpipe_quota_held", pipeline="p", provider="openai")
            retried = await metric(port, "docpipe_jobs_retried_total", pipeline="p")
            dead = await metric(port, "docpipe_jobs_dead_total", pipeline="p")
            lost = await metric(port, "docpipe_jobs_lease_lost_total", pipeline="p")
        finally:
            await stop(proc)

    output = log.read_text()
    statuses = [r["status"] for r in during]
    assert "dead" not in statuses
    assert statuses.count("running") == 4, "the held jobs kept their leases"
    assert {r["attempts"] for r in during if r["status"] == "running"} == {1}
    assert refused >= 4, "the worker tried again through the hold"
    rows = await job_rows(pool)
    assert [r["status"] for r in rows] == ["succeeded"] * total, output[-3000:]
    assert {r["attempts"] for r in rows} == {1}, "the hold used up no attempt"
    assert held_after == 0
    assert not retried
    assert not dead
    assert not lost
    warnings = [line for line in output.splitlines() if "insufficient_quota" in line]
    assert len(warnings) == 1, warnings
    assert "openai" in warnings[0]
    assert '"pipeline": "p"' in warnings[0] or "pipeline p" in warnings[0]
