"""Rollouts with no traffic (spec.rollout.noTraffic): a canary that gets no job is promoted after
the deadline, waits, or is judged on the golden set; the status says which and until when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator.decision import policy_of, state_of, status_of
from docpipe_operator.model import RolloutSpec
from docpipe_operator.no_traffic import NoTrafficAction, NoTrafficPolicy, track
from docpipe_operator.rollout import (
    IntervalOutcome,
    IntervalResult,
    Observed,
    Phase,
    RevisionSample,
    RolloutPolicy,
    RolloutState,
    judge_interval,
    plan,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL = 10.0
AFTER = 60.0
IDLE = IntervalResult(
    IntervalOutcome.INCONCLUSIVE, "canary claimed 0 jobs, fewer than the 10 a verdict needs", True
)
FEW = IntervalResult(IntervalOutcome.INCONCLUSIVE, "canary claimed 3 jobs, fewer than 10")
FAIL = IntervalResult(IntervalOutcome.FAILED, "error ratio 1.00")


def policy(
    action: NoTrafficAction = NoTrafficAction.PROMOTE, golden: bool = False
) -> RolloutPolicy:
    return RolloutPolicy(
        min_jobs=10,
        success_intervals=3,
        failure_limit=2,
        no_traffic=NoTrafficPolicy(action=action, after_s=AFTER, golden_set=golden),
    )


def seen(at: float, interval: IntervalResult | None, **overrides: object) -> Observed:
    base: dict[str, object] = {
        "desired_revision": "new",
        "stable_revision": "old",
        "canary_ready": True,
        "stable_rolled": False,
        "now": T0 + timedelta(seconds=at),
        "interval": interval,
    }
    base.update(overrides)
    return Observed(**base)  # type: ignore[arg-type]


def run(
    intervals: Sequence[IntervalResult | None], rollout: RolloutPolicy, **overrides: object
) -> list[RolloutState]:
    """Start a canary at T0, then one round per interval; the states after each round."""
    state = plan(RolloutState(stable_revision="old"), seen(0, None), rollout).state
    states = []
    for index, interval in enumerate(intervals, start=1):
        state = plan(state, seen(index * INTERVAL, interval, **overrides), rollout).state
        states.append(state)
    return states


def sample(claimed: float, *, ready: int = 1) -> RevisionSample:
    return RevisionSample(
        claimed=claimed, retried=0, dead=0, stage_p95_s=None, pods_desired=1, pods_ready=ready
    )


def test_an_interval_without_a_job_from_a_ready_canary_is_idle() -> None:
    rollout = policy()

    assert judge_interval(sample(0), None, rollout).idle
    assert not judge_interval(sample(3), None, rollout).idle
    assert not judge_interval(sample(0, ready=0), None, rollout).idle


def test_an_idle_canary_is_promoted_at_the_deadline_and_not_before() -> None:
    rollout = policy()
    rounds = int(AFTER / INTERVAL) + 1
    states = run([IDLE] * (rounds + 1), rollout)

    waiting = states[0].no_traffic
    assert waiting is not None
    assert waiting.action is NoTrafficAction.PROMOTE
    assert waiting.since == T0 + timedelta(seconds=INTERVAL)
    assert waiting.deadline == waiting.since + timedelta(seconds=AFTER)
    assert "promoted at" in (states[0].message or "")
    before = [s for s in states if s.phase is Phase.PROMOTING]
    first = states.index(before[0]) + 1
    # Promoted in the first round at or after since + afterSeconds, never earlier.
    assert (first * INTERVAL) >= INTERVAL + AFTER
    assert (first - 1) * INTERVAL < INTERVAL + AFTER
    assert "rollout.noTraffic: Promote" in (before[0].message or "")
    assert before[0].no_traffic is None


def test_work_ends_the_idle_period_and_the_deadline_starts_again() -> None:
    rollout = policy()
    states = run([IDLE, IDLE, FEW, IDLE], rollout)

    assert states[1].no_traffic is not None
    assert states[2].no_traffic is None
    restarted = states[3].no_traffic
    assert restarted is not None
    assert restarted.since == T0 + timedelta(seconds=4 * INTERVAL)


def test_rounds_between_intervals_keep_the_idle_period() -> None:
    states = run([IDLE, None, None], policy())

    assert states[0].no_traffic == states[2].no_traffic


def test_wait_never_promotes_and_says_there_is_no_deadline() -> None:
    states = run([IDLE] * 20, policy(NoTrafficAction.WAIT))

    assert all(s.phase is Phase.PROGRESSING for s in states)
    last = states[-1].no_traffic
    assert last is not None
    assert last.deadline is None
    assert "no deadline" in last.message


def test_golden_without_a_golden_set_falls_back_to_waiting_and_says_so() -> None:
    states = run([IDLE] * 20, policy(NoTrafficAction.GOLDEN, golden=False))

    assert all(s.phase is Phase.PROGRESSING for s in states)
    last = states[-1].no_traffic
    assert last is not None
    assert last.action is NoTrafficAction.WAIT
    assert "no rollout.goldenSet is configured" in last.message


def test_golden_with_a_golden_set_leaves_the_verdict_to_it() -> None:
    states = run([IDLE] * 20, policy(NoTrafficAction.GOLDEN, golden=True))

    assert all(s.phase is Phase.PROGRESSING for s in states)
    last = states[-1].no_traffic
    assert last is not None
    assert last.action is NoTrafficAction.GOLDEN
    assert "judged on the golden set" in last.message


def test_a_canary_with_a_failed_interval_is_never_promoted_without_work() -> None:
    states = run([FAIL] + [IDLE] * 20, policy())

    assert all(s.phase is Phase.PROGRESSING for s in states)
    last = states[-1].no_traffic
    assert last is not None
    assert "not promoted with 1 failed interval" in last.message


def test_a_canary_not_ready_at_the_deadline_is_not_promoted() -> None:
    states = run([IDLE] * 20, policy(), canary_ready=False)

    # Not ready is the progress deadline's business (a rollback), never a promotion.
    assert all(s.phase is not Phase.PROMOTING for s in states)


@given(
    st.lists(
        st.sampled_from([IDLE, FEW, FAIL, None]),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(list(NoTrafficAction)),
)
def test_only_promote_promotes_without_passing_intervals(
    intervals: list[IntervalResult | None], action: NoTrafficAction
) -> None:
    # No interval passes here: any promotion is the noTraffic rule's, and only Promote makes one,
    # only after a full afterSeconds of idle intervals.
    states = run(intervals, policy(action, golden=True))

    for index, state in enumerate(states):
        if state.phase is Phase.PROMOTING:
            assert action is NoTrafficAction.PROMOTE
            judged = [i for i in intervals[: index + 1] if i is not None]
            assert FAIL not in judged
            assert judged[-1] is IDLE
            break


def test_the_idle_period_survives_the_status_round_trip() -> None:
    state = run([IDLE, IDLE], policy())[-1]

    assert state_of(status_of(state)).no_traffic == state.no_traffic
    status = status_of(state)
    assert status.no_traffic is not None
    assert status.no_traffic.deadline == T0 + timedelta(seconds=INTERVAL + AFTER)


def test_a_finished_rollout_shows_no_idle_period() -> None:
    state = replace(run([IDLE], policy())[-1], phase=Phase.PROMOTED)

    assert status_of(state).no_traffic is None


def test_the_spec_defaults_to_promote_after_ten_minutes() -> None:
    rollout = policy_of(RolloutSpec()).no_traffic

    assert rollout.action is NoTrafficAction.PROMOTE
    assert rollout.after_s == 600
    assert not rollout.golden_set


def test_a_changed_policy_applies_to_a_running_idle_period() -> None:
    promote = NoTrafficPolicy(action=NoTrafficAction.PROMOTE, after_s=AFTER)
    wait = NoTrafficPolicy(action=NoTrafficAction.WAIT, after_s=AFTER)
    first = track(None, judged_idle=True, now=T0, policy=promote)

    kept = track(first, judged_idle=None, now=T0 + timedelta(seconds=5), policy=wait)

    assert kept is not None
    assert kept.since == T0
    assert kept.deadline is None
