"""A real Prometheus server (Debian's `prometheus` binary) scraping real metrics endpoints.

Each `WorkerEndpoint` is one pod's /metrics: the worker's own metric families
(named by `docpipe_contracts.metrics`, in a registry of its own so that pods differ) exposed by
prometheus_client and served by aiohttp on the pod's own 127.0.0.x address. The Prometheus
server scrapes them every second and attaches the `namespace` and `pod` target labels a
prometheus-operator PodMonitor attaches.

One server serves the whole session, and scrapes from its start the address of every pod any
test runs (`PODS`; a pod whose test has not started it is just a target that is down): Prometheus
2.42 applies new targets only every 5 s, which per test would cost more than the test itself.
Tests use distinct pipeline names, so the series a finished test leaves never meet another's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from docpipe_contracts import metrics
from docpipe_operator.telemetry import PodTarget
from tests.support import prometheus as prometheus_server
from tests.support.ports import free_port

SCRAPE_INTERVAL_S = 1.0
# (namespace, pod) of every worker any test runs; each has its own 127.0.0.x address.
PODS = (
    ("default", "load-a"),
    ("default", "load-b"),
    ("default", "load-other"),
    ("staging", "load-a"),
    ("default", "down-a"),
    ("default", "none-a"),
    ("default", "gone-a"),
    ("default", "gone-b"),
    *(
        ("default", f"{pipeline}-{track}")
        for pipeline in ("bad", "slow", "good")
        for track in ("stable", "canary")
    ),
)


def pod_address(namespace: str, name: str) -> str:
    return f"127.0.0.{20 + PODS.index((namespace, name))}"


def prometheus_binary() -> str:
    """The `prometheus` binary; in CI (CI=true) its absence fails the test, elsewhere skips it."""
    found = prometheus_server.find_binary()
    if found is None:
        message = (
            "the prometheus binary is not installed (Debian package `prometheus`;"
            " .ci/run installs it)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _clone(spec: metrics.MetricSpec, registry: CollectorRegistry) -> Any:
    # The worker's families, same names, labels and buckets, in a registry of one pod.
    return metrics.instrument(spec, registry)


@dataclass
class WorkerEndpoint:
    """One worker pod's /metrics on its own loopback address."""

    name: str
    namespace: str
    ip: str
    port: int
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    runner: aiohttp.web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.claimed = _clone(metrics.JOBS_CLAIMED, self.registry)
        self.succeeded = _clone(metrics.JOBS_SUCCEEDED, self.registry)
        self.retried = _clone(metrics.JOBS_RETRIED, self.registry)
        self.dead = _clone(metrics.JOBS_DEAD, self.registry)
        self.in_flight = _clone(metrics.JOBS_IN_FLIGHT, self.registry)
        self.stage = _clone(metrics.STAGE_SECONDS, self.registry)
        self.queue_ready = _clone(metrics.QUEUE_READY, self.registry)
        self.queue_oldest = _clone(metrics.QUEUE_OLDEST_READY_AGE, self.registry)

    def work(
        self,
        pipeline: str,
        revision: str,
        *,
        succeeded: int = 0,
        retried: int = 0,
        dead: int = 0,
        stage_seconds: float | None = None,
    ) -> None:
        """Jobs this worker claimed and finished: each claimed once, observed in one stage."""
        labels = (pipeline, revision)
        jobs = succeeded + retried + dead
        self.claimed.labels(*labels).inc(jobs)
        self.succeeded.labels(*labels).inc(succeeded)
        self.retried.labels(*labels).inc(retried)
        self.dead.labels(*labels).inc(dead)
        if stage_seconds is not None:
            for _ in range(jobs):
                self.stage.labels(*labels, "parse").observe(stage_seconds)

    def start_pipeline(self, pipeline: str, revision: str) -> None:
        """The series a worker's consumer creates at start (every counter at zero)."""
        for family in (self.claimed, self.succeeded, self.retried, self.dead, self.in_flight):
            family.labels(pipeline, revision)

    def target(
        self, *, ready: bool = True, revision: str | None = None, canary: bool = False
    ) -> PodTarget:
        return PodTarget(self.name, self.ip, ready, revision, 0, canary)

    async def start(self) -> None:
        async def serve(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(
                body=generate_latest(self.registry), content_type="text/plain"
            )

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", serve)
        self.runner = aiohttp.web.AppRunner(app)
        await self.runner.setup()
        await aiohttp.web.TCPSite(self.runner, self.ip, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class Workers:
    """The pods of a test, all on one metrics port (as in a cluster), each on its own address."""

    prometheus: PrometheusServer
    pods: list[WorkerEndpoint] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.prometheus.worker_port

    async def add(self, name: str, namespace: str = "default") -> WorkerEndpoint:
        pod = WorkerEndpoint(name, namespace, pod_address(namespace, name), self.port)
        await pod.start()
        self.pods.append(pod)
        return pod

    async def scraped(self) -> None:
        """Until Prometheus has scraped every pod of the test twice."""
        await self.prometheus.wait_scraped([p.name for p in self.pods])


@pytest.fixture
async def workers(prometheus: PrometheusServer) -> AsyncIterator[Workers]:
    fleet = Workers(prometheus)
    try:
        yield fleet
    finally:
        for pod in fleet.pods:
            await pod.stop()


@dataclass
class PrometheusServer(prometheus_server.PrometheusServer):
    """The tests' Prometheus: scrapes every second, each pod of `PODS` on its own address."""

    worker_port: int = field(default_factory=free_port)

    def launch_pods(self, pods: Sequence[tuple[str, str]]) -> None:
        """Start the server scraping `pods` (namespace, name) on `worker_port`."""
        self.launch(
            [
                (f"{pod_address(ns, name)}:{self.worker_port}", {"namespace": ns, "pod": name})
                for ns, name in pods
            ]
        )


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """The session's Prometheus, scraping every pod of `PODS` every second."""
    server = PrometheusServer(
        prometheus_binary(), tmp_path_factory.mktemp("prometheus"), SCRAPE_INTERVAL_S
    )
    try:
        server.launch_pods(PODS)
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus of the test's own, scraping nothing, that the test may stop."""
    server = PrometheusServer(prometheus_binary(), tmp_path, SCRAPE_INTERVAL_S)
    try:
        server.launch_pods(())
        yield server
    finally:
        server.stop()
