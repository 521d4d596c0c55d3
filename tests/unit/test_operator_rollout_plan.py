"""The rollout state machine, canary sizing and interval sampling (pure)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator.rollout import (
    IntervalOutcome,
    IntervalResult,
    Observed,
    Phase,
    RevisionCounters,
    RolloutPolicy,
    RolloutState,
    Split,
    Strategy,
    canary_weight,
    plan,
    quantile_from_buckets,
    sample_interval,
    split_replicas,
)

POLICY = RolloutPolicy(min_jobs=10, success_intervals=2, failure_limit=2, progress_deadline_s=60)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PASS = IntervalResult(IntervalOutcome.PASSED, "ok")
FAIL = IntervalResult(IntervalOutcome.FAILED, "error ratio 1.00")


def seen(**overrides: object) -> Observed:
    base: dict[str, object] = {
        "desired_revision": "new",
        "stable_revision": "old",
        "canary_ready": True,
        "stable_rolled": False,
        "now": T0,
    }
    base.update(overrides)
    return Observed(**base)  # type: ignore[arg-type]


def started() -> RolloutState:
    return plan(RolloutState(stable_revision="old"), seen(canary_weight=0.25), POLICY).state


def test_a_first_deployment_is_not_a_rollout() -> None:
    step = plan(RolloutState(), seen(stable_revision=None), POLICY)

    assert step.stable_takes_desired
    assert not step.run_canary
    assert step.state.phase is None


def test_a_changed_template_starts_a_canary_and_keeps_the_stable() -> None:
    step = plan(RolloutState(stable_revision="old"), seen(canary_weight=0.25), POLICY)

    assert step.run_canary
    assert not step.stable_takes_desired
    assert step.state.phase is Phase.PROGRESSING
    assert (step.state.stable_revision, step.state.canary_revision) == ("old", "new")
    assert step.state.started_at == T0
    assert step.state.canary_weight == 0.25
    assert step.event is not None
    assert step.event.reason == "CanaryStarted"


def test_rolling_strategy_updates_the_stable_at_once() -> None:
    step = plan(RolloutState(stable_revision="old"), seen(strategy=Strategy.ROLLING), POLICY)

    assert step.stable_takes_desired
    assert not step.run_canary


def test_passing_intervals_promote_then_the_canary_goes_once_the_stable_has_rolled() -> None:
    state = started()
    first = plan(state, seen(interval=PASS, now=T0 + timedelta(seconds=10)), POLICY)
    assert first.state.phase is Phase.PROGRESSING
    assert not first.stable_takes_desired

    second = plan(first.state, seen(interval=PASS, now=T0 + timedelta(seconds=20)), POLICY)
    assert second.state.phase is Phase.PROMOTING
    assert second.stable_takes_desired
    assert second.run_canary
    assert second.event is not None
    assert second.event.reason == "Promoting"

    # The stable Deployment now carries the new template but has not finished rolling.
    rolling = plan(second.state, seen(stable_revision="new"), POLICY)
    assert rolling.state.phase is Phase.PROMOTING
    assert rolling.run_canary

    done = plan(rolling.state, seen(stable_revision="new", stable_rolled=True), POLICY)
    assert done.state.phase is Phase.PROMOTED
    assert done.stable_takes_desired
    assert not done.run_canary
    assert done.state.stable_revision == "new"


def test_failing_intervals_roll_back_and_the_revision_is_not_tried_again() -> None:
    state = started()
    one = plan(state, seen(interval=FAIL), POLICY)
    assert one.state.phase is Phase.PROGRESSING
    assert one.run_canary
    assert one.event is not None
    assert one.event.reason == "AnalysisFailed"

    two = plan(one.state, seen(interval=FAIL, now=T0 + timedelta(seconds=20)), POLICY)
    assert two.state.phase is Phase.ROLLED_BACK
    assert not two.run_canary
    assert not two.stable_takes_desired
    assert two.state.rejected_revision == "new"
    assert "2 failed analysis interval(s)" in (two.state.rejected_reason or "")
    assert two.event is not None
    assert (two.event.type, two.event.reason) == ("Warning", "RolledBack")

    again = plan(two.state, seen(now=T0 + timedelta(minutes=5)), POLICY)
    assert not again.run_canary
    assert not again.stable_takes_desired
    assert again.event is None

    changed = plan(two.state, seen(desired_revision="newer"), POLICY)
    assert changed.run_canary
    assert changed.state.canary_revision == "newer"
    assert changed.state.rejected_revision == "new"  # still shown until another is rejected


def test_canary_never_ready_rolls_back_at_the_progress_deadline() -> None:
    state = started()
    before = plan(state, seen(canary_ready=False, now=T0 + timedelta(seconds=59)), POLICY)
    at = plan(state, seen(canary_ready=False, now=T0 + timedelta(seconds=60)), POLICY)

    assert before.run_canary
    assert at.state.phase is Phase.ROLLED_BACK
    assert "progress deadline" in (at.state.rejected_reason or "")


def test_pause_holds_the_analysis_and_resume_continues_it() -> None:
    state = plan(started(), seen(interval=FAIL), POLICY).state
    paused = plan(
        state,
        seen(paused=True, interval=None, canary_ready=False, now=T0 + timedelta(hours=1)),
        POLICY,
    )
    assert paused.state.phase is Phase.PAUSED
    assert paused.run_canary
    assert paused.event is not None
    assert paused.event.reason == "RolloutPaused"
    assert paused.state.intervals == state.intervals

    resumed = plan(paused.state, seen(interval=PASS), POLICY)
    assert resumed.state.phase is Phase.PROGRESSING
    assert [i.outcome for i in resumed.state.intervals] == [
        IntervalOutcome.FAILED,
        IntervalOutcome.PASSED,
    ]


def test_a_manual_rollback_rejects_the_running_canary() -> None:
    step = plan(started(), seen(rollback_requested=True), POLICY)

    assert step.state.phase is Phase.ROLLED_BACK
    assert step.state.rejected_revision == "new"
    assert "annotation" in (step.state.rejected_reason or "")
    assert step.clear_rollback_request


def test_a_spec_back_at_the_stable_revision_drops_the_canary_without_rejecting() -> None:
    step = plan(started(), seen(desired_revision="old"), POLICY)

    assert not step.run_canary
    assert step.stable_takes_desired
    assert step.state.phase is None
    assert step.state.rejected_revision is None


def test_analysis_resumes_from_the_stored_intervals() -> None:
    # An operator restart keeps only the status: one failure recorded there plus one more after
    # the restart reaches the limit of two.
    stored = plan(started(), seen(interval=FAIL), POLICY).state
    restored = replace(stored)  # what status_of/state_of round-trip gives
    assert plan(restored, seen(interval=FAIL), POLICY).state.phase is Phase.ROLLED_BACK


@pytest.mark.parametrize(
    ("total", "replicas", "percent", "stable", "canary"),
    [
        (10, None, 20, 8, 2),
        (10, None, 30, 7, 3),
        (3, None, 20, 2, 1),
        (1, None, 20, 1, 1),
        (0, None, 20, 0, 1),
        (10, 3, 20, 7, 3),
        (2, 3, 20, 1, 1),
    ],
)
def test_canary_keeps_its_share_as_the_fleet_scales(
    total: int, replicas: int | None, percent: int, stable: int, canary: int
) -> None:
    split = split_replicas(total, canary_replicas=replicas, canary_percent=percent)
    assert (split.stable, split.canary) == (stable, canary)


@given(st.integers(0, 500), st.integers(1, 50))
def test_split_keeps_a_canary_and_a_stable_worker(total: int, percent: int) -> None:
    split = split_replicas(total, canary_replicas=None, canary_percent=percent)
    assert split.canary >= 1
    if total >= 2:
        assert split.stable >= 1
        assert split.stable + split.canary == total


def test_canary_weight_is_the_percent_or_with_a_fixed_size_the_canarys_share_of_the_pods() -> None:
    assert canary_weight(Split(stable=2, canary=1), canary_replicas=None, canary_percent=20) == 0.2
    assert canary_weight(Split(stable=3, canary=1), canary_replicas=1, canary_percent=20) == 0.25
    assert canary_weight(Split(stable=0, canary=1), canary_replicas=1, canary_percent=20) == 1.0


@given(
    total=st.integers(0, 500), fixed=st.none() | st.integers(1, 1000), percent=st.integers(1, 50)
)
def test_canary_weight_is_a_valid_share(total: int, fixed: int | None, percent: int) -> None:
    split = split_replicas(total, canary_replicas=fixed, canary_percent=percent)
    weight = canary_weight(split, canary_replicas=fixed, canary_percent=percent)
    assert 0 < weight <= 1


def test_quantile_interpolates_within_buckets() -> None:
    buckets = ((0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0))
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.1)
    assert quantile_from_buckets(buckets, 0.95) == pytest.approx(0.75)
    assert quantile_from_buckets(((1.0, 0.0), (math.inf, 0.0)), 0.95) is None


def test_sample_counts_interval_deltas_new_pods_from_zero_and_resets() -> None:
    before = {
        "a": RevisionCounters(claimed=100, retried=5, dead=1),
        "b": RevisionCounters(claimed=50, retried=0, dead=0),
    }
    after = {
        "a": RevisionCounters(claimed=130, retried=15, dead=1),
        "b": RevisionCounters(claimed=4, retried=4, dead=0),  # restarted: counters reset
        "c": RevisionCounters(claimed=6, retried=1, dead=0),  # new pod
    }

    sample = sample_interval(before, after, pods_desired=3, pods_ready=3, restarts=1)

    assert (sample.claimed, sample.retried, sample.dead) == (40, 15, 0)
    assert sample.restarts == 1


def test_sample_p95_is_the_slowest_stage_over_the_interval_only() -> None:
    slow_before = ((0.1, 100.0), (1.0, 100.0), (math.inf, 100.0))
    slow_after = ((0.1, 100.0), (1.0, 120.0), (math.inf, 120.0))  # 20 new, all in 0.1..1
    fast = ((0.1, 10.0), (1.0, 10.0), (math.inf, 10.0))
    before = {"a": RevisionCounters(stage_buckets={"embed": slow_before})}
    after = {"a": RevisionCounters(stage_buckets={"embed": slow_after, "parse": fast})}

    sample = sample_interval(before, after, pods_desired=1, pods_ready=1, restarts=0)

    assert sample.stage_p95_s == pytest.approx(0.1 + 0.9 * 0.95)
