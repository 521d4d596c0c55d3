"""The operator runs no more workers than the provider quota can feed (issue 13, item 4).

The fake pods of `QuotaFleet` share the quota their pipeline's spec sets (read from the worker
Deployment's environment, as a real worker reads it): together they finish at most the jobs the
quota pays for, the rest of their time waits for budget, and each exports the quota families of
`docpipe_contracts.metrics` (limit, used, time waiting, held) beside the job metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import pytest

from docpipe_contracts import metrics
from docpipe_operator import telemetry
from docpipe_operator.scaling import QuotaKey
from tests.support.cluster import NAMESPACE, OperatorProcess, pipeline, pipeline_body
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.fleet import FakeWorker, Fleet, kubelet
from tests.support.polling import eventually

QUOTA_ID = "3f9a1c"  # the hashed provider/key/model label; never the key itself
TOKENS_PER_JOB = 500.0
REQUESTS_PER_JOB = 1.0
# 90,000 tokens a minute at 500 tokens a job: 3 jobs/s. A fake pod does 1 job/s (2 slots, 2 s a
# job), so the quota feeds 3 workers and the ceiling is 3 + 1 of headroom.
QUOTAS = {"openai": {"tokensPerMinute": 90_000, "requestsPerMinute": 6_000}}
CEILING = 4
BACKLOG = 10_000


@dataclass
class QuotaUse:
    """One pod's quota counters."""

    tokens: float = 0.0
    requests: float = 0.0
    wait_seconds: float = 0.0


@dataclass
class QuotaFleet(Fleet):
    """A fleet whose pods of a pipeline share the provider quota its Deployment sets."""

    held: bool = False
    use: dict[str, QuotaUse] = field(default_factory=dict)

    def limits(self, pipeline: str) -> dict[str, float]:
        """The per-minute limits in the pipeline's worker environment, by unit."""
        deployment = self.api.read_object(DEPLOYMENTS, NAMESPACE, f"{pipeline}-worker") or {}
        containers = (
            deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        )
        env = {e["name"]: e.get("value") for e in (containers[0]["env"] if containers else [])}
        found = {
            "tokens": env.get("DOCPIPE_OPENAI_TOKENS_PER_MINUTE"),
            "requests": env.get("DOCPIPE_OPENAI_REQUESTS_PER_MINUTE"),
        }
        return {unit: float(value) for unit, value in found.items() if value is not None}

    async def step(self, dt: float) -> None:
        before = {name: w.succeeded for name, w in self.workers.items()}
        await super().step(dt)
        by_pipeline: dict[str, list[FakeWorker]] = {}
        for worker in self.workers.values():
            if worker.name in before:
                by_pipeline.setdefault(worker.pipeline, []).append(worker)
        for name, pods in by_pipeline.items():
            limits = self.limits(name)
            if not limits:
                continue
            done = {w.name: w.succeeded - before[w.name] for w in pods}
            total = sum(done.values())
            affordable = min(
                limits.get("tokens", float("inf")) / 60 / TOKENS_PER_JOB,
                limits.get("requests", float("inf")) / 60 / REQUESTS_PER_JOB,
            )
            share = 0.0 if self.held else min(1.0, affordable * dt / total) if total else 1.0
            for worker in pods:
                kept = done[worker.name] * share
                worker.succeeded = before[worker.name] + kept
                worker.claimed -= done[worker.name] - kept
                use = self.use.setdefault(worker.name, QuotaUse())
                use.tokens += kept * TOKENS_PER_JOB
                use.requests += kept * REQUESTS_PER_JOB
                # The slots that could not be fed waited for budget.
                use.wait_seconds += worker.in_flight * dt * (1.0 - share)

    def quota_exposition(self, worker: FakeWorker) -> str:
        limits = self.limits(worker.pipeline)
        if not limits:
            return ""
        use = self.use.get(worker.name, QuotaUse())
        base = f'pipeline="{worker.pipeline}",provider="openai",quota="{QUOTA_ID}"'
        lines = [f"# TYPE {metrics.QUOTA_LIMIT_PER_MINUTE.name} gauge"]
        lines += [
            f'{metrics.QUOTA_LIMIT_PER_MINUTE.name}{{{base},unit="{unit}"}} {limit}'
            for unit, limit in limits.items()
        ]
        lines += [
            f"# TYPE {metrics.QUOTA_USED.sample_name} counter",
            f'{metrics.QUOTA_USED.sample_name}{{{base},unit="tokens"}} {use.tokens}',
            f'{metrics.QUOTA_USED.sample_name}{{{base},unit="requests"}} {use.requests}',
            f"# TYPE {metrics.QUOTA_WAIT_SECONDS.sample_name} counter",
            f"{metrics.QUOTA_WAIT_SECONDS.sample_name}{{{base}}} {use.wait_seconds}",
            f"# TYPE {metrics.QUOTA_HELD.name} gauge",
            f"{metrics.QUOTA_HELD.name}{{{base}}} {1 if self.held else 0}",
        ]
        return "\n".join(lines) + "\n"

    async def _serve(self, worker: FakeWorker, port: int) -> None:
        async def metrics_page(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(
                text=worker.exposition(self) + self.quota_exposition(worker)
            )

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics_page)
        worker.runner = aiohttp.web.AppRunner(app)
        await worker.runner.setup()
        await aiohttp.web.TCPSite(worker.runner, worker.ip, port).start()


