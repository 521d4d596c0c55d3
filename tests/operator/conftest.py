"""Fixtures: the Kubernetes API emulator, the real operator on it, and a simulated kubelet.

The kubelet (`Fleet`) plays the parts of the ReplicaSet controller and the kubelet: it keeps as
many pods as each worker Deployment asks for, removes the lowest pod-deletion-cost first, and
runs for each pod a real HTTP /metrics endpoint on its own 127.0.0.x address, whose figures the
test sets (ready jobs, jobs in flight). The operator under test finds the pods through the API and
scrapes them over HTTP, as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
import yaml

from docpipe_operator import telemetry
from docpipe_operator.runtime import run_operator
from tests.operator.emulator import DOCPIPE_RESOURCE, KubernetesApi

DEPLOYMENTS = "apps/v1/deployments"
PODS = "/v1/pods"
NAMESPACE = "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    """The emulated API server on 127.0.0.1, with a namespace, the peering object, a kubeconfig."""
    emulator = KubernetesApi()
    async with emulator, kmock.Server(emulator) as server:
        emulator.create_object("/v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
        emulator.create_object(
            "kopf.dev/v1/clusterkopfpeerings", None, {"metadata": {"name": "docpipe"}}
        )
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "contexts": [{"name": "emulator", "context": {"cluster": "e", "user": "u"}}],
            "clusters": [{"name": "e", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "u", "user": {"token": "test"}}],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(path))
        emulator.kubeconfig = path  # type: ignore[attr-defined]
        yield emulator


@dataclass
class OperatorProcess:
    """The real operator running in this event loop; `restart` stops and starts it."""

    liveness_url: str
    namespaces: tuple[str, ...] = ()  # served namespaces; none: every namespace
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.stop = asyncio.Event()
        ready = asyncio.Event()
        self.task = asyncio.create_task(
            run_operator(
                liveness_endpoint=self.liveness_url,
                stop_flag=self.stop,
                ready_flag=ready,
                priority=100,
                namespaces=self.namespaces,
            )
        )
        done, _ = await asyncio.wait(
            [self.task, asyncio.create_task(ready.wait())],
            timeout=20,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.task in done:
            self.task.result()
        assert ready.is_set(), "the operator did not get ready"

    async def halt(self) -> None:
        if self.task is None:
            return
        self.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=20)
        self.task = None

    async def restart(self) -> None:
        await self.halt()
        await self.start()


@pytest.fixture
async def operator(api: KubernetesApi) -> AsyncIterator[OperatorProcess]:
    """The operator, started against the emulator, stopped at the end of the test."""
    process = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
    await process.start()
    try:
        yield process
    finally:
        await process.halt()


@dataclass
class FakeWorker:
    """One pod's metrics endpoint: a real HTTP server on its own loopback address."""

    name: str
    ip: str
    pipeline: str
    in_flight: float = 0.0
    succeeded: float = 0.0
    runner: aiohttp.web.AppRunner | None = None

    def exposition(self, fleet: Fleet) -> str:
        labels = f'pipeline="{self.pipeline}",revision="r1"'
        queue = f'pipeline="{self.pipeline}"'
        return (
            f"# TYPE {telemetry.IN_FLIGHT} gauge\n"
            f"{telemetry.IN_FLIGHT}{{{labels}}} {self.in_flight}\n"
            f"# TYPE {telemetry.SUCCEEDED} counter\n"
            f"{telemetry.SUCCEEDED}_total{{{labels}}} {self.succeeded}\n"
            f"# TYPE {telemetry.QUEUE_READY} gauge\n"
            f"{telemetry.QUEUE_READY}{{{queue}}} {fleet.ready_jobs}\n"
            f"# TYPE {telemetry.QUEUE_OLDEST} gauge\n"
            f"{telemetry.QUEUE_OLDEST}{{{queue}}} {fleet.oldest_age}\n"
        )


