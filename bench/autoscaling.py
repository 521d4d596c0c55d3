"""Autoscaling: reaction time, docpipe vs KEDA/HPA on traces, and the operator's footprint.

1. Reaction: the real operator (in this process) against the Kubernetes API emulator of the
   operator tests, with worker pods whose /metrics are real HTTP endpoints on 127.0.0.x. A backlog
   appears; the time until the Deployment's replicas are patched is measured, several times, at
   the default interval (5 s). KEDA's defaults react within 30 s polling + 15 s HPA sync.
2. Simulation (bench/autoscaling_sim.py): both decisions on the same traces; p95 queue wait and
   replica-seconds for each; plots in docs/autoscaling-traces.png.
3. Footprint: `docpipe operator` as its own process with 50 DocumentPipelines (one worker each),
   RSS and CPU seconds per minute.

    python bench/autoscaling.py            # a table on stdout
    python bench/autoscaling.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/autoscaling.py` puts bench/ first on sys.path, where bench/queue.py would shadow
# the standard library's `queue`: replace it with the repository root.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == str(ROOT / "bench"):
    del sys.path[0]
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402
import yaml  # noqa: E402
from tests.operator.conftest import (  # noqa: E402
    DEPLOYMENTS,
    NAMESPACE,
    Fleet,
    OperatorProcess,
    free_port,
    pipeline_body,
)
from tests.operator.emulator import DOCPIPE_RESOURCE, KubernetesApi  # noqa: E402

from bench import autoscaling_sim  # noqa: E402

PLOT_PATH = ROOT / "docs" / "autoscaling-traces.png"


async def _with_cluster(work: Any) -> Any:
    api = KubernetesApi()
    async with api, kmock.Server(api) as server:
        api.create_object("/v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
        api.create_object(
            "kopf.dev/v1/clusterkopfpeerings", None, {"metadata": {"name": "docpipe"}}
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "e",
            "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
            "clusters": [{"name": "e", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "u", "user": {"token": "bench"}}],
        }
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"docpipe-bench-{os.getpid()}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        os.environ["KUBECONFIG"] = str(path)
        fleet = Fleet(api)

        async def kubelet() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                await fleet.step(now - last)
                last = now

        task = asyncio.create_task(kubelet())
        try:
            return await work(api, fleet, path)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await fleet.close()
            path.unlink(missing_ok=True)


def _replicas(api: KubernetesApi, name: str = "docs") -> int:
    deployment = api.read_object(DEPLOYMENTS, NAMESPACE, f"{name}-worker")
    return -1 if deployment is None else int(deployment["spec"]["replicas"])


async def measure_reaction(spikes: int) -> list[float]:
    """Seconds from a backlog appearing to the Deployment's replicas being raised."""

    async def work(api: KubernetesApi, fleet: Fleet, _: Path) -> list[float]:
        operator = OperatorProcess(liveness_url=f"http://127.0.0.1:{free_port()}/healthz")
        await operator.start()
        try:
            body = pipeline_body(
                scaling={
                    "minReplicas": 1,
                    "maxReplicas": 50,
                    "intervalSeconds": 5,
                    "scaleDownStabilizationSeconds": 0,
                    "maxScaleUpStep": 50,
                }
            )
            api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
            while _replicas(api) != 1 or len(fleet.workers) != 1:
                await asyncio.sleep(0.05)
            reactions = []
            for _spike in range(spikes):
                await asyncio.sleep(random.uniform(0.5, 5.5))  # land anywhere in an interval
                before = _replicas(api)
                fleet.ready_jobs, fleet.busy_per_pod = 200, 2
                start = time.monotonic()
                while _replicas(api) <= before:
                    await asyncio.sleep(0.01)
                reactions.append(time.monotonic() - start)
                fleet.ready_jobs, fleet.busy_per_pod = 0, 0
                while _replicas(api) != 1:
                    await asyncio.sleep(0.05)
            return reactions
        finally:
            await operator.halt()

    result: list[float] = await _with_cluster(work)
    return result


async def measure_footprint(pipelines: int, seconds: float) -> dict[str, float]:
    """RSS and CPU per minute of `docpipe operator` (its own process) with N pipelines."""

    async def work(api: KubernetesApi, fleet: Fleet, kubeconfig: Path) -> dict[str, float]:
        fleet.busy_per_pod = 1
        for i in range(pipelines):
            body = pipeline_body(f"p{i:02d}")
            api.create_object(DOCPIPE_RESOURCE, NAMESPACE, body)
        liveness_port = free_port()
        process = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "docpipe"),
            "operator",
            f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while len(api.list_objects(DEPLOYMENTS)) < pipelines:
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator did not create every Deployment")
                await asyncio.sleep(0.2)
            await asyncio.sleep(10)  # settle: every daemon running
            proc = psutil.Process(process.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            requests0 = api.request_count
            await asyncio.sleep(seconds)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            return {
                "pipelines": float(pipelines),
                "rss_mib": proc.memory_info().rss / 2**20,
                "cpu_seconds_per_minute": cpu * 60.0 / seconds,
                "api_requests_per_minute": (api.request_count - requests0) * 60.0 / seconds,
            }
        finally:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=20)

    result: dict[str, float] = await _with_cluster(work)
    return result


