"""The autoscaling decision: table tests of its rules and properties of its behaviour."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docpipe_operator.model import ScalingSpec
from docpipe_operator.scaling import (
    CounterSample,
    Decision,
    MetricsSnapshot,
    PodMetrics,
    QueueMetrics,
    QuotaKey,
    Recommendation,
    ScalingHistory,
    decide_replicas,
    pod_deletion_costs,
    quota_ceiling,
)

NOW = 10_000.0
CONCURRENCY = 4


def policy(**fields: Any) -> ScalingSpec:
    return ScalingSpec.model_validate(fields)


def zero_policy(**fields: Any) -> ScalingSpec:
    return policy(min_replicas=0, scale_to_zero={"enabled": True, "idle_seconds": 600}, **fields)


def snapshot(
    in_flight: Sequence[float],
    ready_jobs: float | None = 0,
    oldest: float = 0.0,
    succeeded: Sequence[float] | None = None,
) -> MetricsSnapshot:
    done = succeeded if succeeded is not None else [0.0] * len(in_flight)
    pods = tuple(
        PodMetrics(f"w-{i}", ready=True, jobs_in_flight=f, jobs_succeeded=s)
        for i, (f, s) in enumerate(zip(in_flight, done, strict=True))
    )
    queue = None if ready_jobs is None else QueueMetrics(ready_jobs, oldest)
    return MetricsSnapshot(pods=pods, queue=queue)


def decide(
    snap: MetricsSnapshot | None,
    current: int,
    scaling: ScalingSpec | None = None,
    history: ScalingHistory | None = None,
    now: float = NOW,
    pinned: int | None = None,
) -> tuple[Decision, ScalingHistory]:
    return decide_replicas(
        snap,
        scaling or policy(),
        current=current,
        concurrency=CONCURRENCY,
        history=history or ScalingHistory(),
        now=now,
        pinned=pinned,
    )


# Jobs take 3 s: with a 30 s target, 10 ready jobs need one slot.
MEASURED = ScalingHistory(seconds_per_job=3.0)


def test_load_that_fills_the_current_workers_keeps_them() -> None:
    decision, _ = decide(snapshot([4, 4]), current=2)

    assert decision.desired == 2
    assert not decision.changed
    assert decision.reason.startswith("steady at 2")


def test_backlog_adds_the_workers_that_drain_it_within_the_target_wait() -> None:
    # 8 slots busy + 40 ready × 3 s / 30 s = 12 slots = 3 workers of 4.
    decision, _ = decide(snapshot([4, 4], ready_jobs=40, oldest=12), current=2, history=MEASURED)

    assert decision.desired == 3
    assert decision.reason.startswith("scaling up 2 → 3")
    assert "40 ready" in decision.reason
    assert "oldest waiting 12s" in decision.reason


def test_unmeasured_job_time_falls_back_to_a_slot_per_ready_job() -> None:
    # No job measured yet: 8 busy + 8 ready = 16 slots = 4 workers.
    decision, _ = decide(snapshot([4, 4], ready_jobs=8), current=2)

    assert decision.desired == 4
    assert "assuming 30s per job" in decision.reason


def test_scale_up_is_immediate_but_bounded_by_max_scale_up_step() -> None:
    decision, _ = decide(snapshot([4, 4], ready_jobs=400), current=2, history=MEASURED)

    assert decision.recommendation == 10
    assert decision.desired == 6
    assert "maxScaleUpStep" in decision.reason


def test_scale_up_stops_at_max_replicas() -> None:
    scaling = policy(max_replicas=5, max_scale_up_step=100)

    decision, _ = decide(snapshot([4, 4], ready_jobs=4000), current=2, scaling=scaling)

    assert decision.desired == 5


def test_fewer_workers_than_min_replicas_are_raised_to_it_regardless_of_step() -> None:
    scaling = policy(min_replicas=3, max_scale_up_step=1)

    decision, _ = decide(snapshot([]), current=0, scaling=scaling)

    assert decision.desired == 3


def test_more_workers_than_max_replicas_are_lowered_to_it_even_without_metrics() -> None:
    decision, _ = decide(None, current=15, scaling=policy(max_replicas=10))

    assert decision.desired == 10


def test_load_within_tolerance_of_the_current_size_changes_nothing() -> None:
    # 37 busy slots / 4 = 9.25 workers: within 10 % of 10.
    decision, _ = decide(snapshot([4] * 9 + [1]), current=10)

    assert decision.desired == 10


def test_scale_down_waits_for_the_highest_recommendation_in_the_window() -> None:
    history = ScalingHistory(recommendations=(Recommendation(NOW - 100, 5),))

    decision, _ = decide(snapshot([1, 1, 0, 0, 0]), current=5, history=history)

    assert decision.recommendation == 1
    assert decision.desired == 5
    assert decision.reason.startswith("holding 5")


def test_scale_down_goes_only_as_far_as_the_highest_recent_recommendation() -> None:
    history = ScalingHistory(recommendations=(Recommendation(NOW - 100, 3),))

    decision, _ = decide(snapshot([1, 1, 0, 0, 0]), current=5, history=history)

    assert decision.desired == 3
    assert decision.reason.startswith("scaling down 5 → 3")


def test_recommendations_older_than_the_window_no_longer_hold_replicas() -> None:
    history = ScalingHistory(recommendations=(Recommendation(NOW - 301, 5),))

    decision, new_history = decide(snapshot([1, 1, 0, 0, 0]), current=5, history=history)

    assert decision.desired == 1
    assert new_history.recommendations == (Recommendation(NOW, 1),)


def test_no_metrics_at_all_hold_the_current_size() -> None:
    decision, _ = decide(None, current=5)

    assert decision.desired == 5
    assert not decision.metrics_complete
    assert decision.reason == "holding 5 workers until metrics are complete (no worker metrics)"


def test_an_unscraped_ready_worker_blocks_scale_down() -> None:
    snap = MetricsSnapshot(
        pods=(
            PodMetrics("w-0", ready=True, jobs_in_flight=0, jobs_succeeded=0),
            PodMetrics("w-1", ready=True),
        ),
        queue=QueueMetrics(0),
    )

    decision, _ = decide(snap, current=2)

    assert decision.desired == 2
    assert "w-1" in decision.reason


def test_missing_queue_metrics_block_scale_down() -> None:
    decision, _ = decide(snapshot([0, 0, 0], ready_jobs=None), current=3)

    assert decision.desired == 3
    assert "no queue metrics" in decision.reason


def test_partial_metrics_still_allow_scale_up() -> None:
    snap = MetricsSnapshot(
        pods=(
            PodMetrics("w-0", ready=True, jobs_in_flight=4, jobs_succeeded=0),
            PodMetrics("w-1", ready=True),
        ),
        queue=QueueMetrics(80),
    )

    decision, _ = decide(snap, current=2, history=MEASURED)

    assert decision.desired > 2


def test_an_unscraped_starting_worker_does_not_make_metrics_partial() -> None:
    snap = MetricsSnapshot(
        pods=(
            PodMetrics("w-0", ready=True, jobs_in_flight=1, jobs_succeeded=0),
            PodMetrics("w-1", ready=True, jobs_in_flight=0, jobs_succeeded=0),
            PodMetrics("w-2", ready=False),
        ),
        queue=QueueMetrics(0),
    )

    decision, _ = decide(snap, current=3)

    assert decision.metrics_complete
    assert decision.desired == 1


def test_idle_workers_scale_to_zero_after_the_idle_period() -> None:
    history = ScalingHistory(last_busy_at=NOW - 601, recommendations=(Recommendation(NOW - 10, 1),))

    decision, _ = decide(snapshot([0]), current=1, scaling=zero_policy(), history=history)

    assert decision.desired == 0
    assert decision.reason.startswith("scaling 1 → 0: no work for 601s")


def test_idle_workers_keep_one_before_the_idle_period_ends() -> None:
    history = ScalingHistory(last_busy_at=NOW - 599)

    decision, _ = decide(snapshot([0, 0]), current=2, scaling=zero_policy(), history=history)

    assert decision.desired == 1


def test_idle_workers_never_scale_to_zero_when_min_replicas_is_positive() -> None:
    history = ScalingHistory(last_busy_at=NOW - 100_000)

    decision, _ = decide(snapshot([0]), current=1, history=history)

    assert decision.desired == 1


def test_first_idle_observation_starts_the_idle_clock() -> None:
    decision, history = decide(snapshot([0]), current=1, scaling=zero_policy())

    assert decision.desired == 1
    assert history.last_busy_at == NOW


def test_busy_workers_restart_the_idle_clock() -> None:
    history = ScalingHistory(last_busy_at=NOW - 5000)

    _, new_history = decide(snapshot([1]), current=1, scaling=zero_policy(), history=history)

    assert new_history.last_busy_at == NOW


def test_partial_metrics_restart_the_idle_clock() -> None:
    history = ScalingHistory(last_busy_at=NOW - 5000)

    decision, new_history = decide(
        snapshot([0], ready_jobs=None), current=1, scaling=zero_policy(), history=history
    )

    assert decision.desired == 1
    assert new_history.last_busy_at == NOW


def test_ready_jobs_bring_a_pipeline_back_from_zero() -> None:
    decision, _ = decide(snapshot([], ready_jobs=3), current=0, scaling=zero_policy())

    assert decision.desired == 1
    assert decision.reason.startswith("scaling up 0 → 1")


@pytest.mark.parametrize("ready_jobs", [0, None])
def test_a_pipeline_at_zero_stays_there_without_ready_jobs(ready_jobs: float | None) -> None:
    decision, _ = decide(snapshot([], ready_jobs=ready_jobs), current=0, scaling=zero_policy())

    assert decision.desired == 0


def test_pinned_replicas_override_the_load() -> None:
    decision, _ = decide(snapshot([4, 4], ready_jobs=1000), current=2, pinned=1)

    assert decision.desired == 1
    assert "spec.replicas pins 1" in decision.reason


def test_job_time_and_throughput_are_measured_from_counter_samples() -> None:
    earlier = CounterSample(
        at=NOW - 60, succeeded={"w-0": 100, "w-1": 100}, in_flight={"w-0": 4, "w-1": 4}
    )
    history = ScalingHistory(samples=(earlier,))

    decision, new_history = decide(
        snapshot([4, 4], succeeded=[140, 140]), current=2, history=history
    )

    # 80 jobs in 60 s over 8 busy slots: 480 slot-seconds / 80 jobs = 6 s per job.
    assert decision.throughput_per_second == pytest.approx(80 / 60)
    assert decision.seconds_per_job == pytest.approx(6.0)
    assert new_history.seconds_per_job == pytest.approx(6.0)


def test_a_reset_counter_counts_from_zero_rather_than_negative() -> None:
    earlier = CounterSample(at=NOW - 60, succeeded={"w-0": 100}, in_flight={"w-0": 2})
    history = ScalingHistory(samples=(earlier,))

    decision, _ = decide(snapshot([2], succeeded=[12]), current=1, history=history)

    assert decision.throughput_per_second == pytest.approx(12 / 60)


def test_without_completions_the_last_measured_job_time_is_kept() -> None:
    earlier = CounterSample(at=NOW - 30, succeeded={"w-0": 5}, in_flight={"w-0": 4})
    history = ScalingHistory(samples=(earlier,), seconds_per_job=7.5)

    decision, new_history = decide(snapshot([4], succeeded=[5]), current=1, history=history)

    assert decision.seconds_per_job == 7.5
    assert new_history.seconds_per_job == 7.5


def test_counter_samples_older_than_the_rate_window_are_dropped() -> None:
    old = CounterSample(at=NOW - 61, succeeded={"w-0": 1}, in_flight={"w-0": 0})
    recent = CounterSample(at=NOW - 30, succeeded={"w-0": 1}, in_flight={"w-0": 0})

    _, history = decide(snapshot([0]), current=1, history=ScalingHistory(samples=(old, recent)))

    assert [s.at for s in history.samples] == [NOW - 30, NOW]


def test_a_saturated_fleet_is_sized_for_the_arrivals_it_cannot_absorb() -> None:
    # Every slot busy for 30 s, 120 jobs done (2 s each) while the backlog grew by 120: jobs
    # arrive at 8/s, which needs 16 slots, plus 120 ready × 2 s / 30 s = 8 slots to drain:
    # 6 workers. Jobs in flight alone (8) would have asked for 4.
    earlier = CounterSample(
        at=NOW - 30, succeeded={"w-0": 0, "w-1": 0}, in_flight={"w-0": 4, "w-1": 4}, ready=0
    )
    history = ScalingHistory(samples=(earlier,))

    decision, _ = decide(
        snapshot([4, 4], ready_jobs=120, succeeded=[60, 60]), current=2, history=history
    )

    assert decision.arrival_per_second == pytest.approx(8.0)
    assert decision.seconds_per_job == pytest.approx(2.0)
    assert decision.desired == 6
    assert "8 arriving/s" in decision.reason


def _in_flight_history(counts: Sequence[float]) -> ScalingHistory:
    """Samples every 5 s up to NOW - 5 of one pod's jobs in flight (no completions yet)."""
    start = NOW - 5 * len(counts)
    return ScalingHistory(
        samples=tuple(
            CounterSample(at=start + 5 * i, succeeded={"w-0": 0}, in_flight={"w-0": c}, ready=0)
            for i, c in enumerate(counts)
        )
    )


