"""The canary verdict: interval judgement and the promote / roll back decision."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator.rollout import (
    Action,
    IntervalOutcome,
    IntervalResult,
    RevisionSample,
    RolloutPolicy,
    decide,
    judge_interval,
)

POLICY = RolloutPolicy(
    max_error_ratio=0.1,
    max_latency_ratio=1.5,
    min_jobs=10,
    success_intervals=3,
    failure_limit=2,
    progress_deadline_s=120,
)
STABLE = RevisionSample(
    claimed=100, retried=1, dead=0, stage_p95_s=1.0, pods_desired=4, pods_ready=4
)


def sample(**overrides: float | None) -> RevisionSample:
    base: dict[str, float | None] = {
        "claimed": 50,
        "retried": 0,
        "dead": 0,
        "stage_p95_s": 1.0,
        "pods_desired": 1,
        "pods_ready": 1,
        "restarts": 0,
    }
    base.update(overrides)
    return RevisionSample(**base)  # type: ignore[arg-type]


PASS = IntervalResult(IntervalOutcome.PASSED, "ok")
FAIL = IntervalResult(IntervalOutcome.FAILED, "bad")
NONE = IntervalResult(IntervalOutcome.INCONCLUSIVE, "few jobs")


@pytest.mark.parametrize(
    ("canary", "outcome", "reason_part"),
    [
        (sample(), IntervalOutcome.PASSED, "error ratio 0.00"),
        (sample(claimed=9), IntervalOutcome.INCONCLUSIVE, "fewer than the 10"),
        (sample(claimed=0), IntervalOutcome.INCONCLUSIVE, "fewer than the 10"),
        (sample(retried=5, dead=1), IntervalOutcome.FAILED, "error ratio 0.12"),
        (
            sample(retried=5),
            IntervalOutcome.PASSED,
            "error ratio 0.10",
        ),  # at the limit: not above it
        (sample(stage_p95_s=1.6), IntervalOutcome.FAILED, "stage p95 1.600s above 1.5x"),
        (sample(stage_p95_s=1.5), IntervalOutcome.PASSED, ""),
        (sample(stage_p95_s=None), IntervalOutcome.PASSED, ""),
        (sample(restarts=1), IntervalOutcome.FAILED, "restarted 1 time"),
        (sample(pods_ready=0), IntervalOutcome.INCONCLUSIVE, "0/1 canary pods ready"),
        # A canary that fails every job with too few jobs is still only inconclusive.
        (sample(claimed=3, dead=3), IntervalOutcome.INCONCLUSIVE, "fewer than"),
    ],
)
def test_interval_judgement(
    canary: RevisionSample, outcome: IntervalOutcome, reason_part: str
) -> None:
    result = judge_interval(canary, STABLE, POLICY)
    assert result.outcome is outcome
    assert reason_part in result.reason


def test_latency_is_not_judged_without_a_stable_baseline() -> None:
    slow = sample(stage_p95_s=100.0)
    assert judge_interval(slow, None, POLICY).outcome is IntervalOutcome.PASSED
    no_stage = RevisionSample(0, 0, 0, None, 2, 2)
    assert judge_interval(slow, no_stage, POLICY).outcome is IntervalOutcome.PASSED


@pytest.mark.parametrize(
    ("results", "action"),
    [
        ([], Action.CONTINUE),
        ([PASS, PASS], Action.CONTINUE),
        ([PASS, PASS, PASS], Action.PROMOTE),
        ([PASS, NONE, PASS, NONE, PASS], Action.PROMOTE),  # inconclusive skipped, not counted
        ([NONE, NONE, NONE, NONE], Action.CONTINUE),
        ([PASS, PASS, FAIL], Action.CONTINUE),
        ([FAIL, PASS, PASS], Action.CONTINUE),  # the failure is still in the window
        ([FAIL, PASS, PASS, PASS], Action.PROMOTE),
        ([FAIL, FAIL], Action.ROLL_BACK),
        ([FAIL, PASS, PASS, FAIL], Action.ROLL_BACK),  # the limit counts all failures
    ],
)
def test_decision(results: list[IntervalResult], action: Action) -> None:
    assert decide(results, POLICY, canary_age_s=60, canary_ready=True).action is action


def test_pods_not_ready_roll_back_at_the_progress_deadline_and_not_before() -> None:
    before = decide([NONE], POLICY, canary_age_s=119.9, canary_ready=False)
    at = decide([NONE], POLICY, canary_age_s=120, canary_ready=False)
    assert before.action is Action.CONTINUE
    assert at.action is Action.ROLL_BACK
    assert "progress deadline" in at.reason


def test_continue_reports_progress() -> None:
    verdict = decide([FAIL, PASS], POLICY, canary_age_s=10, canary_ready=True)
    assert verdict.reason.startswith("1/3 passing interval(s), 1/2 failed")


@pytest.mark.parametrize(
    "field", ["min_jobs", "success_intervals", "failure_limit", "progress_deadline_s"]
)
def test_policy_refuses_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RolloutPolicy(**{field: 0})  # type: ignore[arg-type]


outcomes = st.lists(st.sampled_from([PASS, FAIL, NONE]), max_size=30)
policies = st.builds(
    RolloutPolicy,
    success_intervals=st.integers(1, 6),
    failure_limit=st.integers(1, 5),
)


@given(outcomes, policies)
def test_never_promotes_with_a_failure_in_the_window(
    results: list[IntervalResult], policy: RolloutPolicy
) -> None:
    verdict = decide(results, policy, canary_age_s=1, canary_ready=True)
    if verdict.action is Action.PROMOTE:
        conclusive = [r for r in results if r.outcome is not IntervalOutcome.INCONCLUSIVE]
        window = conclusive[-policy.success_intervals :]
        assert len(window) == policy.success_intervals
        assert FAIL not in window


@given(st.lists(st.sampled_from([NONE]), max_size=50), policies)
def test_never_promotes_on_inconclusive_intervals_alone(
    results: list[IntervalResult], policy: RolloutPolicy
) -> None:
    assert decide(results, policy, canary_age_s=1, canary_ready=True).action is Action.CONTINUE


@given(outcomes, policies)
def test_rolls_back_exactly_at_the_failure_limit(
    results: list[IntervalResult], policy: RolloutPolicy
) -> None:
    # Replaying the results one interval at a time, the first roll-back comes with the
    # failure_limit-th failure, unless a promotion came first.
    failures = 0
    for i, result in enumerate(results):
        failures += result.outcome is IntervalOutcome.FAILED
        verdict = decide(results[: i + 1], policy, canary_age_s=1, canary_ready=True)
        if verdict.action is Action.PROMOTE:
            return
        assert (verdict.action is Action.ROLL_BACK) == (failures >= policy.failure_limit)
        if verdict.action is Action.ROLL_BACK:
            return


@given(
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
)
def test_too_few_jobs_is_never_a_pass(claimed: int, retried: int, dead: int) -> None:
    canary = sample(claimed=claimed, retried=retried, dead=dead)
    result = judge_interval(canary, STABLE, POLICY)
    if claimed < POLICY.min_jobs:
        assert result.outcome is IntervalOutcome.INCONCLUSIVE