def plot(load: autoscaling_sim.Workload, path: Path) -> None:
    """The traces with both autoscalers' replicas, one panel per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = autoscaling_sim.TRACES
    fig, axes = plt.subplots(len(traces), 1, figsize=(10, 2.6 * len(traces)))
    for ax, (name, (trace, duration)) in zip(axes, traces.items(), strict=True):
        series = autoscaling_sim.trace_series(trace, duration, load)
        minutes = [t / 60 for t in series["t"]]
        ax.plot(minutes, series["docpipe"], label="docpipe replicas", color="tab:blue")
        ax.plot(minutes, series["keda"], label="KEDA/HPA replicas", color="tab:orange")
        rate = ax.twinx()
        rate.fill_between(minutes, series["rate"], color="grey", alpha=0.2, label="arrivals/s")
        rate.set_ylabel("jobs/s")
        ax.set_title(name)
        ax.set_ylabel("replicas")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--spikes", type=int, default=5, help="backlog spikes to time")
    parser.add_argument("--pipelines", type=int, default=50, help="pipelines for the footprint")
    parser.add_argument("--footprint-seconds", type=float, default=60.0)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    load = autoscaling_sim.Workload()
    traces = autoscaling_sim.run_traces(load)
    if not args.no_plot:
        plot(load, PLOT_PATH)
    reactions = asyncio.run(measure_reaction(args.spikes))
    footprint = asyncio.run(measure_footprint(args.pipelines, args.footprint_seconds))
    result: dict[str, Any] = {
        "reaction_s": max(reactions),
        "reaction_median_s": statistics.median(reactions),
        "reaction_all_s": reactions,
        "reaction_bound_s": 5.0 + 1.0,
        "keda_reaction_bound_s": autoscaling_sim.KEDA_POLLING_SECONDS
        + autoscaling_sim.HPA_SYNC_SECONDS,
        "traces": traces,
        "verdicts": {name: autoscaling_sim.verdict(r) for name, r in traces.items()},
        "verdicts_same_wait": {
            name: autoscaling_sim.verdict(r, "keda_same_wait") for name, r in traces.items()
        },
        "keda_target_per_replica": float(load.concurrency),
        "keda_same_wait_target_per_replica": autoscaling_sim.keda_target_for_wait(load),
        "target_wait_s": load.target_wait_seconds,
        "footprint": footprint,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"reaction: max {max(reactions):.2f} s, median {statistics.median(reactions):.2f} s "
        f"(bound {result['reaction_bound_s']:.0f} s; KEDA defaults up to "
        f"{result['keda_reaction_bound_s']:.0f} s)"
    )
    print(
        f"target wait {load.target_wait_seconds:g} s; KEDA target per replica "
        f"{result['keda_target_per_replica']:g} (no wait) and "
        f"{result['keda_same_wait_target_per_replica']:g} (same wait)"
    )
    print(
        f"{'trace':<16} {'KEDA target':>11} {'docpipe p95':>12} {'keda p95':>9} "
        f"{'docpipe r·s':>12} {'keda r·s':>9} {'ratio':>6} {'work r·s':>9}  meets"
    )
    for name, r in traces.items():
        for keda, verdicts in (("keda", "verdicts"), ("keda_same_wait", "verdicts_same_wait")):
            d, k = r["docpipe"], r[keda]
            label = "no wait" if keda == "keda" else "same wait"
            print(
                f"{name:<16} {label:>11} {d['p95_wait_s']:>11.0f}s {k['p95_wait_s']:>8.0f}s "
                f"{d['replica_seconds']:>12.0f} {k['replica_seconds']:>9.0f} "
                f"{d['replica_seconds'] / k['replica_seconds']:>6.2f} "
                f"{r['work']['replica_seconds']:>9.0f}  {result[verdicts][name]}"
            )
    f = footprint
    print(
        f"operator footprint, {f['pipelines']:.0f} pipelines: RSS {f['rss_mib']:.0f} MiB, "
        f"CPU {f['cpu_seconds_per_minute']:.1f} s/min, "
        f"{f['api_requests_per_minute']:.0f} API requests/min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
