"""Autoscaling: reaction time, docpipe vs KEDA/HPA on traces, and the operator's footprint.

1. Reaction: the real operator (in this process) against the Kubernetes API emulator of the
   operator tests, with worker pods whose /metrics are real HTTP endpoints on 127.0.0.x. A backlog
   appears; the time until the Deployment's replicas are patched is measured, several times, at
   the default interval (5 s). KEDA's defaults react within 30 s polling + 15 s HPA sync.
2. Simulation (bench/autoscaling_simulation.py): docpipe's decision and KEDA + HPA over a sweep of
   targets per replica, on the same seeded jobs of each trace; p95 queue wait, replica-seconds and
   pods started; docpipe against KEDA tuned to the same wait and to the same replica-seconds.
   Plots in docs/autoscaling-traces.png and docs/autoscaling-frontier.png.
3. Footprint: `docpipe operator` as its own process (started from this Python) with 50, 200 and
   1,000 DocumentPipelines of 1 to 3 worker pods each (one HTTP server answers /metrics for every
   pod address): API requests per pipeline per minute in steady state, CPU seconds per minute,
   RSS, and the reaction from a backlog spike to the patched replica count at that scale. With
   `--metrics-source pods,prometheus` each size also runs with the pipelines reading their load
   through a real Prometheus (Debian's binary) scraping every pod, whose CPU and RSS are measured.

    python bench/autoscaling.py                  # a table on stdout
    python bench/autoscaling.py --json           # one JSON object on stdout
    python bench/autoscaling.py --sim-only       # the simulation and its plots only (~15 s)
    python bench/autoscaling.py --footprint-only --pipelines 50,200,1000
    python bench/autoscaling.py --footprint-only --pipelines 50,200 --metrics-source pods,prometheus
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/autoscaling.py` puts bench/ first on sys.path, where bench/queue.py would shadow
# the standard library's `queue`: replace it with the repository root.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == str(ROOT / "bench"):
    del sys.path[0]
sys.path.insert(0, str(ROOT))

import psutil  # type: ignore[import-untyped]  # noqa: E402
from tests.support import autoscaling_simulation  # noqa: E402
from tests.support import prometheus as prometheus_server  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    NAMESPACE,
    OperatorProcess,
    emulated_cluster,
    pipeline_body,
)
from tests.support.emulator import DEPLOYMENTS, DOCPIPE_RESOURCE, PODS, KubernetesApi  # noqa: E402
from tests.support.fleet import Fleet, kubelet  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.prometheus import PrometheusServer  # noqa: E402

PLOT_PATH = ROOT / "docs" / "autoscaling-traces.png"
FRONTIER_PATH = ROOT / "docs" / "autoscaling-frontier.png"


async def _with_cluster(work: Any, *, shared_server: bool = False, period: float = 0.05) -> Any:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"docpipe-bench-{os.getpid()}.kubeconfig"
    try:
        async with (
            emulated_cluster(path) as api,
            kubelet(Fleet(api, shared_server=shared_server), period=period) as fleet,
        ):
            os.environ["KUBECONFIG"] = str(path)
            return await work(api, fleet, path)
    finally:
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


# `docpipe …` from the Python that runs this script: no console script or venv layout assumed.
DOCPIPE = (sys.executable, "-c", "import sys; from docpipe_cli.main import main; sys.exit(main())")
FOOTPRINT_PORT = 9300  # every fake pod's /metrics, one server for all (Fleet.shared_server)
SPIKES_PER_SIZE = 3
SPIKE_LIMIT = 30.0  # seconds; a spike not answered by then counts as missed
# Prometheus' scrape interval in the footprint runs with metrics.source: prometheus (a common
# production setting is 15-30 s; the pipelines' interval here is 5 s).
PROMETHEUS_SCRAPE_S = 5.0


def _footprint_body(i: int, prometheus_url: str | None = None) -> dict[str, Any]:
    """Pipeline i: 1 to 3 workers, held there (one job in flight each, two slots); with
    `prometheus_url`, read through Prometheus (`metrics.source: prometheus`)."""
    pods = 1 + i % 3
    metrics = (
        {}
        if prometheus_url is None
        else {"metrics": {"source": "prometheus", "prometheus": {"url": prometheus_url}}}
    )
    return pipeline_body(
        f"p{i:04d}",
        worker={"image": "docpipe:1", "concurrency": 2, "metricsPort": FOOTPRINT_PORT},
        scaling={
            "minReplicas": pods,
            "maxReplicas": 20,
            "intervalSeconds": 5,
            "scaleDownStabilizationSeconds": 0,
            "maxScaleUpStep": 20,
        },
        **metrics,
    )


def _start_prometheus() -> PrometheusServer:
    """Debian's `prometheus`, scraping what the footprint run writes to its targets file."""
    binary = prometheus_server.find_binary()
    if binary is None:
        raise SystemExit("--metrics-source prometheus needs the prometheus binary (apt install)")
    directory = Path(tempfile.mkdtemp(prefix="docpipe-footprint-prometheus-"))
    server = PrometheusServer(binary, directory, scrape_interval_s=PROMETHEUS_SCRAPE_S)
    server.launch(discovered=True)
    return server


