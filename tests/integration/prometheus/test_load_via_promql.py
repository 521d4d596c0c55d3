"""The operator's PromQL reader against a real Prometheus: the same load figures as scraping the
pods directly, and a Prometheus that is down or has no series is missing metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp

from docpipe_operator import telemetry
from docpipe_operator.model import ScalingSpec
from docpipe_operator.scaling import (
    Decision,
    MetricsSnapshot,
    PodMetrics,
    QueueMetrics,
    ScalingHistory,
    decide_replicas,
)
from tests.integration.prometheus.conftest import PrometheusServer, Workers

POLICY = ScalingSpec.model_validate(
    {"minReplicas": 1, "maxReplicas": 10, "scaleDownStabilizationSeconds": 0}
)


async def _both(
    session: aiohttp.ClientSession,
    workers: Workers,
    targets: Sequence[telemetry.PodTarget],
    pipeline: str,
) -> tuple[MetricsSnapshot, MetricsSnapshot | None]:
    direct = await telemetry.scrape_pods(
        session, targets, port=workers.port, timeout_s=2, pipeline=pipeline
    )
    via = await _via_promql(session, workers.prometheus, targets, pipeline)
    return direct, via


async def _via_promql(
    session: aiohttp.ClientSession,
    prometheus: PrometheusServer,
    targets: Sequence[telemetry.PodTarget],
    pipeline: str,
) -> MetricsSnapshot | None:
    return await telemetry.query_prometheus(
        session, prometheus.url, targets, timeout_s=2, namespace="default", pipeline=pipeline
    )


async def _agreeing(
    session: aiohttp.ClientSession,
    workers: Workers,
    targets: Sequence[telemetry.PodTarget],
    pipeline: str,
    expected: MetricsSnapshot,
) -> MetricsSnapshot:
    """Both readers' snapshot once Prometheus has scraped the figures the pods now export."""
    deadline = time.monotonic() + 5
    while True:
        direct, via = await _both(session, workers, targets, pipeline)
        assert direct == expected
        if via == direct:
            return via
        if time.monotonic() > deadline:
            raise AssertionError(f"PromQL read {via}, the pods {direct}")
        await asyncio.sleep(0.2)


def _decide(snapshots: Sequence[MetricsSnapshot | None], current: int) -> Decision:
    history = ScalingHistory()
    decision = None
    for i, snapshot in enumerate(snapshots):
        decision, history = decide_replicas(
            snapshot, POLICY, current=current, concurrency=2, history=history, now=10.0 * i
        )
    assert decision is not None
    return decision


async def test_promql_reader_returns_the_load_figures_direct_scraping_reads(
    workers: Workers,
) -> None:
    a, b = await workers.add("load-a"), await workers.add("load-b")
    # Series Prometheus must not mix in: another pipeline's worker, and a worker of the same
    # name and pipeline in another namespace with a much larger queue.
    other = await workers.add("load-other")
    twin = await workers.add("load-a", namespace="staging")
    a.start_pipeline("load", "r1")
    b.start_pipeline("load", "r1")
    b.start_pipeline("load", "r2")
    a.work("load", "r1", succeeded=7)
    b.work("load", "r1", succeeded=3)
    b.work("load", "r2", succeeded=4, retried=2)
    a.in_flight.labels("load", "r1").set(2)
    b.in_flight.labels("load", "r1").set(1)
    b.in_flight.labels("load", "r2").set(1)
    # Each worker reads the queue at its own time: the highest figures count.
    a.queue_ready.labels("load").set(12)
    a.queue_oldest.labels("load").set(4.0)
    b.queue_ready.labels("load").set(14)
    b.queue_oldest.labels("load").set(3.5)
    for pod, pipeline in ((other, "other"), (twin, "load")):
        pod.start_pipeline(pipeline, "r1")
        pod.work(pipeline, "r1", succeeded=50)
        pod.in_flight.labels(pipeline, "r1").set(9)
        pod.queue_ready.labels(pipeline).set(500)
        pod.queue_oldest.labels(pipeline).set(90)
    await workers.scraped()
    # The pods as the API lists them, and one just scheduled (no IP, not ready).
    targets = [a.target(), b.target(), telemetry.PodTarget("load-c", None, False)]

    async with aiohttp.ClientSession() as session:
        first = await _agreeing(
            session,
            workers,
            targets,
            "load",
            MetricsSnapshot(
                pods=(
                    PodMetrics("load-a", True, 2.0, 7.0),
                    PodMetrics("load-b", True, 2.0, 7.0),
                    PodMetrics("load-c", False),
                ),
                queue=QueueMetrics(ready_jobs=14.0, oldest_ready_age_seconds=4.0),
            ),
        )
        # Ten seconds later (as the decision sees it): 20 more jobs done, the backlog grown.
        a.work("load", "r1", succeeded=12)
        b.work("load", "r2", succeeded=8)
        a.in_flight.labels("load", "r1").set(3)
        a.queue_ready.labels("load").set(30)
        a.queue_oldest.labels("load").set(9.0)
        second = await _agreeing(
            session,
            workers,
            targets,
            "load",
            MetricsSnapshot(
                pods=(
                    PodMetrics("load-a", True, 3.0, 19.0),
                    PodMetrics("load-b", True, 2.0, 15.0),
                    PodMetrics("load-c", False),
                ),
                queue=QueueMetrics(ready_jobs=30.0, oldest_ready_age_seconds=9.0),
            ),
        )
    decision = _decide([first, second], current=2)
    assert decision.metrics_complete
    assert decision.throughput_per_second == 2.0  # 20 jobs in 10 s
    assert decision.queue_depth == 30
    assert decision.desired > 2