def test_one_scrapes_peak_of_jobs_in_flight_does_not_size_the_fleet() -> None:
    # 14 jobs in flight for 30 s, then one scrape catches 24 (Poisson arrivals do that): sized
    # on that scrape alone the fleet would go to 6 workers, and the scale-down stabilization
    # would hold the peak for its whole window. Averaged over the arrival window it stays at 4.
    history = _in_flight_history([14] * 6)

    decision, _ = decide(snapshot([24], ready_jobs=0), current=4, history=history)

    assert decision.desired == 4


def test_jobs_in_flight_that_stay_up_raise_the_fleet() -> None:
    history = _in_flight_history([24] * 6)

    decision, _ = decide(snapshot([24], ready_jobs=0), current=4, history=history)

    assert decision.desired == 6


def test_a_draining_backlog_counts_against_the_arrival_rate() -> None:
    # 120 done in 30 s while the backlog fell by 90: only 1 job/s arrived.
    earlier = CounterSample(
        at=NOW - 30, succeeded={"w-0": 0, "w-1": 0}, in_flight={"w-0": 4, "w-1": 4}, ready=100
    )
    history = ScalingHistory(samples=(earlier,))

    decision, _ = decide(
        snapshot([4, 4], ready_jobs=10, succeeded=[60, 60]), current=2, history=history
    )

    assert decision.arrival_per_second == pytest.approx(1.0)


