"""An emulated cluster for the operator: the API server with a namespace and the peering object,
a kubeconfig that points at it, the real operator running in this event loop, and
DocumentPipeline objects to give it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import yaml

from docpipe_operator.crd import build_crd
from docpipe_operator.observation import SecretsPolicy
from docpipe_operator.runtime import run_operator
from tests.support.emulator import CRDS, DOCPIPE_RESOURCE, KubernetesApi
from tests.support.ports import free_port

NAMESPACE = "default"


@contextlib.asynccontextmanager
async def emulated_cluster(kubeconfig: Path) -> AsyncIterator[KubernetesApi]:
    """The emulated API server on 127.0.0.1 with namespace `default`, the DocumentPipeline CRD
    and the cluster-wide peering object; a kubeconfig for it is written to `kubeconfig` (point
    KUBECONFIG at it)."""
    api = KubernetesApi()
    async with api, kmock.Server(api) as server:
        api.create_object("/v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
        # The DocumentPipeline CRD, as `kubectl apply -f crds/` installs it: the emulator then
        # prunes, defaults and validates pipelines as the API server does.
        api.create_object(CRDS, None, build_crd())
        api.create_object(
            "kopf.dev/v1/clusterkopfpeerings", None, {"metadata": {"name": "docpipe"}}
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "contexts": [{"name": "emulator", "context": {"cluster": "e", "user": "u"}}],
            "clusters": [{"name": "e", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "u", "user": {"token": "test"}}],
        }
        await asyncio.to_thread(kubeconfig.write_text, yaml.safe_dump(config))
        api.kubeconfig = kubeconfig
        yield api


@dataclass
class OperatorProcess:
    """The real operator running in this event loop; `restart` stops and starts it."""

    liveness_url: str
    namespaces: tuple[str, ...] = ()  # served namespaces; none: every namespace
    secret_reads: SecretsPolicy | None = None  # None: the environment's (default: read, 60 s)
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
                secret_reads=self.secret_reads,
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
