"""The autoscaling simulation of bench/autoscaling.py: docpipe's decision vs KEDA + HPA on traces.

A discrete-time queue (1 s steps): jobs arrive by a trace, wait in FIFO order for a free slot,
and hold it for `job_seconds`. A new pod serves after `startup_seconds`. Both autoscalers see the
same queue and run the same fleet; only the decision differs:

- docpipe: `docpipe_operator.scaling.decide_replicas` every `intervalSeconds`, fed the snapshot its
  operator would scrape (per-pod jobs in flight and succeeded counters, ready jobs, oldest age);
- KEDA + HPA: KEDA polls the queue length (ready + running jobs, as a Postgres scaler query
  would count them) every 30 s; the HPA syncs every 15 s with desired = ceil(metric / target per
  replica), a 10 % tolerance, its default scale-up policy (max(4 pods, 100 %) per 15 s), a 300 s
  scale-down stabilization, and KEDA's activation to and from zero (cooldown 300 s).

KEDA runs twice: with the usual target of `concurrency` jobs per replica (every job gets a slot
at once: a target of no wait, stricter than docpipe's), and with the target that aims at the same
queue wait as docpipe (`keda_target_for_wait`). The criterion's "at most 80 % of KEDA's
replica-seconds at the same p95 wait" has a floor no autoscaler can go below: the work itself,
arrivals × job time / concurrency replica-seconds (`work_replica_seconds`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from docpipe_operator.model import ScaleToZeroSpec, ScalingSpec
from docpipe_operator.scaling import (
    MetricsSnapshot,
    PodMetrics,
    QueueMetrics,
    ScalingHistory,
    decide_replicas,
)

Trace = Callable[[float], float]  # arrival rate (jobs/s) at time t


@dataclass(frozen=True)
class Workload:
    """The fleet's physics, shared by both autoscalers."""

    concurrency: int = 8
    job_seconds: float = 4.0
    startup_seconds: float = 20.0
    target_wait_seconds: float = 30.0
    min_replicas: int = 0
    max_replicas: int = 60
    idle_seconds: float = 300.0


def _steady(t: float) -> float:
    return 10.0


def _burst(t: float) -> float:
    return 30.0 if (t % 1200) < 120 else 2.0


def _wave(t: float) -> float:
    return 10.0 + 9.0 * math.sin(2 * math.pi * t / 7200.0 - math.pi / 2)


def _spike_then_idle(t: float) -> float:
    if t < 600:
        return 0.5
    if t < 780:
        return 40.0
    return 0.0


TRACES: dict[str, tuple[Trace, float]] = {
    "steady": (_steady, 3600.0),
    "burst": (_burst, 3600.0),
    "daily_wave": (_wave, 7200.0),
    "spike_then_idle": (_spike_then_idle, 3600.0),
}