def test_arrivals_are_not_measured_across_a_sample_without_queue_metrics() -> None:
    earlier = CounterSample(at=NOW - 30, succeeded={"w-0": 0}, in_flight={"w-0": 4}, ready=None)
    history = ScalingHistory(samples=(earlier,), seconds_per_job=2.0)

    decision, _ = decide(snapshot([4], ready_jobs=50, succeeded=[60]), current=1, history=history)

    assert decision.arrival_per_second is None


def test_measured_arrivals_are_ignored_until_a_job_time_is_measured() -> None:
    # Arrivals × the fallback job time (the target wait) would ask for 10 × 30 = 300 slots.
    earlier = CounterSample(at=NOW - 10, succeeded={"w-0": 0}, in_flight={"w-0": 0}, ready=0)
    history = ScalingHistory(samples=(earlier,))

    scaling = policy(max_replicas=1000)

    decision, _ = decide(snapshot([0], ready_jobs=100), 1, scaling, history)

    assert decision.arrival_per_second == pytest.approx(10.0)
    # Only the backlog counts: 100 ready × 30 s / 30 s = 100 slots = 25 workers.
    assert decision.recommendation == 25


def test_decision_reports_queue_figures_for_the_status() -> None:
    decision, _ = decide(snapshot([1], ready_jobs=7, oldest=4.5), current=1)

    assert decision.queue_depth == 7
    assert decision.oldest_ready_age_seconds == 4.5
    assert decision.jobs_in_flight == 1


