"""Fixtures: the Kubernetes API emulator, the real operator on it, and a simulated kubelet.

The kubelet (`Fleet`) plays the parts of the ReplicaSet controller and the kubelet: it keeps as
many pods as each worker Deployment asks for, removes the lowest pod-deletion-cost first, and
runs for each pod a real HTTP /metrics endpoint on its own 127.0.0.x address, whose figures the
test sets (ready jobs, jobs in flight). The operator under test finds the pods through the API and
scrapes them over HTTP, as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import asyncpg
import kmock
import pytest
import yaml

from docpipe_operator import telemetry
from docpipe_operator.runtime import run_operator
from docpipe_queue.documents import add_document
from tests.operator.emulator import DOCPIPE_RESOURCE, ApiFailureError, KubernetesApi

DEPLOYMENTS = "apps/v1/deployments"
PODS = "/v1/pods"
SECRETS = "/v1/secrets"
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
    revision: str = "r1"
    image: str = ""
    claimed: float = 0.0
    retried: float = 0.0
    ready: bool = True
    runner: aiohttp.web.AppRunner | None = None

    def exposition(self, fleet: Fleet) -> str:
        labels = f'pipeline="{self.pipeline}",revision="{self.revision}"'
        queue = f'pipeline="{self.pipeline}"'
        return (
            f"# TYPE {telemetry.IN_FLIGHT} gauge\n"
            f"{telemetry.IN_FLIGHT}{{{labels}}} {self.in_flight}\n"
            f"# TYPE {telemetry.SUCCEEDED}_total counter\n"
            f"{telemetry.SUCCEEDED}_total{{{labels}}} {self.succeeded}\n"
            f"# TYPE {telemetry.CLAIMED}_total counter\n"
            f"{telemetry.CLAIMED}_total{{{labels}}} {self.claimed}\n"
            f"# TYPE {telemetry.RETRIED}_total counter\n"
            f"{telemetry.RETRIED}_total{{{labels}}} {self.retried}\n"
            f"# TYPE {telemetry.QUEUE_READY} gauge\n"
            f"{telemetry.QUEUE_READY}{{{queue}}} {fleet.ready_jobs}\n"
            f"# TYPE {telemetry.QUEUE_OLDEST} gauge\n"
            f"{telemetry.QUEUE_OLDEST}{{{queue}}} {fleet.oldest_age}\n"
        )

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class ProcessWorker:
    """One pod as a real `docpipe worker` process, run with the pod's environment and serving
    /metrics, /healthz and /readyz on the pod's own loopback address."""

    name: str
    ip: str
    port: int
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    _checked: float = 0.0

    async def start(self) -> None:
        command = str(Path(sys.executable).with_name("docpipe"))
        self.process = await asyncio.create_subprocess_exec(
            command,
            "worker",
            env={**os.environ, **self.env, "DOCPIPE_METRICS_HOST": self.ip},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def check(self, session: aiohttp.ClientSession) -> bool:
        """Whether readiness changed (the kubelet's probe); a dead process is restarted."""
        if self.process is not None and self.process.returncode is not None:
            self.restarts += 1
            await self.start()
            was, self.ready = self.ready, False
            return was
        now = time.monotonic()
        if now - self._checked < 0.25:
            return False
        self._checked = now
        try:
            url = f"http://{self.ip}:{self.port}/readyz"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ready = False
        changed = ready != self.ready
        self.ready = ready
        return changed

    async def close(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _env_value(api: KubernetesApi, namespace: str, entry: dict[str, Any]) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    if ref is None:
        return None
    secret = api.read_object(SECRETS, namespace, ref["name"]) or {}
    raw = (secret.get("data") or {}).get(ref["key"])
    return base64.b64decode(raw).decode() if raw is not None else None


@dataclass
class Fleet:
    """The simulated ReplicaSet controller and kubelet for worker Deployments.

    Each Deployment owns its pods (by owner reference, as a ReplicaSet would); a changed template
    rolls them: new pods first, old ones once every new one is ready. With `processes`, each pod
    is a real `docpipe worker` process; otherwise a metrics endpoint whose figures the test sets
    (`failing_images` make its workers fail every job they claim; `unready_images` never get
    ready).
    """

    api: KubernetesApi
    ready_jobs: float = 0.0
    oldest_age: float = 0.0
    busy_per_pod: float = 0.0  # jobs in flight reported by each pod
    busy_overrides: dict[str, float] = field(default_factory=dict)  # ... unless named here
    jobs_per_second_per_pod: float = 1.0
    failing_images: set[str] = field(default_factory=set)
    unready_images: set[str] = field(default_factory=set)
    processes: bool = False
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    running: dict[str, ProcessWorker] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    _addresses: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    _names: itertools.count[int] = field(default_factory=itertools.count)
    _session: aiohttp.ClientSession | None = None

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
            # An idle worker finishes nothing: jobs are done only while some are in flight.
            busy = worker.ready and worker.in_flight > 0
            done = self.jobs_per_second_per_pod * dt if busy else 0.0
            worker.claimed += done
            if worker.image in self.failing_images:
                worker.retried += done
            else:
                worker.succeeded += done
        deployments = self.api.list_objects(DEPLOYMENTS)
        for deployment in deployments:
            await self._reconcile(deployment)
        # Pods whose Deployment went (the garbage collector took them): stop their workers.
        existing = {p["metadata"]["name"] for p in self.api.list_objects(PODS)}
        for name in [n for n in (*self.workers, *self.running) if n not in existing]:
            await self._stop(name)

    async def _stop(self, name: str) -> None:
        self.removed.append(name)
        worker = self.workers.pop(name, None)
        if worker is not None:
            await worker.close()
        process = self.running.pop(name, None)
        if process is not None:
            await process.close()

    def _ready(self, name: str) -> bool:
        if name in self.workers:
            return self.workers[name].ready
        return name in self.running and self.running[name].ready

    async def _start_pod(
        self, deployment: dict[str, Any], pipeline: str, port: int
    ) -> dict[str, Any]:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        namespace = meta["namespace"]
        name = f"{meta['name']}-{next(self._names):05d}"
        ip = f"127.0.0.{next(self._addresses)}"
        container = template["spec"]["containers"][0]
        env = {e["name"]: _env_value(self.api, namespace, e) for e in container.get("env", [])}
        image = container["image"]
        ready = image not in self.unready_images
        if self.processes:
            process = ProcessWorker(name, ip, port, {k: v for k, v in env.items() if v is not None})
            await process.start()
            self.running[name] = process
            ready = False
        else:
            worker = FakeWorker(
                name,
                ip,
                pipeline,
                in_flight=self.busy_per_pod,
                revision=env.get("DOCPIPE_REVISION") or "r1",
                image=image,
                ready=ready,
            )
            await self._serve(worker, port)
            self.workers[name] = worker
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]}
        pod = {
            "metadata": {
                "name": name,
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [{**owner, "uid": meta["uid"], "controller": True}],
            },
            "spec": template["spec"],
            "status": self._pod_status(ip, ready, 0),
        }
        return self.api.create_object(PODS, namespace, pod)

    @staticmethod
    def _pod_status(ip: str, ready: bool, restarts: int) -> dict[str, Any]:
        return {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "worker", "restartCount": restarts, "ready": ready}],
        }

    async def _reconcile(self, deployment: dict[str, Any]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace = meta["namespace"]
        template = spec["template"]
        selector = spec["selector"]["matchLabels"]
        revision = template["metadata"]["labels"].get("docpipe.io/revision")
        pods = [
            p
            for p in self.api.list_objects(PODS, namespace)
            if any(r.get("uid") == meta["uid"] for r in p["metadata"].get("ownerReferences", []))
        ]
        wanted = spec.get("replicas", 1)
        port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
        pipeline = selector["docpipe.io/pipeline"]
        if self.processes:
            await self._probe(namespace, pods)
        new = [p for p in pods if p["metadata"]["labels"].get("docpipe.io/revision") == revision]
        old = [p for p in pods if p not in new]
        while len(new) < wanted:
            new.append(await self._start_pod(deployment, pipeline, port))
        if old and all(self._ready(p["metadata"]["name"]) for p in new):
            # The rolling update: old pods go once the new ones are ready.
            for pod in old:
                self.api.delete_object(PODS, namespace, pod["metadata"]["name"])
                await self._stop(pod["metadata"]["name"])
            old = []
        if len(new) > wanted:
            # As the ReplicaSet controller: lowest pod-deletion-cost first.
            def cost(p: dict[str, Any]) -> int:
                annotations = p["metadata"].get("annotations") or {}
                return int(annotations.get("controller.kubernetes.io/pod-deletion-cost", "0"))

            for pod in sorted(new, key=cost)[: len(new) - wanted]:
                name = pod["metadata"]["name"]
                self.api.delete_object(PODS, namespace, name)
                await self._stop(name)
            new = sorted(new, key=cost)[len(new) - wanted :]
        ready = sum(self._ready(p["metadata"]["name"]) for p in (*new, *old))
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(new) + len(old),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if deployment.get("status") != status:
            # The operator may have deleted the Deployment (a finished canary) meanwhile.
            with contextlib.suppress(ApiFailureError):
                self.api.update_object(
                    DEPLOYMENTS,
                    namespace,
                    meta["name"],
                    lambda d: {**d, "status": status},
                    subresource="status",
                )

    async def _probe(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for pod in pods:
            name = pod["metadata"]["name"]
            process = self.running.get(name)
            if process is None or not await process.check(self._session):
                continue
            status = self._pod_status(process.ip, process.ready, process.restarts)

            def with_status(p: dict[str, Any], s: dict[str, Any] = status) -> dict[str, Any]:
                return {**p, "status": s}

            with contextlib.suppress(ApiFailureError):
                self.api.update_object(PODS, namespace, name, with_status, subresource="status")

    async def close(self) -> None:
        for name in [*self.workers, *self.running]:
            await self._stop(name)
        if self._session is not None:
            await self._session.close()


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


async def feed_documents(
    pool: asyncpg.Pool, stop: asyncio.Event, added: list[int], *, per_second: float, owner: str
) -> None:
    """Add a small markdown document (with its job) to pipeline `docs` `per_second` times a
    second until `stop`; each one's number goes into `added`."""
    n = 0
    while not stop.is_set():
        async with pool.acquire() as conn:
            await add_document(
                conn,
                pipeline="docs",
                owner=owner,
                filename=f"{n}.md",
                content_type="text/markdown",
                data=f"# Note {n}\n\nHarbour seals rest on sandbanks, note {n}.\n".encode(),
            )
        added.append(n)
        n += 1
        await asyncio.sleep(1 / per_second)