@dataclass
class Fleet:
    """The simulated ReplicaSet controller and kubelet for worker Deployments."""

    api: KubernetesApi
    ready_jobs: float = 0.0
    oldest_age: float = 0.0
    busy_per_pod: float = 0.0  # jobs in flight reported by each pod
    busy_overrides: dict[str, float] = field(default_factory=dict)  # ... unless named here
    jobs_per_second_per_pod: float = 1.0
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    _addresses: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    _names: itertools.count[int] = field(default_factory=itertools.count)

    async def _serve(self, worker: FakeWorker, port: int) -> None:
        async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text=worker.exposition(self))

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics)
        worker.runner = aiohttp.web.AppRunner(app)
        await worker.runner.setup()
        await aiohttp.web.TCPSite(worker.runner, worker.ip, port).start()

    async def step(self, dt: float) -> None:
        for worker in self.workers.values():
            worker.in_flight = self.busy_overrides.get(worker.name, self.busy_per_pod)
            worker.succeeded += self.jobs_per_second_per_pod * dt
        for deployment in self.api.list_objects(DEPLOYMENTS):
            await self._reconcile(deployment)

    async def _reconcile(self, deployment: dict[str, Any]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace = meta["namespace"]
        template = spec["template"]
        selector = spec["selector"]["matchLabels"]
        pods = [
            p
            for p in self.api.list_objects(PODS, namespace)
            if all(p["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
        wanted = spec.get("replicas", 1)
        port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
        pipeline = selector["docpipe.io/pipeline"]
        while len(pods) < wanted:
            name = f"{meta['name']}-{next(self._names):05d}"
            ip = f"127.0.0.{next(self._addresses)}"
            worker = FakeWorker(name, ip, pipeline, in_flight=self.busy_per_pod)
            await self._serve(worker, port)
            self.workers[name] = worker
            pod = {
                "metadata": {"name": name, "labels": dict(template["metadata"]["labels"])},
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            pods.append(self.api.create_object(PODS, namespace, pod))
        if len(pods) > wanted:
            # As the ReplicaSet controller: lowest pod-deletion-cost first.
            def cost(p: dict[str, Any]) -> int:
                annotations = p["metadata"].get("annotations") or {}
                return int(annotations.get("controller.kubernetes.io/pod-deletion-cost", "0"))

            for pod in sorted(pods, key=cost)[: len(pods) - wanted]:
                name = pod["metadata"]["name"]
                self.api.delete_object(PODS, namespace, name)
                self.removed.append(name)
                worker = self.workers.pop(name)
                if worker.runner is not None:
                    await worker.runner.cleanup()
        status = {"replicas": wanted, "readyReplicas": wanted, "availableReplicas": wanted}
        if deployment.get("status") != status:
            self.api.update_object(
                DEPLOYMENTS,
                namespace,
                meta["name"],
                lambda d: {**d, "status": status},
                subresource="status",
            )

    async def close(self) -> None:
        for worker in self.workers.values():
            if worker.runner is not None:
                await worker.runner.cleanup()


@pytest.fixture
async def fleet(api: KubernetesApi) -> AsyncIterator[Fleet]:
    """A kubelet that runs the worker pods of every Deployment, every 50 ms."""
    simulated = Fleet(api)

    async def loop() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            await simulated.step(now - last)
            last = now

    task = asyncio.create_task(loop())
    try:
        yield simulated
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await simulated.close()


def pipeline_body(name: str = "docs", **spec: Any) -> dict[str, Any]:
    """A valid DocumentPipeline object, with `spec` keys overriding the defaults."""
    base: dict[str, Any] = {
        "worker": {"image": "docpipe:1", "concurrency": 2, "metricsPort": free_port()},
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "embedder": {"baseUrl": "http://mocks:8000/v1"},
        "scaling": {"intervalSeconds": 1, "scaleDownStabilizationSeconds": 3},
    }
    base.update(spec)
    return {
        "apiVersion": "docpipe.io/v1alpha1",
        "kind": "DocumentPipeline",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": base,
    }


def pipeline(api: KubernetesApi, name: str = "docs") -> dict[str, Any] | None:
    """The stored DocumentPipeline."""
    return api.read_object(DOCPIPE_RESOURCE, NAMESPACE, name)