def _pod_targets(api: KubernetesApi) -> list[prometheus_server.Target]:
    """Every running pod's /metrics with the target labels a PodMonitor attaches."""
    return [
        (
            f"{pod['status']['podIP']}:{FOOTPRINT_PORT}",
            {"namespace": NAMESPACE, "pod": pod["metadata"]["name"]},
        )
        for pod in api.stored_objects(PODS, NAMESPACE)
        if (pod.get("status") or {}).get("podIP")
    ]


async def measure_footprint(pipelines: int, seconds: float, source: str = "pods") -> dict[str, Any]:
    """Steady state of `docpipe operator` (its own process) with N pipelines of 1-3 pods each:
    API requests, CPU seconds per minute and RSS; then the reaction to backlog spikes. With
    `source` "prometheus" the pipelines read their load through a real Prometheus scraping
    every pod, whose own CPU and RSS are measured beside the operator's."""
    prometheus = _start_prometheus() if source == "prometheus" else None

    async def work(api: KubernetesApi, fleet: Fleet, kubeconfig: Path) -> dict[str, Any]:
        fleet.busy_per_pod = 1
        pods = 0
        url = None if prometheus is None else prometheus.url
        for i in range(pipelines):
            api.create_object(DOCPIPE_RESOURCE, NAMESPACE, _footprint_body(i, url))
            pods += 1 + i % 3
        liveness_port = free_port()
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *DOCPIPE,
            "operator",
            f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60 + pipelines * 0.5
            while not (
                len(fleet.workers) == pods
                and sum(
                    (p.get("status") or {}).get("readyReplicas") == 1 + i % 3
                    for i, p in enumerate(
                        sorted(
                            api.stored_objects(DOCPIPE_RESOURCE),
                            key=lambda o: o["metadata"]["name"],
                        )
                    )
                )
                == pipelines
            ):
                if time.monotonic() > deadline or process.returncode is not None:
                    raise RuntimeError("the operator did not bring every pipeline up")
                await asyncio.sleep(0.5)
            converged = time.monotonic() - started
            if prometheus is not None:
                targets = _pod_targets(api)
                prometheus.set_targets(targets)
                await prometheus.wait_scraped([t[1]["pod"] for t in targets], within=120)
            # Settle: the throughput figure moves until the decision's 60 s rate window is full.
            await asyncio.sleep(65)
            proc = psutil.Process(process.pid)
            scraper = None if prometheus is None else psutil.Process(prometheus.pid)
            scraper_cpu0 = 0.0 if scraper is None else sum(scraper.cpu_times()[:2])
            harness = psutil.Process()  # this process: the emulator and every pod's /metrics
            harness_cpu0 = sum(harness.cpu_times()[:2])
            cpu0 = sum(proc.cpu_times()[:2])
            requests0 = api.request_count
            verbs0 = dict(api.requests_by)
            await asyncio.sleep(seconds)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            requests = (api.request_count - requests0) * 60.0 / seconds
            verbs = {
                k: v - verbs0.get(k, 0) for k, v in api.requests_by.items() if v - verbs0.get(k, 0)
            }
            rss = proc.memory_info().rss / 2**20
            harness_cpu = sum(harness.cpu_times()[:2]) - harness_cpu0
            scraper_cpu = 0.0 if scraper is None else sum(scraper.cpu_times()[:2]) - scraper_cpu0
            scraper_rss = 0.0 if scraper is None else scraper.memory_info().rss / 2**20
            incomplete = sum(
                any(
                    c.get("type") == "Degraded" and c.get("reason") == "MetricsIncomplete"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
                for p in api.stored_objects(DOCPIPE_RESOURCE)
            )
            reactions: list[float | None] = []
            for spike in range(SPIKES_PER_SIZE):
                name = f"p{spike * 3 * max(1, pipelines // 10):04d}"  # a one-worker pipeline
                await asyncio.sleep(random.uniform(0.5, 5.5))  # anywhere in an interval
                before = _replicas(api, name)
                fleet.ready_by_pipeline[name], fleet.busy_by_pipeline[name] = 200, 2
                spiked = time.monotonic()
                while _replicas(api, name) <= before and time.monotonic() - spiked < SPIKE_LIMIT:
                    await asyncio.sleep(0.01)
                took = time.monotonic() - spiked
                reactions.append(took if took < SPIKE_LIMIT else None)
                del fleet.ready_by_pipeline[name], fleet.busy_by_pipeline[name]
            return {
                "pipelines": pipelines,
                "metrics_source": source,
                "pods": pods,
                "api_requests_per_minute": requests,
                "api_requests_per_pipeline_minute": requests / pipelines,
                "api_requests_by_kind": verbs,
                "cpu_seconds_per_minute": cpu * 60.0 / seconds,
                "rss_mib": rss,
                # None: no scale-up within SPIKE_LIMIT seconds.
                "reaction_s": None if None in reactions else max(r for r in reactions if r),
                "reaction_all_s": reactions,
                "harness_cpu_seconds_per_minute": harness_cpu * 60.0 / seconds,
                # Prometheus' own cost (metrics.source: prometheus), scraping every pod.
                "prometheus_cpu_seconds_per_minute": scraper_cpu * 60.0 / seconds,
                "prometheus_rss_mib": scraper_rss,
                "pipelines_metrics_incomplete": incomplete,
                "converge_s": converged,
                "measured_seconds": seconds,
            }
        finally:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=30)

    try:
        result: dict[str, Any] = await _with_cluster(work, shared_server=True, period=0.5)
    finally:
        if prometheus is not None:
            prometheus.stop()
            shutil.rmtree(prometheus.directory, ignore_errors=True)
    return result