@pytest.fixture
async def quota_fleet(api: KubernetesApi) -> AsyncIterator[QuotaFleet]:
    """The kubelet of `tests.support.fleet`, running pods that share their pipeline's quota."""
    async with kubelet(QuotaFleet(api)) as simulated:
        yield simulated


def _replicas(api: KubernetesApi, name: str) -> int | None:
    deployment = api.read_object(DEPLOYMENTS, NAMESPACE, f"{name}-worker")
    return None if deployment is None else int(deployment["spec"]["replicas"])


def _condition(api: KubernetesApi, name: str, kind: str) -> dict[str, Any] | None:
    conditions = ((pipeline(api, name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def _events(api: KubernetesApi, reason: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.list_objects("/v1/events")
        if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == name
    ]


def _scaling(**fields: Any) -> dict[str, Any]:
    return {
        "minReplicas": 1,
        "maxReplicas": 8,
        "targetQueueWaitSeconds": 10,
        "intervalSeconds": 1,
        "scaleDownStabilizationSeconds": 60,
        "maxScaleUpStep": 4,
        **fields,
    }


async def _watch_most(api: KubernetesApi, name: str, seconds: float) -> int:
    """The most replicas the pipeline's Deployment asked for over `seconds`."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, _replicas(api, name) or 0)
        await asyncio.sleep(0.05)
    return most


async def test_a_backlog_grows_the_fleet_only_as_far_as_its_quota_feeds(
    api: KubernetesApi, operator: OperatorProcess, quota_fleet: QuotaFleet
) -> None:
    fleet = quota_fleet
    limited = pipeline_body("docs", scaling=_scaling(), quotas=QUOTAS)
    limited["spec"]["replicas"] = 1  # one worker measures the jobs and the quota first
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, limited)
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, pipeline_body("free", scaling=_scaling()))
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = BACKLOG, 60, 2
    await eventually(lambda: _replicas(api, "docs") == 1, what="one pinned worker")
    assert fleet.limits("docs") == {"tokens": 90_000.0, "requests": 6_000.0}
    assert fleet.limits("free") == {}
    await eventually(
        lambda: sum(w.succeeded for w in fleet.workers.values() if w.pipeline == "docs") >= 3,
        what="jobs done under the quota",
    )
    await asyncio.sleep(2.5)  # a few rounds of samples with completions

    def unpin(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {k: v for k, v in o["spec"].items() if k != "replicas"}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", unpin)
    most = await _watch_most(api, "docs", 6.0)

    # The queue-wait-only decision goes to the maximum; the quota keeps the other at 3 + 1.
    assert _replicas(api, "free") == 8
    assert most <= CEILING, [e["message"] for e in _events(api, "ScaledUp", "docs")]
    assert _replicas(api, "docs") == CEILING
    quota = await eventually(
        lambda: (
            (_condition(api, "docs", "QuotaLimited") or {}).get("status") == "True"
            and _condition(api, "docs", "QuotaLimited")
        ),
        what="QuotaLimited",
    )
    assert quota["reason"] == "CeilingReached"
    assert "90000 tokens/min at 500 tokens/job feeds 3 jobs/s" in quota["message"]
    assert "at most 4 workers (3 + 1 of headroom)" in quota["message"]
    free = _condition(api, "free", "QuotaLimited")
    assert free is not None
    assert (free["status"], free["reason"]) == ("False", "NoQuotaMeasured")
    started = await eventually(lambda: _events(api, "QuotaLimited", "docs"), what="an Event")
    assert "feeds 3 jobs/s" in started[0]["message"]
    assert not _events(api, "QuotaLimited", "free")
    status = pipeline(api, "docs")["status"]  # type: ignore[index]
    assert "capped by the provider quota" in status["lastScaleReason"]

    # The backlog is gone: the load needs no more than the quota feeds, and the Event says so.
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = 0, 0, 1
    await eventually(
        lambda: (_condition(api, "docs", "QuotaLimited") or {}).get("status") == "False",
        what="QuotaLimited to end",
    )
    await eventually(lambda: _events(api, "QuotaLimitEnded", "docs"), what="the ending Event")


async def test_workers_that_could_only_wait_are_scaled_away_within_the_stabilization_window(
    api: KubernetesApi, operator: OperatorProcess, quota_fleet: QuotaFleet
) -> None:
    fleet = quota_fleet
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = BACKLOG, 60, 2
    # No measurement yet: the first reaction to the backlog is the usual one (1 → 5).
    api.create_object(
        DOCPIPE_RESOURCE, NAMESPACE, pipeline_body("docs", scaling=_scaling(), quotas=QUOTAS)
    )
    await eventually(lambda: (_replicas(api, "docs") or 0) > CEILING, what="the first scale-up")
    # Measured, the ceiling scales the surplus away at once, though the 60 s window would hold it.
    await eventually(lambda: _replicas(api, "docs") == CEILING, within=15, what="the ceiling")
    down = await eventually(lambda: _events(api, "ScaledDown", "docs"), what="a ScaledDown Event")
    assert "would only wait for the provider quota" in down[0]["message"]


async def test_a_quota_held_for_lack_of_credit_keeps_one_worker(
    api: KubernetesApi, operator: OperatorProcess, quota_fleet: QuotaFleet
) -> None:
    fleet = quota_fleet
    fleet.ready_jobs, fleet.oldest_age, fleet.busy_per_pod = BACKLOG, 60, 2
    body = pipeline_body("docs", scaling=_scaling(), quotas=QUOTAS)
    body["spec"]["replicas"] = 3
    api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
    await eventually(lambda: len(fleet.workers) == 3, what="three workers")
    fleet.held = True

    def unpin(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "spec": {k: v for k, v in o["spec"].items() if k != "replicas"}}

    api.update_object(DOCPIPE_RESOURCE, NAMESPACE, "docs", unpin)
    await eventually(lambda: _replicas(api, "docs") == 1, what="one worker kept")
    quota = await eventually(
        lambda: (
            (_condition(api, "docs", "QuotaLimited") or {}).get("reason") == "InsufficientQuota"
            and _condition(api, "docs", "QuotaLimited")
        ),
        what="QuotaLimited for insufficient quota",
    )
    assert quota["status"] == "True"
    warned = await eventually(lambda: _events(api, "QuotaLimited", "docs"), what="an Event")
    assert warned[0]["type"] == "Warning"


def test_the_fake_pods_quota_exposition_is_what_the_operator_reads() -> None:
    class Offline(QuotaFleet):
        def limits(self, pipeline: str) -> dict[str, float]:
            return {"tokens": 90_000.0}

    fleet = Offline(api=None)  # type: ignore[arg-type]
    fleet.use["w"] = QuotaUse(tokens=1500.0, requests=3.0, wait_seconds=2.5)
    worker = FakeWorker("w", "127.0.0.9", "docs", succeeded=3.0)

    reading = telemetry.parse_worker_metrics(
        worker.exposition(fleet) + fleet.quota_exposition(worker), "docs"
    )
    other = telemetry.parse_worker_metrics(fleet.quota_exposition(worker), "elsewhere")

    tokens = QuotaKey("openai", QUOTA_ID, "tokens")
    assert reading.quota_limits == {tokens: 90_000.0}
    assert reading.quota_used[tokens] == 1500.0
    assert reading.quota_used[QuotaKey("openai", QUOTA_ID, "requests")] == 3.0
    assert reading.quota_wait_seconds == 2.5
    assert reading.quota_held == ()
    assert other.quota_limits == {}
    assert other.quota_used == {}
    fleet.held = True
    held = telemetry.parse_worker_metrics(fleet.quota_exposition(worker), "docs")
    assert held.quota_held == (f"openai/{QUOTA_ID}",)
