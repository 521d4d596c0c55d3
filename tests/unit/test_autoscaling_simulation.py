"""The autoscaling simulation (tests/support/autoscaling_simulation.py): the seeded jobs, the
matched KEDA runs and the verdict."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from tests.support.autoscaling_simulation import (
    TRACES,
    FleetModel,
    Jobs,
    Result,
    Workload,
    draw_jobs,
    keda_same_cost,
    keda_same_wait,
    keda_targets,
    poisson,
    run_trace,
    simulate_docpipe,
    simulate_keda,
    verdict,
    work_replica_seconds,
)


def _steady(t: float) -> float:
    return 6.5


def _step(t: float) -> float:
    return 0.0 if t < 300 else 20.0


def _wave(t: float) -> float:
    return 3.0 + 2.0 * ((t // 60) % 3)  # 3, 5, 7 jobs/s, a minute each


def run(target: float | None, p95: float, replica_seconds: float) -> Result:
    entry: Result = {"p95_wait_s": p95, "replica_seconds": replica_seconds}
    if target is not None:
        entry["target_per_replica"] = target
    return entry


def test_poisson_has_the_rate_as_mean_and_variance() -> None:
    rng = random.Random(3)
    for rate in (0.5, 3.0, 75.0):  # 75: drawn in parts of at most 30
        draws = [poisson(rng, rate) for _ in range(20_000)]
        assert statistics.fmean(draws) == pytest.approx(rate, rel=0.03)
        assert statistics.pvariance(draws) == pytest.approx(rate, rel=0.06)
    assert poisson(rng, 0.0) == 0


def test_seeded_jobs_follow_the_rate_and_the_job_time() -> None:
    load = Workload(seed=5)
    jobs = draw_jobs(_step, 900.0, load)
    assert jobs is not None
    assert len(jobs.arrivals) == 900
    assert sum(jobs.arrivals[:300]) == 0  # no arrivals at rate 0
    assert sum(jobs.arrivals) == pytest.approx(600 * 20.0, rel=0.03)  # ±3 %: over 3 σ
    assert len(jobs.seconds) == sum(jobs.arrivals)
    assert statistics.fmean(jobs.seconds) == pytest.approx(load.job_seconds, rel=0.02)
    cv = statistics.pstdev(jobs.seconds) / statistics.fmean(jobs.seconds)
    assert 0.45 < cv < 0.55
    assert min(jobs.seconds) >= 1.0
    assert all(s == round(s) for s in jobs.seconds)
    assert draw_jobs(_step, 900.0, Workload(seed=5)) == jobs
    assert draw_jobs(_step, 900.0, Workload(seed=6)) != jobs


def test_both_autoscalers_face_the_same_jobs() -> None:
    load = Workload(seed=11)
    jobs = draw_jobs(_wave, 900.0, load)
    assert jobs is not None
    docpipe = simulate_docpipe(_wave, 900.0, load)
    keda_runs = [simulate_keda(_wave, 900.0, load, target) for target in (8.0, 30.0, 120.0)]
    for result in (docpipe, *keda_runs):
        assert result["jobs"] == sum(jobs.arrivals)
        assert result["job_seconds"] == sum(jobs.seconds)
    assert work_replica_seconds(_wave, 900.0, load) == sum(jobs.seconds) / load.concurrency
    # The jobs are noisy: job times vary, so the floor is not arrivals × job_seconds.
    assert len(set(jobs.seconds)) > 3


def test_a_job_keeps_its_drawn_time_in_the_queue_and_when_requeued() -> None:
    load = Workload(concurrency=1, startup_seconds=0.0)
    fleet = FleetModel(load, Jobs(arrivals=(2, 0, 1, 0, 0, 0), seconds=(3.0, 1.0, 5.0)))
    fleet.resize(1, 0.0)
    for t in range(5):
        fleet.step(float(t), 0.0)
    # A runs 0-3; B waits 3 s and runs 3-4; C arrives at 2, waits 2 s and runs for its 5 s.
    assert fleet.waits == [0.0, 3.0, 2.0]
    assert fleet.running == [(9.0, 0, 5.0)]
    fleet.resize(0, 5.0)  # C's pod goes: C is queued again, with its own time
    assert list(fleet.queue) == [(5.0, 5.0)]
    fleet.resize(1, 5.0)
    fleet.step(5.0, 0.0)
    assert fleet.running == [(10.0, 0, 5.0)]
    assert fleet.result()["jobs"] == 3
    assert fleet.result()["job_seconds"] == 9.0


def test_without_a_seed_arrivals_and_job_times_are_exact() -> None:
    load = Workload(seed=None)
    assert draw_jobs(_steady, 600.0, load) is None
    docpipe = simulate_docpipe(_steady, 600.0, load)
    keda = simulate_keda(_steady, 600.0, load)
    for result in (docpipe, keda):
        assert result["jobs"] == 6.5 * 600  # the fractional carry loses nothing
        assert result["job_seconds"] == 6.5 * 600 * load.job_seconds
    assert simulate_docpipe(_steady, 600.0, load) == docpipe
    assert work_replica_seconds(_steady, 600.0, load) == 6.5 * 600 * load.job_seconds / 8


@pytest.mark.parametrize(
    ("trace", "target", "p95", "replica_seconds"),
    [
        # The figures of the simulation before noise was added (docs/benchmarks.md's old table).
        ("steady", None, 0.0, 28_680.0),
        ("burst", None, 59.0, 65_880.0),
        ("spike_then_idle", 68.0, 65.0, 15_870.0),
    ],
)
def test_without_a_seed_keda_runs_as_before(
    trace: str, target: float | None, p95: float, replica_seconds: float
) -> None:
    function, duration = TRACES[trace]
    result = simulate_keda(function, duration, Workload(seed=None), target)
    assert (result["p95_wait_s"], result["replica_seconds"]) == (p95, replica_seconds)


SWEEP = [
    run(8, 0, 500),
    run(10, 2, 420),
    run(12, 5, 400),
    run(16, 5, 380),
    run(24, 20, 300),
    run(32, 40, 310),
]


@pytest.mark.parametrize(
    ("docpipe", "same_wait", "same_cost"),
    [
        # Cheapest at ≤ docpipe's wait; least wait at ≤ docpipe's cost, ties to fewer r·s.
        (run(None, 5, 390), 16, 16),
        (run(None, 5, 400), 16, 16),
        (run(None, 3, 450), 10, 10),
        (run(None, 0, 350), 8, 24),
        # KEDA cannot spend that little: its cheapest run, which spends more.
        (run(None, 30, 250), 24, 24),
        (run(None, 1, 100), 8, 24),
    ],
)
def test_matched_keda_runs(docpipe: Result, same_wait: float | None, same_cost: float) -> None:
    wait = keda_same_wait(SWEEP, docpipe)
    assert (None if wait is None else wait["target_per_replica"]) == same_wait
    assert keda_same_cost(SWEEP, docpipe)["target_per_replica"] == same_cost


def test_matched_same_wait_is_none_when_no_target_waits_as_little() -> None:
    docpipe = run(None, 1, 450)
    assert keda_same_wait(SWEEP[1:], docpipe) is None
    assert keda_same_cost(SWEEP[1:], docpipe)["target_per_replica"] == 10


def test_matched_same_cost_breaks_wait_ties_by_cost() -> None:
    sweep = [run(8, 10, 300), run(9, 10, 280), run(10, 12, 200)]
    assert keda_same_cost(sweep, run(None, 5, 350))["target_per_replica"] == 9


def verdict_of(
    docpipe: Result, same_wait: Result | None, same_cost: Result
) -> tuple[bool, bool, bool]:
    result: dict[str, Any] = {
        "docpipe": docpipe,
        "keda_same_wait": same_wait,
        "keda_same_cost": same_cost,
    }
    v = verdict(result)
    return v["same_wait_cheaper"], v["same_cost_faster"], v["met"]


def test_verdict_clauses() -> None:
    docpipe = run(None, 10, 800)
    # Same wait at 1000 r·s: docpipe spends exactly 80 %; same cost waits as long.
    assert verdict_of(docpipe, run(8, 10, 1000), run(20, 10, 790)) == (True, False, True)
    # Same wait at 999 r·s: docpipe spends over 80 %; same cost waits longer.
    assert verdict_of(docpipe, run(8, 8, 999), run(20, 11, 790)) == (False, True, True)
    # Neither: KEDA at docpipe's cost waits less, and its same-wait run is cheap enough.
    assert verdict_of(docpipe, run(8, 9, 850), run(9, 9, 800)) == (False, False, False)
    # No target waits as little: clause A cannot hold; B decides.
    assert verdict_of(docpipe, None, run(40, 30, 700)) == (False, True, True)
    assert verdict_of(docpipe, None, run(40, 10, 700)) == (False, False, False)
    # KEDA cannot spend that little and still waits longer: docpipe wins on both axes.
    assert verdict_of(docpipe, None, run(40, 12, 900)) == (False, True, True)


def test_run_trace_reports_the_matched_runs_and_the_sweep() -> None:
    load = Workload(seed=2)
    result = run_trace(_wave, 600.0, load, stabilizations=(60,))
    sweep = result["keda_sweep"]
    assert [k["target_per_replica"] for k in sweep] == keda_targets(load)
    assert set(sweep[0]) == {"target_per_replica", "p95_wait_s", "replica_seconds"}
    assert result["keda"] is result["keda_same_cost"]
    assert result["keda_usual"]["target_per_replica"] == load.concurrency
    assert result["keda_for_wait"]["target_per_replica"] == 8 * (1 + 30 / 4)
    assert set(result["docpipe_stabilization"]) == {"60"}
    for key in ("keda_same_cost", "keda_usual", "keda_for_wait"):
        assert result[key]["jobs"] == result["docpipe"]["jobs"]
    assert result["verdict"] == verdict(result)
    assert result["work"]["replica_seconds"] <= result["docpipe"]["replica_seconds"]


def test_keda_targets_grid() -> None:
    targets = keda_targets(Workload(concurrency=8))
    assert targets[:3] == [8.0, 9.0, 10.0]
    assert 32.0 in targets
    assert targets[targets.index(32.0) + 1] == 36.0
    assert targets[-1] == 200.0