def plot_traces(
    load: autoscaling_simulation.Workload, traces: dict[str, dict[str, Any]], path: Path
) -> None:
    """Replicas over time of docpipe, of KEDA at docpipe's cost and at its usual target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(10, 2.8 * len(traces)))
    for ax, (name, result) in zip(axes, traces.items(), strict=True):
        trace, duration = autoscaling_simulation.TRACES[name]
        same_cost = result["keda_same_cost"]["target_per_replica"]
        usual = result["keda_usual"]["target_per_replica"]
        series = autoscaling_simulation.trace_series(
            trace, duration, load, {"same_cost": same_cost, "usual": usual}
        )
        minutes = [t / 60 for t in series["t"]]
        rate = ax.twinx()
        rate.fill_between(minutes, series["rate"], color="grey", alpha=0.2, step="post")
        rate.set_ylabel("arrivals/s (shaded)")
        ax.set_zorder(rate.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(minutes, series["docpipe"], label="docpipe", color="tab:blue")
        ax.plot(
            minutes,
            series["same_cost"],
            label=f"KEDA, {same_cost:g}/replica (docpipe's cost)",
            color="tab:orange",
        )
        ax.plot(
            minutes,
            series["usual"],
            label=f"KEDA, {usual:g}/replica (usual)",
            color="tab:green",
            linestyle="--",
            linewidth=1,
        )
        ax.set_title(name)
        ax.set_ylabel("replicas")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


FRONTIER_LABELS = {8.0, 9.0, 12.0, 16.0, 24.0, 32.0, 48.0, 68.0, 100.0, 152.0, 200.0}


def plot_frontier(traces: dict[str, dict[str, Any]], path: Path) -> None:
    """Per trace: KEDA's sweep as p95 wait against replica-seconds, docpipe's point, the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, (len(traces) + 1) // 2, figsize=(12, 9))
    for ax, (name, result) in zip(axes.flat, traces.items(), strict=False):
        sweep = result["keda_sweep"]
        xs = [k["replica_seconds"] for k in sweep]
        ys = [k["p95_wait_s"] for k in sweep]
        ax.scatter(xs, ys, s=14, color="tab:orange", label="KEDA at a target per replica")
        # Label a few targets, skipping any too close to one already labelled.
        x_span = (max(xs) - min(xs)) or 1.0
        y_span = (max(ys) - min(ys)) or 1.0
        labelled: list[tuple[float, float]] = []
        for k in sweep:
            x, y = k["replica_seconds"] / x_span, k["p95_wait_s"] / y_span
            crowded = any(abs(x - lx) < 0.05 and abs(y - ly) < 0.06 for lx, ly in labelled)
            if k["target_per_replica"] in FRONTIER_LABELS and not crowded:
                labelled.append((x, y))
                ax.annotate(
                    f"{k['target_per_replica']:g}",
                    (k["replica_seconds"], k["p95_wait_s"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                )
        for key, marker in (("keda_same_cost", "s"), ("keda_same_wait", "D")):
            k = result[key]
            if k is not None:
                ax.scatter(
                    [k["replica_seconds"]],
                    [k["p95_wait_s"]],
                    s=80,
                    facecolors="none",
                    edgecolors="black",
                    marker=marker,
                    label=key.replace("keda_", "KEDA ").replace("_", " "),
                )
        d = result["docpipe"]
        ax.scatter(
            [d["replica_seconds"]],
            [d["p95_wait_s"]],
            s=160,
            marker="*",
            color="tab:blue",
            zorder=3,
            label="docpipe (300 s stabilization)",
        )
        for i, (seconds, other) in enumerate(result["docpipe_stabilization"].items()):
            ax.scatter(
                [other["replica_seconds"]],
                [other["p95_wait_s"]],
                s=60,
                marker="*",
                facecolors="none",
                edgecolors="tab:blue",
                label="docpipe, shorter stabilization" if i == 0 else None,
            )
            ax.annotate(
                f"{seconds} s",
                (other["replica_seconds"], other["p95_wait_s"]),
                textcoords="offset points",
                xytext=(4, -9),
                fontsize=7,
                color="tab:blue",
            )
        ax.axvline(
            result["work"]["replica_seconds"], color="grey", linestyle="--", label="work floor"
        )
        ax.set_title(name)
        ax.set_xlabel("replica-seconds")
        ax.set_ylabel("p95 queue wait (s)")
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(traces) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(label: str, run: dict[str, float] | None, docpipe: dict[str, float] | None) -> str:
    """One run's figures; the last column is docpipe's replica-seconds / this run's."""
    if run is None:
        return f"  {label:<26} (no target waits as little as docpipe)"
    target = run.get("target_per_replica")
    ratio = "" if docpipe is None else f"{docpipe['replica_seconds'] / run['replica_seconds']:.2f}"
    return (
        f"  {label:<26} {'-' if target is None else f'{target:g}':>6} "
        f"{run['p95_wait_s']:>7.0f}s {run['replica_seconds']:>10,.0f} "
        f"{run['pods_started']:>5.0f} {ratio:>9}"
    ).rstrip()


def print_traces(result: dict[str, Any]) -> None:
    """The simulation's table: per trace docpipe, the matched KEDA runs, the floor, the verdict."""
    yes = {True: "yes", False: "no"}
    print(
        f"target wait {result['target_wait_s']:g} s, seed {result['seed']}; KEDA swept over "
        f"{len(result['keda_targets'])} targets per replica "
        f"({min(result['keda_targets']):g}-{max(result['keda_targets']):g}); "
        f"simulation {result['sim_seconds']:.1f} s"
    )
    print(f"  {'':<26} {'target':>6} {'p95':>8} {'replica·s':>10} {'pods':>5} {'dp r·s/':>9}")
    for name, r in result["traces"].items():
        d = r["docpipe"]
        print(name)
        print(_row("docpipe", d, None))
        print(_row("KEDA same cost", r["keda_same_cost"], d))
        print(_row("KEDA same wait", r["keda_same_wait"], d))
        print(_row("KEDA usual", r["keda_usual"], d))
        print(_row("KEDA aimed at the wait", r["keda_for_wait"], d))
        for seconds, other in r["docpipe_stabilization"].items():
            print(_row(f"(docpipe, {seconds} s stab.)", other, None))
        print(f"  {'work floor':<26} {'':>6} {'':>8} {r['work']['replica_seconds']:>10,.0f}")
        v = r["verdict"]
        print(
            f"  same wait at ≤ 80 %: {yes[v['same_wait_cheaper']]}; same cost, lower wait: "
            f"{yes[v['same_cost_faster']]}; criterion met: {yes[v['met']].upper()}"
        )
    print(f"criterion met on every trace: {yes[result['criterion_met']]}")


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """The simulation part of the result (and the plots)."""
    load = autoscaling_simulation.Workload(seed=None if args.no_noise else args.seed)
    start = time.monotonic()
    traces = autoscaling_simulation.run_traces(load)
    elapsed = time.monotonic() - start
    if not args.no_plot:
        plot_traces(load, traces, PLOT_PATH)
        plot_frontier(traces, FRONTIER_PATH)
    return {
        "traces": traces,
        "criterion_met": all(r["verdict"]["met"] for r in traces.values()),
        "target_wait_s": load.target_wait_seconds,
        "seed": load.seed,
        "keda_targets": autoscaling_simulation.keda_targets(load),
        "keda_usual_target_per_replica": float(load.concurrency),
        "keda_for_wait_target_per_replica": autoscaling_simulation.keda_target_for_wait(load),
        "sim_seconds": elapsed,
    }


def _footprint_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "operator footprint (steady state; reaction: backlog spike to patched replicas)",
        f"  {'pipelines':>9} {'source':>10} {'pods':>5} {'req/min':>8} {'req/pipeline/min':>17} "
        f"{'CPU s/min':>9} {'RSS MiB':>8} {'reaction s':>10} {'Prom CPU s/min':>14}",
    ]
    for f in rows:
        lines.append(
            f"  {f['pipelines']:>9} {f['metrics_source']:>10} {f['pods']:>5} "
            f"{f['api_requests_per_minute']:>8.1f} "
            f"{f['api_requests_per_pipeline_minute']:>17.3f} {f['cpu_seconds_per_minute']:>9.1f} "
            f"{f['rss_mib']:>8.0f} "
            + (f"{f['reaction_s']:>10.2f}" if f["reaction_s"] is not None else f"{'missed':>10}")
            + f" {f['prometheus_cpu_seconds_per_minute']:>14.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--sim-only", action="store_true", help="the simulation and plots only, no emulator"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the traces' jobs")
    parser.add_argument(
        "--no-noise", action="store_true", help="deterministic arrivals and job times"
    )
    parser.add_argument("--spikes", type=int, default=5, help="backlog spikes to time")
    parser.add_argument(
        "--pipelines",
        default="50,200,1000",
        help="pipeline counts of the footprint runs, comma-separated",
    )
    parser.add_argument("--footprint-seconds", type=float, default=60.0)
    parser.add_argument(
        "--metrics-source",
        default="pods",
        help="footprint runs' metrics.source, comma-separated: pods, prometheus (needs the"
        " prometheus binary) or both",
    )
    parser.add_argument(
        "--footprint-only", action="store_true", help="the footprint runs only (no reaction, sim)"
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {}
    sizes = [int(n) for n in str(args.pipelines).split(",") if n.strip()]
    sources = [s.strip() for s in str(args.metrics_source).split(",") if s.strip()]
    if set(sources) - {"pods", "prometheus"}:
        parser.error("--metrics-source takes pods and/or prometheus")
    if args.footprint_only:
        result["footprint"] = []
        for n in sizes:
            for source in sources:
                run = measure_footprint(n, args.footprint_seconds, source)
                result["footprint"].append(asyncio.run(run))
                print(json.dumps(result["footprint"][-1]), file=sys.stderr, flush=True)
        print(json.dumps(result) if args.json else _footprint_table(result["footprint"]))
        return 0
    if not args.sim_only:
        reactions = asyncio.run(measure_reaction(args.spikes))
        result.update(
            {
                "reaction_s": max(reactions),
                "reaction_median_s": statistics.median(reactions),
                "reaction_all_s": reactions,
                "reaction_bound_s": 5.0 + 1.0,
                "keda_reaction_bound_s": autoscaling_simulation.KEDA_POLLING_SECONDS
                + autoscaling_simulation.HPA_SYNC_SECONDS,
            }
        )
    result.update(simulate(args))
    if not args.sim_only:
        result["footprint"] = [
            asyncio.run(measure_footprint(n, args.footprint_seconds, source))
            for n in sizes
            for source in sources
        ]
    if args.json:
        print(json.dumps(result))
        return 0
    if not args.sim_only:
        print(
            f"reaction: max {result['reaction_s']:.2f} s, "
            f"median {result['reaction_median_s']:.2f} s "
            f"(bound {result['reaction_bound_s']:.0f} s; KEDA defaults up to "
            f"{result['keda_reaction_bound_s']:.0f} s)"
        )
    print_traces(result)
    if not args.sim_only:
        print(_footprint_table(result["footprint"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
