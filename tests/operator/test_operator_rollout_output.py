"""A revision that fails no job but writes worse output is rolled back, and its output undone; one
with the same output is promoted. Real `docpipe worker` processes (one per pod, started by the
simulated kubelet with the pod's environment) against the embedded Postgres and the mocks, under
the real operator on the API emulator.

The bad revisions point the parser at the mock's truncating LlamaParse (30 % of each page kept)
or the embedder at the mock's zero-vector OpenAI: every job succeeds. The output analysis must
roll them back within failure-limit × interval plus one interval of the canary's first document,
and afterwards no document may hold a chunk the rejected revision wrote (the operator re-enqueues
them for the stable revision).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
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

# Three seconds: on a loaded machine the one canary worker (a 20 % share) still finishes the
# minimum of jobs and documents in each interval.
INTERVAL = 3
FAILURE_LIMIT = 2
ROLLOUT = {
    "intervalSeconds": INTERVAL,
    "minJobs": 3,
    "failureLimit": FAILURE_LIMIT,
    "progressDeadlineSeconds": 60,
    "outputAnalysis": {"minDocuments": 3},
}
ARRIVALS_PER_SECOND = 20
# One tick (the 1 s scaling interval) of slack: rounds start at most that late.
ROLLBACK_BOUND_S = FAILURE_LIMIT * INTERVAL + INTERVAL + 1


@pytest.fixture
async def mocks() -> AsyncIterator[str]:
    async with serve("127.0.0.1", 0, MockConfig()) as url:
        yield url


def _rollout(api: KubernetesApi) -> dict[str, Any]:
    status = (pipeline(api) or {}).get("status") or {}
    rollout: dict[str, Any] = status.get("rollout") or {}
    return rollout


def _events(api: KubernetesApi, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.list_objects("/v1/events") if e.get("reason") == reason]


async def _canary_documents(session: aiohttp.ClientSession, fleet: Fleet, port: int) -> float:
    done = 0.0
    for name, worker in list(fleet.running.items()):
        if not name.startswith("docs-worker-canary-"):
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://{worker.ip}:{port}/metrics") as response:
                reading = telemetry.parse_worker_metrics(await response.text(), "docs")
                done += sum(c.output.documents for c in reading.revisions.values())
    return done


def _spec(mocks: str, **rollout: Any) -> dict[str, Any]:
    return pipeline_body(
        replicas=3,
        worker={
            "image": "docpipe:1",
            "concurrency": 8,
            "metricsPort": pipeline_body()["spec"]["worker"]["metricsPort"],
            # The mock finishes a parse at once: poll it often.
            "extraEnv": [{"name": "DOCPIPE_LLAMAPARSE_POLL_SECONDS", "value": "0.05"}],
        },
        parser={
            "kind": "llamaparse",
            "baseUrl": mocks,
            "apiKeySecretRef": {"name": "llama", "key": "key"},
        },
        embedder={"baseUrl": f"{mocks}/v1"},
        rollout={**ROLLOUT, **rollout},
    )


async def _start(
    api: KubernetesApi, fleet: Fleet, database_url: str, body: dict[str, Any]
) -> asyncpg.Pool:
    fleet.processes = True
    for name, key, value in (("db", "url", database_url), ("llama", "key", "test-key")):
        data = {key: base64.b64encode(value.encode()).decode()}
        api.create_object(SECRETS, NAMESPACE, {"metadata": {"name": name}, "data": data})
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    await eventually(
        lambda: sum(w.ready for w in fleet.running.values()) == 3,
        within=30,
        what="three ready worker processes",
    )
    return await create_pool(database_url, min_size=1, max_size=2)


def _with_parser_url(url: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {**o["spec"], "parser": {**o["spec"]["parser"], "baseUrl": url}}}

    return change


def _with_embedder_url(url: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {**o["spec"], "embedder": {"baseUrl": url}}}

    return change


@pytest.mark.parametrize(
    ("fault", "metric"),
    [
        ("truncate=0.3", "extracted chars per input byte"),
        ("zero", "degenerate vector share"),
    ],
)
async def test_a_revision_writing_worse_output_is_rolled_back_and_its_output_redone(
    api: KubernetesApi,
    fleet: Fleet,
    operator: OperatorProcess,
    database_url: str,
    mocks: str,
    fault: str,
    metric: str,
) -> None:
    # Never promoted within the test: only the regression path is under test here.
    body = _spec(mocks, successIntervals=50)
    port = body["spec"]["worker"]["metricsPort"]
    pool = await _start(api, fleet, database_url, body)
    stop, added = asyncio.Event(), list[int]()
    feeder = asyncio.create_task(
        feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="test")
    )
    try:
        await asyncio.sleep(2)  # the stable revision measures its job time
        faulty = f"{mocks}/_faults/{fault}"
        if fault.startswith("truncate"):
            api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", _with_parser_url(faulty))
        else:
            api.update_object(
                DOCPIPE_RESOURCE, NAMESPACE, "docs", _with_embedder_url(f"{faulty}/v1")
            )
        first_output = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            deadline = time.monotonic() + 60
            while _rollout(api).get("phase") != "RolledBack":
                assert time.monotonic() < deadline, f"no rollback: {_rollout(api)}"
                if first_output is None and await _canary_documents(session, fleet, port) > 0:
                    first_output = time.monotonic()
                await asyncio.sleep(0.1)
        rolled_back = time.monotonic()
        stop.set()
        await feeder

        assert first_output is not None, "the canary never finished a document"
        assert rolled_back - first_output <= ROLLBACK_BOUND_S
        rollout = _rollout(api)
        rejected = rollout["rejectedRevision"]
        assert rejected == rollout["canaryRevision"]
        assert f"output regression: {metric}" in rollout["rejectedReason"]
        assert "error ratio" not in rollout["rejectedReason"]
        await eventually(
            lambda: _events(api, "RolledBack"), within=5, what="a RolledBack Event naming it"
        )
        assert metric in _events(api, "RolledBack")[0]["message"]

        # The undo: once the canary's pods are gone, its documents go back to the stable.
        undo = await eventually(
            lambda: (
                (_rollout(api).get("lastRollback") or {}).get("revision") == rejected
                and _rollout(api)["lastRollback"]
            ),
            within=30,
            what="the rejected revision's documents re-enqueued",
        )
        assert undo["reprocessedDocuments"] > 0
        await eventually(
            lambda: _events(api, "RollbackReprocessing"),
            within=5,
            what="a RollbackReprocessing Event",
        )
        message = _events(api, "RollbackReprocessing")[0]["message"]
        assert f"{undo['reprocessedDocuments']} document(s)" in message

        async def settled() -> bool:
            rows = await pool.fetch(
                "select status, count(*) from docpipe.documents group by status"
            )
            idle = await pool.fetchval(
                "select count(*) = 0 from docpipe.jobs where status in ('queued', 'running')"
            )
            return bool(idle) and {r["status"]: r["count"] for r in rows} == {
                "processed": len(added)
            }

        await eventually(settled, within=60, what="every document processed")
        left = await pool.fetchval(
            "select count(distinct document_id) from docpipe.chunks where revision = $1", rejected
        )
        assert left == 0, f"{left} documents still hold chunks of the rejected revision"
        dead = await pool.fetchval("select count(*) from docpipe.jobs where status = 'dead'")
        assert dead == 0
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await pool.close()


async def test_a_revision_with_the_same_output_is_promoted_after_judging_its_output(
    api: KubernetesApi,
    fleet: Fleet,
    operator: OperatorProcess,
    database_url: str,
    mocks: str,
) -> None:
    body = _spec(mocks, successIntervals=3)
    pool = await _start(api, fleet, database_url, body)
    stop, added = asyncio.Event(), list[int]()
    feeder = asyncio.create_task(
        feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="test")
    )
    try:
        await asyncio.sleep(2)

        def new_image(o: dict[str, Any]) -> dict[str, Any]:
            worker = {**o["spec"]["worker"], "image": "docpipe:2"}
            return {**o, "spec": {**o["spec"], "worker": worker}}

        api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", new_image)
        await eventually(
            lambda: _rollout(api).get("phase") == "Promoted",
            within=90,
            what=f"the revision promoted: {_rollout(api)}",
        )
        rollout = _rollout(api)
        assert "rejectedRevision" not in rollout
        passed = [i for i in rollout["intervals"] if i["outcome"] == "Passed"]
        assert len(passed) >= 3
        # The output was judged, not skipped for lack of documents.
        assert all("output of" in i["reason"] for i in passed[-3:]), passed
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await pool.close()


GOLDEN_DOCUMENTS = {
    "seals.md": "# Seals\n\nHarbour seals rest on sandbanks at low tide and hunt fish in the"
    " estuary when the water rises again over the flats.\n",
    "tides.md": "# Tides\n\nSpring tides follow the full and the new moon, when the sun and"
    " the moon pull along one line and the range between the tides is largest.\n",
    "ferns.md": "# Ferns\n\nFerns spread by spores rather than by seeds; the spores grow on the"
    " underside of the fronds in small brown clusters called sori.\n",
}
GOLDEN_QUESTIONS = [
    {"question": "Where do harbour seals rest?", "document": "seals.md"},
    {"question": "When are spring tides?", "document": "tides.md"},
    {"question": "How do ferns spread?", "document": "ferns.md"},
]


def _golden_set(directory: Path) -> str:
    directory.mkdir()
    for name, text in GOLDEN_DOCUMENTS.items():
        (directory / name).write_text(text)
    (directory / "questions.json").write_text(json.dumps(GOLDEN_QUESTIONS))
    return str(directory)


async def test_a_revision_that_drops_text_of_the_golden_set_is_rolled_back_on_it(
    api: KubernetesApi,
    fleet: Fleet,
    operator: OperatorProcess,
    database_url: str,
    mocks: str,
    tmp_path: Path,
) -> None:
    # The output analysis is off: only the golden set can tell.
    golden = {"path": _golden_set(tmp_path / "golden")}
    body = _spec(mocks, successIntervals=50, outputAnalysis={"enabled": False}, goldenSet=golden)
    pool = await _start(api, fleet, database_url, body)
    stop, added = asyncio.Event(), list[int]()
    feeder = asyncio.create_task(
        feed_documents(pool, stop, added, per_second=ARRIVALS_PER_SECOND, owner="test")
    )
    try:
        await asyncio.sleep(2)
        api.update_object(
            DOCPIPE_RESOURCE, NAMESPACE, "docs", _with_parser_url(f"{mocks}/_faults/truncate=0.3")
        )
        await eventually(
            lambda: _rollout(api).get("phase") == "RolledBack",
            within=60,
            what="the revision rolled back on its golden set output",
        )
        rollout = _rollout(api)
        assert "golden set regression: text overlap" in rollout["rejectedReason"]
        # Both revisions ran the set in shadow; no golden document became a user document.
        revisions = await pool.fetch(
            "select distinct revision from docpipe.golden_outputs where pipeline = 'docs'"
        )
        assert {r["revision"] for r in revisions} == {
            rollout["stableRevision"],
            rollout["rejectedRevision"],
        }
        names = await pool.fetchval(
            "select count(*) from docpipe.documents where filename = any($1::text[])",
            list(GOLDEN_DOCUMENTS),
        )
        assert names == 0
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await pool.close()


async def test_without_traffic_a_revision_is_promoted_on_its_golden_set(
    api: KubernetesApi,
    fleet: Fleet,
    operator: OperatorProcess,
    database_url: str,
    mocks: str,
    tmp_path: Path,
) -> None:
    golden = {"path": _golden_set(tmp_path / "golden")}
    body = _spec(mocks, successIntervals=2, goldenSet=golden, noTraffic={"action": "Golden"})
    pool = await _start(api, fleet, database_url, body)
    try:

        def new_image(o: dict[str, Any]) -> dict[str, Any]:
            worker = {**o["spec"]["worker"], "image": "docpipe:2"}
            return {**o, "spec": {**o["spec"], "worker": worker}}

        api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", new_image)
        await eventually(
            lambda: _rollout(api).get("phase") == "Promoted",
            within=60,
            what="the idle revision promoted on its golden set",
        )
        passed = [i for i in _rollout(api)["intervals"] if i["outcome"] == "Passed"]
        assert len(passed) >= 2
        assert all("golden set: overlap 1.00" in i["reason"] for i in passed[-2:]), passed
        assert await pool.fetchval("select count(*) from docpipe.documents") == 0
    finally:
        await pool.close()