@dataclass
class Fleet:
    """The simulated queue and pods."""

    load: Workload
    pods: list[dict[str, float]] = field(default_factory=list)  # id, ready_at, busy, done
    queue: deque[float] = field(default_factory=deque)  # arrival times
    running: list[tuple[float, int]] = field(default_factory=list)  # (finish time, pod index)
    waits: list[float] = field(default_factory=list)
    carry: float = 0.0
    replica_seconds: float = 0.0
    started: int = 0  # pods ever started: each pod's id, as stable as a real pod's name

    def resize(self, replicas: int, now: float) -> None:
        while len(self.pods) < replicas:
            self.started += 1
            ready_at = now + self.load.startup_seconds
            self.pods.append({"id": self.started, "ready_at": ready_at, "busy": 0, "done": 0})
        if len(self.pods) > replicas:
            # Idle pods go first (pod-deletion-cost); a removed busy pod's jobs are requeued.
            order = sorted(range(len(self.pods)), key=lambda i: self.pods[i]["busy"])
            gone = set(order[: len(self.pods) - replicas])
            keep = [i for i in range(len(self.pods)) if i not in gone]
            remap = {old: new for new, old in enumerate(keep)}
            still = []
            for finish, pod in self.running:
                if pod in gone:
                    self.queue.appendleft(now)
                else:
                    still.append((finish, remap[pod]))
            self.running = still
            self.pods = [self.pods[i] for i in keep]

    def step(self, now: float, rate: float) -> None:
        self.carry += rate
        arrivals = int(self.carry)
        self.carry -= arrivals
        self.queue.extend([now] * arrivals)
        finished = [r for r in self.running if r[0] <= now]
        self.running = [r for r in self.running if r[0] > now]
        for _, index in finished:
            self.pods[index]["busy"] -= 1
            self.pods[index]["done"] += 1
        for index, state in enumerate(self.pods):
            if state["ready_at"] > now:
                continue
            while state["busy"] < self.load.concurrency and self.queue:
                self.waits.append(now - self.queue.popleft())
                state["busy"] += 1
                self.running.append((now + self.load.job_seconds, index))
        self.replica_seconds += len(self.pods)

    def snapshot(self, now: float) -> MetricsSnapshot:
        pods = tuple(
            PodMetrics(f"p{p['id']:.0f}", p["ready_at"] <= now, float(p["busy"]), float(p["done"]))
            for p in self.pods
            if p["ready_at"] <= now
        )
        oldest = now - self.queue[0] if self.queue else 0.0
        return MetricsSnapshot(pods=pods, queue=QueueMetrics(float(len(self.queue)), oldest))


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def simulate_docpipe(trace: Trace, duration: float, load: Workload) -> dict[str, float]:
    """Run docpipe's decision on a trace; p95 queue wait and replica-seconds."""
    policy = ScalingSpec(
        min_replicas=load.min_replicas,
        max_replicas=load.max_replicas,
        target_queue_wait_seconds=int(load.target_wait_seconds),
        interval_seconds=5,
        scale_down_stabilization_seconds=300,
        max_scale_up_step=load.max_replicas,
        scale_to_zero=ScaleToZeroSpec(
            enabled=load.min_replicas == 0, idle_seconds=int(load.idle_seconds)
        ),
    )
    fleet = Fleet(load)
    history = ScalingHistory()
    replicas = max(load.min_replicas, 1)
    fleet.resize(replicas, -load.startup_seconds)
    t = 0.0
    while t < duration:
        if t % policy.interval_seconds == 0:
            decision, history = decide_replicas(
                fleet.snapshot(t),
                policy,
                current=replicas,
                concurrency=load.concurrency,
                history=history,
                now=t,
            )
            replicas = decision.desired
            fleet.resize(replicas, t)
        fleet.step(t, trace(t))
        t += 1.0
    return {"p95_wait_s": _p95(fleet.waits), "replica_seconds": fleet.replica_seconds}


KEDA_POLLING_SECONDS = 30.0
HPA_SYNC_SECONDS = 15.0
HPA_TOLERANCE = 0.1
HPA_STABILIZATION_SECONDS = 300.0
KEDA_COOLDOWN_SECONDS = 300.0


def keda_target_for_wait(load: Workload) -> float:
    """KEDA's queue length per replica that aims at docpipe's target wait.

    A replica runs `concurrency` jobs and, for the newest ready job to wait `target_wait_seconds`,
    holds concurrency × target wait / job time ready jobs on top: at that queue length per
    replica the fleet runs full with the target wait (KEDA itself cannot know the job time;
    whoever configures it must).
    """
    return load.concurrency * (1.0 + load.target_wait_seconds / load.job_seconds)


