"""Canary analysis with the Prometheus source: each revision's interval from PromQL (increase()
and histogram_quantile by `revision`) against a real Prometheus, judged as the pods' own
counters judge it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from docpipe_operator import reconciler, rollout, telemetry
from tests.integration.prometheus.conftest import PrometheusServer, WorkerEndpoint, Workers

POLICY = rollout.RolloutPolicy(min_jobs=10)
STEPS = 4


async def _judge(
    pipeline: str,
    window: reconciler.AnalysisWindow,
    targets: list[telemetry.PodTarget],
    readings: list[telemetry.WorkerReading | None],
    now: float,
    promql: reconciler.PromqlCounters | None,
) -> rollout.IntervalResult | None:
    result, _ = await reconciler.judge(
        window,
        now=now,
        interval_s=now - window.started,
        canary="r2",
        stable="r1",
        targets=targets,
        readings=readings,
        canary_desired=1,
        policy=POLICY,
        promql=promql,
    )
    return result


def _increases(
    session: aiohttp.ClientSession, prometheus: PrometheusServer, pipeline: str
) -> reconciler.PromqlCounters:
    async def read(window_s: float) -> dict[str, telemetry.RevisionIncrease] | None:
        return await telemetry.query_revision_increases(
            session,
            prometheus.url,
            window_s=window_s,
            timeout_s=2,
            namespace="default",
            pipeline=pipeline,
        )

    return read


async def test_promql_analysis_judges_each_canary_as_the_pods_counters_do(
    workers: Workers,
) -> None:
    # Three rollouts at once: a canary failing half its jobs, one four times slower than its
    # stable, and a good one. Each pod runs since before the interval (counters at zero).
    pods: dict[str, tuple[WorkerEndpoint, WorkerEndpoint]] = {}
    for pipeline in ("bad", "slow", "good"):
        stable, canary = (
            await workers.add(f"{pipeline}-stable"),
            await workers.add(f"{pipeline}-canary"),
        )
        stable.start_pipeline(pipeline, "r1")
        canary.start_pipeline(pipeline, "r2")
        pods[pipeline] = (stable, canary)
    await workers.scraped()
    targets = {
        p: [s.target(revision="r1"), c.target(revision="r2", canary=True)]
        for p, (s, c) in pods.items()
    }
    async with aiohttp.ClientSession() as session:

        async def scrape(pipeline: str) -> list[telemetry.WorkerReading | None]:
            return await telemetry.scrape_readings(
                session, targets[pipeline], port=workers.port, timeout_s=2, pipeline=pipeline
            )

        started = time.monotonic()
        windows = {
            p: reconciler.AnalysisWindow(
                "r2",
                started,
                reconciler.revision_counters(targets[p], await scrape(p)),
                {f"{p}-canary": 0},
            )
            for p in pods
        }
        for _ in range(STEPS):
            await asyncio.sleep(1.0)
            for pipeline, (stable, _) in pods.items():
                stable.work(pipeline, "r1", succeeded=5, stage_seconds=0.2)
            pods["bad"][1].work("bad", "r2", succeeded=2, retried=2, dead=1, stage_seconds=0.2)
            pods["slow"][1].work("slow", "r2", succeeded=5, stage_seconds=0.8)
            pods["good"][1].work("good", "r2", succeeded=5, stage_seconds=0.2)
        await asyncio.sleep(2.5)  # Prometheus scrapes the last figures
        now = time.monotonic()
        results = {}
        for pipeline in pods:
            readings = await scrape(pipeline)
            direct = await _judge(
                pipeline, windows[pipeline], targets[pipeline], readings, now, None
            )
            via = await _judge(
                pipeline,
                windows[pipeline],
                targets[pipeline],
                [],
                now,
                _increases(session, workers.prometheus, pipeline),
            )
            results[pipeline] = (direct, via)
        increases = await _increases(session, workers.prometheus, "bad")(now - started)

    judged = {}
    for pipeline, (direct, via) in results.items():
        assert direct is not None
        assert via is not None
        assert via.outcome is direct.outcome, (pipeline, direct, via)
        judged[pipeline] = via
    assert judged["bad"].outcome is rollout.IntervalOutcome.FAILED
    assert "error ratio 0.60" in judged["bad"].reason  # 12 of 20 jobs failed
    assert judged["slow"].outcome is rollout.IntervalOutcome.FAILED
    assert "stage p95" in judged["slow"].reason
    assert judged["good"].outcome is rollout.IntervalOutcome.PASSED
    # increase() extrapolates to the window's ends: the counts are near the exact 20 jobs, the
    # ratios all but exact (every counter of a pod is scraped at the same instants).
    assert increases is not None
    bad = increases["r2"]
    assert bad.claimed == pytest.approx(20, rel=0.25)
    assert (bad.retried + bad.dead) / bad.claimed == pytest.approx(0.6, abs=0.01)
    # Every job took 0.2 s: within the (0.1, 0.25] bucket, histogram_quantile interpolates.
    assert bad.stage_p95_s == pytest.approx(0.1 + 0.15 * 0.95)
    assert increases["r1"].dead == 0


async def test_promql_analysis_with_prometheus_down_is_inconclusive(
    private_prometheus: PrometheusServer,
) -> None:
    private_prometheus.stop()
    window = reconciler.AnalysisWindow("r2", 0.0, {}, {})
    async with aiohttp.ClientSession() as session:
        result = await _judge(
            "bad",
            window,
            [telemetry.PodTarget("bad-canary", "127.0.0.1", True, "r2", 0, True)],
            [],
            10.0,
            _increases(session, private_prometheus, "bad"),
        )
    assert result is not None
    assert result.outcome is rollout.IntervalOutcome.INCONCLUSIVE
    assert "Prometheus" in result.reason
