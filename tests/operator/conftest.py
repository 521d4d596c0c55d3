"""Fixtures: the Kubernetes API emulator, the real operator on it, and a simulated kubelet.

The parts themselves live in tests/support (the benchmarks use them too): the emulator
(`support.emulator`), the cluster around it and the operator (`support.cluster`), and the fleet
of worker pods (`support.fleet`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import OperatorProcess, emulated_cluster
from tests.support.emulator import KubernetesApi
from tests.support.fleet import Fleet, kubelet
from tests.support.ports import free_port


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    """The emulated API server on 127.0.0.1, with a namespace, the peering object, a kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    async with emulated_cluster(kubeconfig) as emulator:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield emulator


@pytest.fixture
async def operator(api: KubernetesApi) -> AsyncIterator[OperatorProcess]:
    """The operator, started against the emulator, stopped at the end of the test."""
    process = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
    await process.start()
    try:
        yield process
    finally:
        await process.halt()


@pytest.fixture
async def fleet(api: KubernetesApi) -> AsyncIterator[Fleet]:
    """A kubelet that runs the worker pods of every Deployment, every 50 ms."""
    async with kubelet(Fleet(api)) as simulated:
        yield simulated