def simulate_keda(
    trace: Trace, duration: float, load: Workload, target: float | None = None
) -> dict[str, float]:
    """Run the KEDA + HPA algorithm on a trace; p95 queue wait and replica-seconds.

    `target` is the queue length (ready + running) per replica; by default `concurrency`, which
    gives every job a slot at once: a target of no wait at all.
    """
    fleet = Fleet(load)
    replicas = max(load.min_replicas, 1)
    fleet.resize(replicas, -load.startup_seconds)
    target = float(load.concurrency) if target is None else target
    metric = 0.0
    last_active = 0.0
    recommendations: deque[tuple[float, int]] = deque()
    t = 0.0
    while t < duration:
        if t % KEDA_POLLING_SECONDS == 0:
            metric = float(len(fleet.queue) + len(fleet.running))
            if metric > 0:
                last_active = t
            if replicas == 0 and metric > 0:
                replicas = 1  # KEDA's activation: 0 → 1 at once
                fleet.resize(replicas, t)
            elif (
                replicas > 0
                and load.min_replicas == 0
                and metric == 0
                and t - last_active >= KEDA_COOLDOWN_SECONDS
            ):
                replicas = 0
                fleet.resize(replicas, t)
        if t % HPA_SYNC_SECONDS == 0 and replicas > 0:
            ratio = metric / (target * replicas)
            wanted = replicas if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(metric / target)
            wanted = min(max(wanted, 1), load.max_replicas)
            recommendations.append((t, wanted))
            while recommendations and recommendations[0][0] <= t - HPA_STABILIZATION_SECONDS:
                recommendations.popleft()
            if wanted > replicas:
                replicas = min(wanted, max(replicas + 4, replicas * 2))
            elif wanted < replicas:
                replicas = min(replicas, max(r for _, r in recommendations))
            fleet.resize(replicas, t)
        fleet.step(t, trace(t))
        t += 1.0
    return {"p95_wait_s": _p95(fleet.waits), "replica_seconds": fleet.replica_seconds}


def work_replica_seconds(trace: Trace, duration: float, load: Workload) -> float:
    """Replica-seconds the trace's jobs occupy with every slot busy: a floor for any autoscaler."""
    arrivals = sum(trace(float(t)) for t in range(int(duration)))
    return arrivals * load.job_seconds / load.concurrency


def run_traces(load: Workload | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Both autoscalers on every trace; KEDA as usually configured and aimed at the same wait."""
    load = load or Workload()
    return {
        name: {
            "docpipe": simulate_docpipe(trace, duration, load),
            "keda": simulate_keda(trace, duration, load),
            "keda_same_wait": simulate_keda(trace, duration, load, keda_target_for_wait(load)),
            "work": {"replica_seconds": work_replica_seconds(trace, duration, load)},
        }
        for name, (trace, duration) in TRACES.items()
    }


def verdict(result: dict[str, dict[str, float]], keda: str = "keda") -> bool:
    """docpipe meets KEDA's p95 with ≤80 % of its replica-seconds, or beats it at ≤ its cost."""
    d, k = result["docpipe"], result[keda]
    same_wait_cheaper = (
        d["p95_wait_s"] <= k["p95_wait_s"] and d["replica_seconds"] <= 0.8 * k["replica_seconds"]
    )
    faster_same_cost = (
        d["p95_wait_s"] < k["p95_wait_s"] and d["replica_seconds"] <= k["replica_seconds"]
    )
    return same_wait_cheaper or faster_same_cost


def trace_series(trace: Trace, duration: float, load: Workload) -> dict[str, list[float]]:
    """Per-second arrival rate and replicas of both autoscalers, for the plots."""
    # Re-run with recording; kept apart from the timed functions above for clarity.
    series: dict[str, list[float]] = {"t": [], "rate": [], "docpipe": [], "keda": []}
    for name, sim in (("docpipe", simulate_docpipe), ("keda", simulate_keda)):
        recorded: list[float] = []
        original = Fleet.step

        def recording(
            self: Fleet,
            now: float,
            rate: float,
            _r: list[float] = recorded,
            _step: Callable[[Fleet, float, float], None] = original,
        ) -> None:
            _step(self, now, rate)
            _r.append(float(len(self.pods)))

        Fleet.step = recording  # type: ignore[method-assign]
        try:
            sim(trace, duration, load)
        finally:
            Fleet.step = original  # type: ignore[method-assign]
        series[name] = recorded
    series["t"] = [float(i) for i in range(len(series["docpipe"]))]
    series["rate"] = [trace(t) for t in series["t"]]
    return series
