"""A bad revision rolled back with real workers: `docpipe worker` processes (one per pod, started
by the simulated kubelet with the pod's environment) against the embedded Postgres and the
embedding mock, under the real operator on the API emulator.

The bad revision points its embedder at a closed port, so every job it claims fails. It must be
rolled back within failure-limit × interval plus one interval of its first failed job, and every
document must still end processed (the canary hands failed attempts back; the stable retries).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from docpipe_mocks.server import MockConfig
from docpipe_operator import telemetry
from docpipe_queue.database import create_pool
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.documents import feed_documents
from tests.support.emulator import DOCPIPE_RESOURCE, SECRETS, KubernetesApi
from tests.support.fleet import Fleet
from tests.support.mocks import serve
from tests.support.polling import eventually

INTERVAL = 2
FAILURE_LIMIT = 2
ROLLOUT = {
    "intervalSeconds": INTERVAL,
    "minJobs": 4,
    "failureLimit": FAILURE_LIMIT,
    # Never promoted within the test: only the failure path is under test here.
    "successIntervals": 50,
    "progressDeadlineSeconds": 60,
}
ARRIVALS_PER_SECOND = 20


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


async def _canary_failures(session: aiohttp.ClientSession, fleet: Fleet, port: int) -> float:
    failed = 0.0
    for name, worker in list(fleet.running.items()):
        if not name.startswith("docs-worker-canary-"):
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://{worker.ip}:{port}/metrics") as response:
                reading = telemetry.parse_worker_metrics(await response.text(), "docs")
                failed += sum(c.retried + c.dead for c in reading.revisions.values())
    return failed


def _rollout(api: KubernetesApi) -> dict[str, Any]:
    status = (pipeline(api) or {}).get("status") or {}
    rollout: dict[str, Any] = status.get("rollout") or {}
    return rollout


async def test_a_revision_failing_every_job_is_rolled_back_and_no_document_is_lost(
    api: KubernetesApi,
    fleet: Fleet,
    operator: OperatorProcess,
    database_url: str,
    mocks: str,
) -> None:
    fleet.processes = True
    url = base64.b64encode(database_url.encode()).decode()
    api.create_object(SECRETS, NAMESPACE, {"metadata": {"name": "db"}, "data": {"url": url}})
    body = pipeline_body(replicas=3, embedder={"baseUrl": f"{mocks}/v1"}, rollout=ROLLOUT)
    port = body["spec"]["worker"]["metricsPort"]
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    await eventually(
        lambda: sum(w.ready for w in fleet.running.values()) == 3,
        within=30,
        what="three ready worker processes",
    )
    pool = await create_pool(database_url, min_size=1, max_size=2)
    stop, added = asyncio.Event(), list[int]()
    feeder = asyncio.create_task(
        feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="test")
    )
    try:
        await asyncio.sleep(2)  # the stable revision measures its job time

        def bad(o: dict[str, Any]) -> dict[str, Any]:
            # A closed port: every embedding request of the new revision fails.
            return {**o, "spec": {**o["spec"], "embedder": {"baseUrl": "http://127.0.0.1:9/v1"}}}

        api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", bad)
        first_failure = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            deadline = time.monotonic() + 45
            while _rollout(api).get("phase") != "RolledBack":
                assert time.monotonic() < deadline, f"no rollback: {_rollout(api)}"
                if first_failure is None and await _canary_failures(session, fleet, port) > 0:
                    first_failure = time.monotonic()
                await asyncio.sleep(0.1)
        rolled_back = time.monotonic()
        stop.set()
        await feeder

        assert first_failure is not None, "the canary never failed a job"
        # One tick (the 1 s scaling interval) of slack: rounds start at most that late.
        assert rolled_back - first_failure <= FAILURE_LIMIT * INTERVAL + INTERVAL + 1
        rollout = _rollout(api)
        assert rollout["rejectedRevision"] == rollout["canaryRevision"]
        assert "error ratio" in rollout["rejectedReason"]
        await eventually(
            lambda: not any(n.startswith("docs-worker-canary") for n in fleet.running),
            what="the canary processes stopped",
        )

        async def settled() -> bool:
            rows = await pool.fetch(
                "select status, count(*) from docpipe.documents group by status"
            )
            return {r["status"]: r["count"] for r in rows} == {"processed": len(added)}

        await eventually(settled, within=30, what="every document processed")
        dead = await pool.fetchval("select count(*) from docpipe.jobs where status = 'dead'")
        assert dead == 0
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await pool.close()
