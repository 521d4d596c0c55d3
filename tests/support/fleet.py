"""A simulated ReplicaSet controller and kubelet for the worker Deployments of an emulated
cluster.

`Fleet` keeps as many pods as each worker Deployment asks for, removes the lowest
pod-deletion-cost first, and runs for each pod either a real HTTP /metrics endpoint on its own
127.0.0.x address, whose figures the caller sets (ready jobs, jobs in flight), or a real
`docpipe worker` process. The operator finds the pods through the API and scrapes them over HTTP,
as it would in a cluster. `kubelet` steps a fleet in the background.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp.web

from docpipe_operator import telemetry
from tests.support.emulator import DEPLOYMENTS, PODS, SECRETS, ApiFailureError, KubernetesApi

# A process pod carries this finalizer, as a pod's containers hold its deletion in a cluster: a
# deleted pod stays (with its deletionTimestamp) until its worker process has exited.
KUBELET_FINALIZER = "tests.docpipe.io/kubelet"


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
            f"{telemetry.QUEUE_READY}{{{queue}}} "
            f"{fleet.ready_by_pipeline.get(self.pipeline, fleet.ready_jobs)}\n"
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
        # `docpipe worker` from the Python running the tests: no console script assumed.
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from docpipe_cli.main import main; sys.exit(main())",
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
    # Per pipeline: the ready jobs its pods report, and the jobs in flight in each of its pods.
    ready_by_pipeline: dict[str, float] = field(default_factory=dict)
    busy_by_pipeline: dict[str, float] = field(default_factory=dict)
    jobs_per_second_per_pod: float = 1.0
    failing_images: set[str] = field(default_factory=set)
    unready_images: set[str] = field(default_factory=set)
    processes: bool = False
    # One HTTP server per port, bound to every local address, answers for all the pods (by the
    # address a request came to) instead of one server per pod: for fleets of thousands.
    shared_server: bool = False
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    running: dict[str, ProcessWorker] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    _addresses: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    _names: itertools.count[int] = field(default_factory=itertools.count)
    _session: aiohttp.ClientSession | None = None
    _by_ip: dict[str, FakeWorker] = field(default_factory=dict)
    _shared: dict[int, aiohttp.web.AppRunner] = field(default_factory=dict)

    def _address(self) -> str:
        # The whole of 127.0.0.0/8 is loopback: room for tens of thousands of pods.
        while True:
            n = next(self._addresses)
            if n % 256 not in (0, 255):
                return f"127.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"

    async def _serve(self, worker: FakeWorker, port: int) -> None:
        self._by_ip[worker.ip] = worker
        if self.shared_server:
            if port not in self._shared:
                await self._serve_shared(port)
            return

        async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text=worker.exposition(self))

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics)
        worker.runner = aiohttp.web.AppRunner(app)
        await worker.runner.setup()
        await aiohttp.web.TCPSite(worker.runner, worker.ip, port).start()

    async def _serve_shared(self, port: int) -> None:
        async def metrics(request: aiohttp.web.Request) -> aiohttp.web.Response:
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            worker = self._by_ip.get(sockname[0]) if sockname else None
            if worker is None:
                raise aiohttp.web.HTTPNotFound()
            return aiohttp.web.Response(text=worker.exposition(self))

        app = aiohttp.web.Application()
        app.router.add_get("/metrics", metrics)
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        # Every local address: the pods are spread over 127.0.0.0/8.
        await aiohttp.web.TCPSite(runner, "0.0.0.0", port).start()
        self._shared[port] = runner

    async def step(self, dt: float) -> None:
        for worker in self.workers.values():
            pipeline_busy = self.busy_by_pipeline.get(worker.pipeline, self.busy_per_pod)
            worker.in_flight = self.busy_overrides.get(worker.name, pipeline_busy)
            # An idle worker finishes nothing: jobs are done only while some are in flight.
            busy = worker.ready and worker.in_flight > 0
            done = self.jobs_per_second_per_pod * dt if busy else 0.0
            worker.claimed += done
            if worker.image in self.failing_images:
                worker.retried += done
            else:
                worker.succeeded += done
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in self.api.stored_objects(PODS):
            for ref in pod["metadata"].get("ownerReferences", []):
                pods.setdefault(ref.get("uid"), []).append(pod)
        for deployment in list(self.api.stored_objects(DEPLOYMENTS)):
            await self._reconcile(deployment, pods.get(deployment["metadata"]["uid"], []))
        for pod in list(self.api.stored_objects(PODS)):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and KUBELET_FINALIZER in (
                meta.get("finalizers") or []
            ):
                # The kubelet: the container stops (its worker finishes or releases its jobs),
                # then the pod goes.
                await self._stop(meta["name"])
                self._release(meta.get("namespace"), meta["name"])
        # Pods whose Deployment went (the garbage collector took them): stop their workers.
        existing = {p["metadata"]["name"] for p in self.api.stored_objects(PODS)}
        for name in [n for n in (*self.workers, *self.running) if n not in existing]:
            await self._stop(name)

    async def _stop(self, name: str) -> None:
        self.removed.append(name)
        worker = self.workers.pop(name, None)
        if worker is not None:
            self._by_ip.pop(worker.ip, None)
            await worker.close()
        process = self.running.pop(name, None)
        if process is not None:
            await process.close()

    def _release(self, namespace: str | None, name: str) -> None:
        def without(p: dict[str, Any]) -> dict[str, Any]:
            finalizers = [
                f for f in p["metadata"].get("finalizers") or [] if f != KUBELET_FINALIZER
            ]
            return {**p, "metadata": {**p["metadata"], "finalizers": finalizers}}

        with contextlib.suppress(ApiFailureError):
            self.api.update_object(PODS, namespace, name, without)

    def _ready(self, name: str) -> bool:
        if name in self.workers:
            return self.workers[name].ready
        return name in self.running and self.running[name].ready

    def _exists(self, deployment: dict[str, Any]) -> bool:
        meta = deployment["metadata"]
        current = self.api.read_object(DEPLOYMENTS, meta["namespace"], meta["name"])
        return current is not None and current["metadata"]["uid"] == meta["uid"]

    async def _start_pod(
        self, deployment: dict[str, Any], pipeline: str, port: int
    ) -> dict[str, Any] | None:
        """Start a pod of `deployment`; None when the Deployment was deleted meanwhile (the step
        awaits between listing the Deployments and starting their pods): a pod created then
        would outlive its owner, which the garbage collector has already swept."""
        if not self._exists(deployment):
            return None
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        namespace = meta["namespace"]
        name = f"{meta['name']}-{next(self._names):05d}"
        ip = self._address()
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
                **({"finalizers": [KUBELET_FINALIZER]} if self.processes else {}),
            },
            "spec": template["spec"],
            "status": self._pod_status(ip, ready, 0),
        }
        if not self._exists(deployment):
            await self._stop(name)
            return None
        return self.api.create_object(PODS, namespace, pod)

    @staticmethod
    def _pod_status(ip: str, ready: bool, restarts: int) -> dict[str, Any]:
        return {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "worker", "restartCount": restarts, "ready": ready}],
        }

    async def _reconcile(self, deployment: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace = meta["namespace"]
        # Terminating pods are the kubelet's (see `step`), no longer the ReplicaSet's.
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        template = spec["template"]
        selector = spec["selector"]["matchLabels"]
        revision = template["metadata"]["labels"].get("docpipe.io/revision")
        wanted = spec.get("replicas", 1)
        port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
        pipeline = selector["docpipe.io/pipeline"]
        if self.processes:
            await self._probe(namespace, pods)
        new = [p for p in pods if p["metadata"]["labels"].get("docpipe.io/revision") == revision]
        old = [p for p in pods if p not in new]
        while len(new) < wanted:
            started = await self._start_pod(deployment, pipeline, port)
            if started is None:
                return  # the Deployment went meanwhile: its pods are the garbage collector's
            new.append(started)
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
        for runner in self._shared.values():
            await runner.cleanup()
        self._shared.clear()
        if self._session is not None:
            await self._session.close()


FleetT = TypeVar("FleetT", bound=Fleet)


@contextlib.asynccontextmanager
async def kubelet(fleet: FleetT, *, period: float = 0.05) -> AsyncIterator[FleetT]:
    """Step `fleet` every `period` seconds until the block ends, then stop its pods."""

    async def loop() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            await fleet.step(now - last)
            last = now

    task = asyncio.create_task(loop())
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fleet.close()