async def test_prometheus_that_is_down_is_missing_metrics_never_a_scale_down(
    workers: Workers, private_prometheus: PrometheusServer
) -> None:
    pod = await workers.add("down-a")
    pod.start_pipeline("down", "r1")
    pod.queue_ready.labels("down").set(0)
    await workers.scraped()
    async with aiohttp.ClientSession() as session:
        idle = await _via_promql(session, workers.prometheus, [pod.target()], "down")
        assert idle is not None
        assert idle.queue == QueueMetrics(0.0, 0.0)
        # The same fleet of four, read from a Prometheus that has gone away.
        private_prometheus.stop()
        targets = [pod.target(), *(telemetry.PodTarget(f"down-{n}", None, True) for n in "bcd")]
        down = await _via_promql(session, private_prometheus, targets, "down")
    assert down is None
    # An idle fleet of four shrinks on the reading Prometheus gave; with Prometheus down it holds.
    assert _decide([idle], current=4).desired < 4
    decision = _decide([idle, down], current=4)
    assert not decision.metrics_complete
    assert decision.desired == 4, decision.reason


async def test_prometheus_without_the_pipelines_series_is_missing_metrics_never_a_scale_down(
    workers: Workers,
) -> None:
    # Prometheus is up and scrapes a worker, but of another pipeline: nothing about `none`.
    pod = await workers.add("none-a")
    pod.start_pipeline("elsewhere", "r1")
    pod.queue_ready.labels("elsewhere").set(0)
    await workers.scraped()
    targets = [
        telemetry.PodTarget("none-a", pod.ip, True),
        telemetry.PodTarget("none-b", "127.0.0.252", True),
    ]
    async with aiohttp.ClientSession() as session:
        snapshot = await _via_promql(session, workers.prometheus, targets, "none")
    assert snapshot is not None
    assert snapshot.queue is None
    assert not any(p.scraped for p in snapshot.pods)
    decision = _decide([snapshot], current=2)
    assert not decision.metrics_complete
    assert decision.desired == 2, decision.reason


async def test_worker_prometheus_can_no_longer_scrape_reads_unscraped_not_its_last_figures(
    workers: Workers,
) -> None:
    a, b = await workers.add("gone-a"), await workers.add("gone-b")
    for pod in (a, b):
        pod.start_pipeline("gone", "r1")
        pod.work("gone", "r1", succeeded=5)
        pod.queue_ready.labels("gone").set(0)
    await workers.scraped()
    targets = [a.target(), b.target()]
    await b.stop()
    async with aiohttp.ClientSession() as session:
        expected = MetricsSnapshot(
            pods=(PodMetrics("gone-a", True, 0.0, 5.0), PodMetrics("gone-b", True)),
            queue=QueueMetrics(0.0, 0.0),
        )
        snapshot = await _agreeing(session, workers, targets, "gone", expected)
    decision = _decide([snapshot], current=2)
    assert not decision.metrics_complete
    assert decision.desired == 2, decision.reason
