"""With the Prometheus source, the rounds of a namespace's pipelines share one batch of load
queries (eight, whatever the number of pipelines), each taking its own pipeline's rows.

The Prometheus here is a small HTTP server on 127.0.0.1 that answers the instant-query API with
one row per pipeline; the real-Prometheus tests are in tests/integration/prometheus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import kopf
import pytest

from docpipe_operator import cluster
from docpipe_operator.decision import Children, Memory, read_pipeline
from docpipe_operator.observation import Observer
from tests.support.cluster import pipeline_body
from tests.support.ports import free_port

PIPELINES = [f"p{i}" for i in range(10)]


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[str, list[str]]]:
    """A Prometheus answering every load query with one row per pipeline; the queries asked."""
    asked: list[str] = []

    async def query(request: aiohttp.web.Request) -> aiohttp.web.Response:
        promql = request.query["query"]
        asked.append(promql)
        rows: list[dict[str, Any]] = []
        if "quota" not in promql:
            for n, name in enumerate(PIPELINES):
                labels = {"pipeline": name, "pod": f"{name}-0"}
                rows.append({"metric": labels, "value": [0, str(n)]})
        data = {"resultType": "vector", "result": rows}
        return aiohttp.web.json_response({"status": "success", "data": data})

    app = aiohttp.web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-0", "labels": {"docpipe.io/pipeline": name}},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def test_the_rounds_of_a_namespace_share_one_batch_of_queries(
    prometheus: tuple[str, list[str]],
) -> None:
    url, asked = prometheus
    client = cluster.KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9"))
    async with aiohttp.ClientSession() as http:
        observer = Observer(client, http)
        metrics = {"source": "prometheus", "prometheus": {"url": url}}
        pipelines = [read_pipeline(pipeline_body(name, metrics=metrics)) for name in PIPELINES]

        async def round_of(n: int) -> Any:
            pipeline = pipelines[n]
            assert pipeline.spec is not None
            children = Children({}, (_pod(pipeline.name),))
            return await observer.read_load(pipeline, pipeline.spec, children, Memory(), at=100.0)

        loads = await asyncio.gather(*(round_of(n) for n in range(len(PIPELINES))))
        await observer.close()
    await client.close()

    assert len(asked) == 8, asked
    assert all('namespace="default"' in q and "pipeline" in q for q in asked)
    for n, load in enumerate(loads):
        assert load.snapshot is not None
        (pod,) = load.snapshot.pods
        assert pod.name == f"{PIPELINES[n]}-0"
        assert pod.jobs_in_flight == n  # its own pipeline's row
        assert load.snapshot.queue is not None
        assert load.snapshot.queue.ready_jobs == n