def test_idle_pods_cost_least_to_delete() -> None:
    costs = pod_deletion_costs(
        [
            PodMetrics("busy", ready=True, jobs_in_flight=3, jobs_succeeded=0),
            PodMetrics("idle", ready=True, jobs_in_flight=0, jobs_succeeded=0),
        ]
    )

    assert costs == {"busy": 3, "idle": 0}


def test_a_pod_of_unknown_load_costs_as_much_as_the_busiest() -> None:
    costs = pod_deletion_costs(
        [
            PodMetrics("busy", ready=True, jobs_in_flight=5, jobs_succeeded=0),
            PodMetrics("idle", ready=True, jobs_in_flight=0, jobs_succeeded=0),
            PodMetrics("unknown", ready=True),
        ]
    )

    assert costs["unknown"] == 5


# Properties.


@st.composite
def policies(draw: st.DrawFn, *, allow_zero: bool = True, most: int = 20) -> ScalingSpec:
    min_replicas = draw(st.integers(0 if allow_zero else 1, 5))
    return policy(
        min_replicas=min_replicas,
        max_replicas=draw(st.integers(max(min_replicas, 1), most)),
        max_scale_up_step=draw(st.integers(1, max(5, most // 4))),
        target_queue_wait_seconds=draw(st.integers(1, 120)),
        scale_down_stabilization_seconds=draw(st.integers(0, 600)),
        interval_seconds=draw(st.integers(1, 30)),
        scale_to_zero={"enabled": min_replicas == 0, "idle_seconds": draw(st.integers(0, 900))},
    )


@st.composite
def pod_lists(
    draw: st.DrawFn, *, count: int, scraped: bool | None = None
) -> tuple[PodMetrics, ...]:
    pods = []
    for i in range(count):
        ok = draw(st.booleans()) if scraped is None else scraped
        pods.append(
            PodMetrics(
                f"w-{i}",
                ready=draw(st.booleans()) if scraped is None else True,
                jobs_in_flight=draw(st.integers(0, CONCURRENCY)) if ok else None,
                jobs_succeeded=draw(st.integers(0, 10_000)) if ok else None,
            )
        )
    return tuple(pods)


@st.composite
def histories(draw: st.DrawFn) -> ScalingHistory:
    recommendations = draw(
        st.lists(
            st.builds(
                Recommendation,
                at=st.floats(NOW - 900, NOW - 1),
                replicas=st.integers(0, 25),
            ),
            max_size=5,
        )
    )
    # Optionally an earlier sample, so that the arrival rate is measured too.
    earlier = draw(
        st.none()
        | st.builds(
            CounterSample,
            at=st.floats(NOW - 60, NOW - 1),
            succeeded=st.dictionaries(
                st.sampled_from([f"w-{i}" for i in range(4)]), st.integers(0, 10_000)
            ),
            in_flight=st.dictionaries(
                st.sampled_from([f"w-{i}" for i in range(4)]), st.integers(0, CONCURRENCY)
            ),
            ready=st.none() | st.integers(0, 5000).map(float),
        )
    )
    return ScalingHistory(
        samples=() if earlier is None else (earlier,),
        recommendations=tuple(sorted(recommendations, key=lambda r: r.at)),
        last_busy_at=draw(st.none() | st.floats(NOW - 2000, NOW)),
        seconds_per_job=draw(st.none() | st.floats(0.1, 600)),
    )


queues = st.none() | st.builds(
    QueueMetrics, ready_jobs=st.integers(0, 5000), oldest_ready_age_seconds=st.floats(0, 1000)
)


@given(data=st.data(), scaling=policies(), history=histories(), current=st.integers(0, 30))
def test_desired_replicas_always_lie_within_min_and_max(
    data: st.DataObject, scaling: ScalingSpec, history: ScalingHistory, current: int
) -> None:
    snap = data.draw(
        st.none() | st.builds(MetricsSnapshot, pods=pod_lists(count=current), queue=queues)
    )

    decision, _ = decide(snap, current, scaling, history)

    assert scaling.min_replicas <= decision.desired <= scaling.max_replicas


@given(data=st.data(), scaling=policies(), history=histories())
def test_missing_or_partial_metrics_never_scale_down(
    data: st.DataObject, scaling: ScalingSpec, history: ScalingHistory
) -> None:
    current = data.draw(st.integers(0, scaling.max_replicas))
    pods = data.draw(pod_lists(count=current))
    unscraped_ready = PodMetrics("w-unscraped", ready=True)
    snap = data.draw(
        st.sampled_from(
            [
                None,
                MetricsSnapshot(pods=pods, queue=None),
                MetricsSnapshot(pods=(*pods, unscraped_ready), queue=QueueMetrics(0)),
            ]
        )
    )

    decision, _ = decide(snap, current, scaling, history)

    assert not decision.metrics_complete
    assert decision.desired >= current


@given(
    data=st.data(),
    # A high ceiling, so that backlogs are compared where they still change the answer.
    scaling=policies(most=1000),
    history=histories(),
    extra=st.lists(st.integers(0, 5000), max_size=10),
)
def test_more_backlog_never_gives_fewer_replicas(
    data: st.DataObject, scaling: ScalingSpec, history: ScalingHistory, extra: list[int]
) -> None:
    current = data.draw(st.integers(0, 25))
    pods = data.draw(pod_lists(count=current))
    age = data.draw(st.floats(0, 1000))
    # A ladder of backlogs, each decided from the same state: the answers must not go down.
    ladder = sorted({*range(0, 5001, 20), *extra})
    decisions = [
        decide(MetricsSnapshot(pods, QueueMetrics(b, age)), current, scaling, history)[0]
        for b in ladder
    ]

    for smaller, larger in itertools.pairwise(decisions):
        assert smaller.recommendation <= larger.recommendation
        assert smaller.desired <= larger.desired


@settings(max_examples=50)
@given(
    scaling=policies(allow_zero=False),
    data=st.data(),
    noise=st.lists(st.floats(-0.09, 0.09), min_size=20, max_size=20),
)
def test_small_fluctuations_around_a_steady_load_change_nothing(
    scaling: ScalingSpec, data: st.DataObject, noise: list[float]
) -> None:
    replicas = data.draw(st.integers(scaling.min_replicas, scaling.max_replicas))
    history = ScalingHistory(seconds_per_job=2.0)
    now = NOW
    for wobble in noise:
        # Every worker's slots busy, give or take a few percent.
        snap = snapshot([CONCURRENCY * (1 + wobble)] * replicas)
        decision, history = decide(snap, replicas, scaling, history, now=now)
        assert decision.desired == replicas
        now += scaling.interval_seconds


@settings(max_examples=50)
@given(scaling=policies(allow_zero=False), data=st.data())
def test_no_scale_down_below_a_scale_up_within_the_stabilization_window(
    scaling: ScalingSpec, data: st.DataObject
) -> None:
    current = data.draw(st.integers(scaling.min_replicas, scaling.max_replicas))
    history = ScalingHistory()
    now = NOW
    ups: list[tuple[float, int]] = []
    for _ in range(30):
        pods = data.draw(pod_lists(count=current, scraped=True))
        queue = QueueMetrics(data.draw(st.integers(0, 200)))
        decision, history = decide(MetricsSnapshot(pods, queue), current, scaling, history, now)
        for at, level in ups:
            if now - at < scaling.scale_down_stabilization_seconds:
                assert decision.desired >= level
        if decision.desired > current:
            ups.append((now, decision.desired))
        current = decision.desired
        now += scaling.interval_seconds


def test_completions_still_in_the_arrival_window_do_not_hold_an_idle_fleet_up() -> None:
    # 120 jobs finished in the last 30 s, but nothing is ready or in flight now, and the fleet
    # has been idle for the whole idle period: nothing is arriving, so it goes to zero.
    earlier = CounterSample(
        at=NOW - 30, succeeded={"w-0": 0, "w-1": 0}, in_flight={"w-0": 4, "w-1": 4}, ready=0
    )
    history = ScalingHistory(samples=(earlier,), seconds_per_job=2.0, last_busy_at=NOW - 601)

    decision, _ = decide(
        snapshot([0, 0], ready_jobs=0, succeeded=[60, 60]),
        current=2,
        scaling=zero_policy(),
        history=history,
    )

    assert decision.desired == 0


# Provider quotas: the ceiling of the fleet.

TOKENS = QuotaKey("openai", "q1", "tokens")
REQUESTS = QuotaKey("openai", "q1", "requests")
UPLOADS = QuotaKey("llamaparse", "q2", "requests")
# 90,000 tokens a minute at 500 tokens a job feed 3 jobs/s.
TOKEN_QUOTA = {TOKENS: 90_000.0}
TOKEN_USE = {TOKENS: 500.0}
SPAN = 10.0


def quota_round(
    pods: int,
    *,
    done_per_pod: float = SPAN,
    use: Mapping[QuotaKey, float] = TOKEN_USE,
    limits: Mapping[QuotaKey, float] = TOKEN_QUOTA,
    wait_per_pod: float = 0.0,
    ready_jobs: float = 10_000,
    held: tuple[str, ...] = (),
) -> tuple[MetricsSnapshot, ScalingHistory]:
    """Two scrapes SPAN seconds apart of `pods` full workers (CONCURRENCY jobs in flight each)
    that finished `done_per_pod` jobs each, drawing `use` budget per job; the second is the
    snapshot, the first is in the history with a recommendation of the current size."""
    names = [f"w-{i}" for i in range(pods)]
    first = CounterSample(
        at=NOW - SPAN,
        succeeded=dict.fromkeys(names, 100.0),
        in_flight=dict.fromkeys(names, float(CONCURRENCY)),
        ready=ready_jobs,
        quota_used={n: {k: 100.0 * u for k, u in use.items()} for n in names},
        quota_wait=dict.fromkeys(names, 50.0),
    )
    later = 100.0 + done_per_pod
    snap = MetricsSnapshot(
        pods=tuple(
            PodMetrics(
                n,
                ready=True,
                jobs_in_flight=CONCURRENCY,
                jobs_succeeded=later,
                quota_used={k: later * u for k, u in use.items()},
                quota_wait_seconds=50.0 + wait_per_pod,
            )
            for n in names
        ),
        queue=QueueMetrics(ready_jobs, 60.0),
        quota_limits=limits,
        quota_held=held,
    )
    history = ScalingHistory(
        samples=(first,), recommendations=(Recommendation(NOW - SPAN, pods),), last_busy_at=NOW
    )
    return snap, history


WIDE = {"max_replicas": 20, "max_scale_up_step": 100}


@pytest.mark.parametrize(
    ("case", "pods", "round_args", "scaling", "desired", "limited", "says"),
    [
        # Each full worker does 1 job/s (4 slots, 4 s a job); the quota feeds 3 jobs/s.
        ("10k backlog, a quota that feeds 3", 2, {}, WIDE, 4, True, "capped by the provider quota"),
        ("10k backlog, no quota", 2, {"limits": {}}, WIDE, 20, False, "scaling up 2 → 20"),
        (
            "requests bind before tokens",
            2,
            {
                "limits": {REQUESTS: 120.0, TOKENS: 600_000.0},
                "use": {REQUESTS: 1.0, TOKENS: 500.0},
            },
            WIDE,
            3,
            True,
            "120 requests/min at 1 requests/job",
        ),
        (
            "a quota the jobs do not draw on binds nothing",
            2,
            {"limits": {UPLOADS: 10.0}, "use": {}},
            WIDE,
            20,
            False,
            "scaling up 2 → 20",
        ),
        # 8 workers share 3 jobs/s: 30 jobs in 10 s, 200 of 320 busy slot-seconds waiting.
        (
            "pods that only wait are scaled away at once",
            8,
            {"done_per_pod": 3.75, "wait_per_pod": 25.0},
            WIDE,
            4,
            True,
            "scaling down 8 → 4: more workers would only wait",
        ),
        (
            "at the ceiling, the fleet holds",
            4,
            {},
            WIDE,
            4,
            True,
            "at the provider quota's ceiling",
        ),
        (
            "the step still applies below the ceiling",
            1,
            {},
            policy(max_scale_up_step=2),
            3,
            True,
            "maxScaleUpStep",
        ),
        ("minReplicas wins over the ceiling", 6, {}, {**WIDE, "min_replicas": 6}, 6, True, "quota"),
        (
            "a little load stays under the ceiling",
            2,
            {"ready_jobs": 0},
            WIDE,
            2,
            False,
            "steady at 2",
        ),
    ],
)
def test_the_fleet_never_outgrows_what_its_quota_feeds(
    case: str,
    pods: int,
    round_args: dict[str, Any],
    scaling: ScalingSpec | dict[str, Any],
    desired: int,
    limited: bool,
    says: str,
) -> None:
    snap, history = quota_round(pods, **round_args)
    chosen = scaling if isinstance(scaling, ScalingSpec) else policy(**scaling)

    decision, _ = decide(snap, current=pods, scaling=chosen, history=history)

    assert decision.desired == desired, (case, decision.reason)
    assert decision.quota_limited is limited, (case, decision.reason)
    assert says in decision.reason, (case, decision.reason)


def test_a_capped_decision_gives_the_quota_figures() -> None:
    snap, history = quota_round(2)

    decision, new_history = decide(snap, current=2, scaling=policy(**WIDE), history=history)

    ceiling = decision.quota_ceiling
    assert ceiling is not None
    assert ceiling.binding == TOKENS
    assert ceiling.replicas == 4
    assert ceiling.quota_jobs_per_second == pytest.approx(3.0)
    assert ceiling.worker_jobs_per_second == pytest.approx(1.0)
    assert "90000 tokens/min at 500 tokens/job feeds 3 jobs/s" in decision.reason
    assert "one worker does 1 jobs/s: at most 4 workers (3 + 1 of headroom)" in decision.reason
    assert "load needs 336 workers" in decision.reason
    assert new_history.quota_per_job == {TOKENS: pytest.approx(500.0)}
    assert new_history.recommendations[-1] == Recommendation(NOW, 4)


def test_the_ceiling_counts_only_working_time_so_waiting_workers_do_not_raise_it() -> None:
    # The same fleet as above, quota-bound: its measured job time (10.7 s) includes waiting.
    snap, history = quota_round(8, done_per_pod=3.75, wait_per_pod=25.0)

    decision, _ = decide(snap, current=8, scaling=policy(**WIDE), history=history)

    assert decision.seconds_per_job == pytest.approx(320 / 30)
    assert decision.quota_ceiling is not None
    assert decision.quota_ceiling.worker_jobs_per_second == pytest.approx(1.0)


def test_no_ceiling_before_a_job_is_measured_so_the_first_scale_up_is_free() -> None:
    snap, _ = quota_round(1)

    decision, _ = decide(snap, current=1, scaling=policy(**WIDE))

    assert decision.quota_ceiling is None
    assert decision.desired == 20


def test_a_ceiling_never_blocks_the_first_worker() -> None:
    # Even with remembered figures and a limit still reported (a stale Prometheus series), a
    # backlog at zero brings workers back.
    snap = MetricsSnapshot(
        pods=(), queue=QueueMetrics(10_000, 60.0), quota_limits={TOKENS: 30_000.0}
    )
    history = ScalingHistory(
        quota_per_job={TOKENS: 500.0}, working_seconds_per_job=4.0, seconds_per_job=4.0
    )

    decision, _ = decide(snap, current=0, scaling=zero_policy(**WIDE), history=history)

    assert decision.quota_ceiling is not None
    assert decision.quota_ceiling.replicas == 2
    assert decision.desired == 2


def test_scale_to_zero_is_unchanged_by_a_quota() -> None:
    snap, history = quota_round(2, ready_jobs=0)
    idle = MetricsSnapshot(
        pods=tuple(replace(p, jobs_in_flight=0.0) for p in snap.pods),
        queue=QueueMetrics(0, 0.0),
        quota_limits=snap.quota_limits,
    )
    history = replace(history, last_busy_at=NOW - 601)

    decision, _ = decide(idle, current=2, scaling=zero_policy(**WIDE), history=history)

    assert decision.desired == 0
    assert decision.reason.startswith("scaling 2 → 0")


def test_a_pinned_size_ignores_the_quota() -> None:
    snap, history = quota_round(2)

    decision, _ = decide(snap, current=2, scaling=policy(**WIDE), history=history, pinned=9)

    assert decision.desired == 9
    assert decision.quota_ceiling is None
    assert not decision.quota_limited


@pytest.mark.parametrize(
    ("scaling", "current", "desired"),
    [
        ({**WIDE}, 6, 1),
        ({**WIDE, "min_replicas": 0, "scale_to_zero": {"enabled": True}}, 6, 1),
        ({**WIDE, "min_replicas": 3}, 6, 3),
        ({**WIDE}, 1, 1),
    ],
)
def test_a_quota_held_for_lack_of_credit_keeps_only_the_workers_that_keep_it_visible(
    scaling: dict[str, Any], current: int, desired: int
) -> None:
    snap, history = quota_round(current, held=("openai/q1",))

    decision, _ = decide(snap, current=current, scaling=policy(**scaling), history=history)

    assert decision.desired == desired
    assert decision.quota_held == ("openai/q1",)
    assert decision.quota_limited
    assert "insufficient_quota: openai/q1" in decision.reason


def test_quota_figures_are_remembered_between_rounds_without_completions() -> None:
    snap, history = quota_round(2)
    _, remembered = decide(snap, current=2, scaling=policy(**WIDE), history=history)
    # A round an hour later: no sample in the window, nothing finished yet.
    later, _ = quota_round(4)

    decision, _ = decide(
        later,
        current=4,
        scaling=policy(**WIDE),
        history=replace(remembered, samples=()),
        now=NOW + 3600,
    )

    assert decision.quota_ceiling is not None
    assert decision.quota_ceiling.replicas == 4


def test_a_reset_used_counter_counts_from_zero() -> None:
    snap, history = quota_round(2)
    first = history.samples[0]
    # w-0 restarted: its counters went down to what it did since.
    restarted = replace(
        first,
        succeeded={**first.succeeded, "w-0": 1000.0},
        quota_used={**first.quota_used, "w-0": {TOKENS: 1000.0 * 500.0}},
        quota_wait={**first.quota_wait, "w-0": 5000.0},
    )

    decision, _ = decide(
        snap, current=2, scaling=policy(**WIDE), history=replace(history, samples=(restarted,))
    )

    assert decision.quota_ceiling is not None
    assert decision.quota_ceiling.used_per_job == pytest.approx(500.0)


def test_quota_ceiling_is_the_binding_quota_over_a_workers_rate_plus_headroom() -> None:
    ceiling = quota_ceiling(
        {TOKENS: 1_000_000.0, REQUESTS: 3000.0}, {TOKENS: 2000.0, REQUESTS: 2.0}, 8.0, 4
    )

    # Tokens: 1e6/60/2000 = 8.3 jobs/s; requests: 3000/60/2 = 25 jobs/s. A worker: 4/8 = 0.5.
    assert ceiling is not None
    assert ceiling.binding == TOKENS
    assert ceiling.replicas == math.ceil(8.333 / 0.5) + 1
    assert quota_ceiling({TOKENS: 1000.0}, {}, 8.0, 4) is None
    assert quota_ceiling({TOKENS: 1000.0}, {TOKENS: 1.0}, None, 4) is None


@pytest.mark.parametrize(
    ("worker_seconds_per_job", "replicas"),
    [(2.0, 4), (1.94, 4), (2.06, 4), (2.3, 4), (2.5, 5), (0.1, 2)],
)
def test_noise_around_a_whole_number_of_workers_does_not_move_the_ceiling(
    worker_seconds_per_job: float, replicas: int
) -> None:
    # 3 jobs/s of quota; a worker of 2 slots does 2 / seconds-per-job jobs/s.
    ceiling = quota_ceiling({TOKENS: 90_000.0}, TOKEN_USE, worker_seconds_per_job, 2)

    assert ceiling is not None
    assert ceiling.replicas == replicas


def test_a_scale_up_to_a_raised_min_replicas_names_the_minimum_not_the_queue_wait() -> None:
    decision, _ = decide(snapshot([0.0]), current=1, scaling=policy(min_replicas=3))

    assert decision.desired == 3
    assert "spec.scaling.minReplicas is 3" in decision.reason
    assert "queue wait" not in decision.reason


def test_a_scale_up_the_load_asks_for_still_names_the_queue_wait() -> None:
    decision, _ = decide(
        snapshot([CONCURRENCY] * 2, ready_jobs=200), current=2, scaling=policy(min_replicas=2)
    )

    assert decision.desired > 2
    assert "to keep the queue wait under 30s" in decision.reason
    assert "minReplicas" not in decision.reason


def test_a_scale_down_to_a_lowered_max_replicas_names_the_maximum_not_less_work() -> None:
    busy = snapshot([CONCURRENCY] * 6, ready_jobs=100)

    decision, _ = decide(busy, current=6, scaling=policy(max_replicas=4))
    unknown, _ = decide(None, current=6, scaling=policy(max_replicas=4))

    assert decision.desired == 4
    assert "spec.scaling.maxReplicas is 4" in decision.reason
    assert "less work" not in decision.reason
    assert "spec.scaling.maxReplicas is 4" in unknown.reason
