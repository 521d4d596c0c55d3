"""The canary verdict: each revision's metrics over one interval in, pass/fail/inconclusive out;
the run of interval results in, continue/promote/roll back out.

Pure: the caller scrapes the canary's and the stable's pods, turns the counter deltas of one
analysis interval into a `RevisionSample` per revision, keeps the `IntervalResult`s of the running
analysis (in the DocumentPipeline's status, so an operator restart resumes it), and applies the
`Verdict`.

Queue workers have no HTTP traffic to split: a canary Deployment takes jobs from the shared queue
in proportion to its replicas, so its own counters (claimed, retried, dead) and stage latencies
are a sample of real work. A verdict needs a minimum number of jobs: too few is inconclusive,
never a pass.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime


@dataclass(frozen=True)
class RolloutPolicy:
    """The thresholds of one analysis (from the DocumentPipeline's rollout spec)."""

    # Failed attempts (retried + dead) over jobs claimed, above which an interval fails.
    max_error_ratio: float = 0.1
    # The canary's stage p95 over the stable's, above which an interval fails.
    max_latency_ratio: float = 1.5
    # Jobs the canary must have claimed in an interval for it to count at all.
    min_jobs: int = 10
    # Consecutive passing intervals (inconclusive ones are skipped, not counted) that promote.
    success_intervals: int = 3
    # Failing intervals, in total over the analysis, that roll back.
    failure_limit: int = 2
    # Seconds the canary's pods get to become ready before the revision is rolled back.
    progress_deadline_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_ratio <= 1:
            raise ValueError(f"max_error_ratio must be within 0..1, got {self.max_error_ratio}")
        if self.max_latency_ratio < 1:
            raise ValueError(f"max_latency_ratio must be >= 1, got {self.max_latency_ratio}")
        for name in ("min_jobs", "success_intervals", "failure_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.progress_deadline_s <= 0:
            raise ValueError(f"progress_deadline_s must be > 0, got {self.progress_deadline_s}")


@dataclass(frozen=True)
class RevisionSample:
    """One revision's pods over one analysis interval: counter deltas and the latest readiness."""

    claimed: float
    retried: float
    dead: float
    # Highest stage p95 over the interval, seconds; None when no stage finished.
    stage_p95_s: float | None
    pods_desired: int
    pods_ready: int
    # Container restarts during the interval.
    restarts: int = 0

    @property
    def error_ratio(self) -> float:
        return (self.retried + self.dead) / self.claimed if self.claimed > 0 else 0.0


class IntervalOutcome(enum.StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class IntervalResult:
    outcome: IntervalOutcome
    reason: str


class Action(enum.StrEnum):
    CONTINUE = "Continue"
    PROMOTE = "Promote"
    ROLL_BACK = "RollBack"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def judge_interval(
    canary: RevisionSample, stable: RevisionSample | None, policy: RolloutPolicy
) -> IntervalResult:
    """Pass, fail or leave undecided one interval of the canary, against the stable revision."""
    if canary.restarts > 0:
        return IntervalResult(
            IntervalOutcome.FAILED, f"canary containers restarted {canary.restarts} time(s)"
        )
    if canary.pods_ready < canary.pods_desired:
        # Not ready is judged by the progress deadline (see `decide`), not per interval.
        return IntervalResult(
            IntervalOutcome.INCONCLUSIVE,
            f"{canary.pods_ready}/{canary.pods_desired} canary pods ready",
        )
    if canary.claimed < policy.min_jobs:
        return IntervalResult(
            IntervalOutcome.INCONCLUSIVE,
            f"canary claimed {canary.claimed:g} jobs,"
            f" fewer than the {policy.min_jobs} a verdict needs",
        )
    if canary.error_ratio > policy.max_error_ratio:
        return IntervalResult(
            IntervalOutcome.FAILED,
            f"canary error ratio {canary.error_ratio:.2f} above {policy.max_error_ratio:.2f}"
            f" ({canary.retried + canary.dead:g} of {canary.claimed:g} jobs failed)",
        )
    if (
        stable is not None
        and stable.stage_p95_s
        and canary.stage_p95_s is not None
        and canary.stage_p95_s > stable.stage_p95_s * policy.max_latency_ratio
    ):
        return IntervalResult(
            IntervalOutcome.FAILED,
            f"canary stage p95 {canary.stage_p95_s:.3f}s above {policy.max_latency_ratio:g}x"
            f" the stable's {stable.stage_p95_s:.3f}s",
        )
    return IntervalResult(
        IntervalOutcome.PASSED,
        f"canary error ratio {canary.error_ratio:.2f} over {canary.claimed:g} jobs",
    )


def decide(
    results: Sequence[IntervalResult],
    policy: RolloutPolicy,
    *,
    canary_age_s: float,
    canary_ready: bool,
) -> Verdict:
    """What to do with the canary after `results` (oldest first) of its running analysis."""
    failed = [r for r in results if r.outcome is IntervalOutcome.FAILED]
    if len(failed) >= policy.failure_limit:
        return Verdict(
            Action.ROLL_BACK,
            f"{len(failed)} failed analysis interval(s), limit {policy.failure_limit}:"
            f" {failed[-1].reason}",
        )
    if not canary_ready and canary_age_s >= policy.progress_deadline_s:
        return Verdict(
            Action.ROLL_BACK,
            f"canary pods not ready within the progress deadline of"
            f" {policy.progress_deadline_s:g}s",
        )
    conclusive = [r for r in results if r.outcome is not IntervalOutcome.INCONCLUSIVE]
    window = conclusive[-policy.success_intervals :]
    if len(window) == policy.success_intervals and all(
        r.outcome is IntervalOutcome.PASSED for r in window
    ):
        return Verdict(
            Action.PROMOTE,
            f"{policy.success_intervals} consecutive passing analysis interval(s)",
        )
    passing = 0
    for r in reversed(conclusive):
        if r.outcome is not IntervalOutcome.PASSED:
            break
        passing += 1
    last = results[-1].reason if results else "analysis started"
    return Verdict(
        Action.CONTINUE,
        f"{passing}/{policy.success_intervals} passing interval(s), {len(failed)}"
        f"/{policy.failure_limit} failed; last: {last}",
    )


# ---- Sampling: counters of one revision's pods at two times → one interval's RevisionSample ----


@dataclass(frozen=True)
class RevisionCounters:
    """One pod's counters for one revision at one time (cumulative, as scraped)."""

    claimed: float = 0.0
    retried: float = 0.0
    dead: float = 0.0
    # Stage → cumulative histogram buckets as (upper bound, count), ascending, +Inf last.
    stage_buckets: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Stage → total seconds spent in it (the histogram's _sum).
    stage_seconds: Mapping[str, float] = field(default_factory=dict)


def mean_job_seconds(pods: Sequence[RevisionCounters]) -> float | None:
    """Seconds one job of a revision takes, from its pods' stage histograms (the sum over stages
    of each stage's mean); None before any job finished a stage."""
    total = 0.0
    seen = False
    for stage in {s for p in pods for s in p.stage_seconds}:
        seconds = sum(p.stage_seconds.get(stage, 0.0) for p in pods)
        count = sum(p.stage_buckets[stage][-1][1] for p in pods if p.stage_buckets.get(stage))
        if count > 0:
            total += seconds / count
            seen = True
    return total if seen else None


def _delta(after: float, before: float | None) -> float:
    # A counter that went down was reset (the container restarted): count from zero.
    if before is None or after < before:
        return after
    return after - before


def quantile_from_buckets(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative histogram buckets (Prometheus' histogram_quantile rule)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                # Above the highest finite bucket: report that bound, as Prometheus does.
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def sample_interval(
    before: Mapping[str, RevisionCounters],
    after: Mapping[str, RevisionCounters],
    *,
    pods_desired: int,
    pods_ready: int,
    restarts: int,
) -> RevisionSample:
    """One revision's sample over an interval from per-pod counters at its start and end.

    A pod absent at the start counts from zero (it started during the interval).
    """
    claimed = retried = dead = 0.0
    merged: dict[str, dict[float, float]] = {}
    for pod, now in after.items():
        then = before.get(pod)
        claimed += _delta(now.claimed, then.claimed if then else None)
        retried += _delta(now.retried, then.retried if then else None)
        dead += _delta(now.dead, then.dead if then else None)
        for stage, buckets in now.stage_buckets.items():
            old = dict(then.stage_buckets.get(stage, ())) if then else {}
            into = merged.setdefault(stage, {})
            for bound, count in buckets:
                into[bound] = into.get(bound, 0.0) + _delta(count, old.get(bound))
    p95s = [quantile_from_buckets(sorted(buckets.items()), 0.95) for buckets in merged.values()]
    known = [p for p in p95s if p is not None]
    return RevisionSample(
        claimed=claimed,
        retried=retried,
        dead=dead,
        stage_p95_s=max(known) if known else None,
        pods_desired=pods_desired,
        pods_ready=pods_ready,
        restarts=restarts,
    )


# ---- Sizing: the fleet's worker count split between the stable and the canary Deployment ----


def split_replicas(total: int, *, canary_replicas: int | None, canary_percent: int) -> Split:
    """Stable and canary pods for a fleet of `total` workers during an analysis.

    The canary keeps its share as the fleet scales, has at least one pod (an analysis needs one,
    even when the fleet is at zero) and never the whole fleet: at least one stable worker stays
    whenever the fleet has two or more.
    """
    if canary_replicas is not None:
        wanted = canary_replicas
    else:
        wanted = max(1, round(total * canary_percent / 100))
    canary = max(1, min(wanted, total - 1)) if total >= 2 else 1
    return Split(stable=max(total - canary, 0 if total == 0 else 1), canary=canary)


@dataclass(frozen=True)
class Split:
    stable: int
    canary: int


# ---- The rollout state machine: what to run next, from the revisions and the analysis ----


class Strategy(enum.StrEnum):
    CANARY = "Canary"
    ROLLING = "Rolling"


class Phase(enum.StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


ACTIVE_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})
# Judged intervals kept in the status; every failure is kept (there are fewer than the limit).
KEPT_INTERVALS = 30


@dataclass(frozen=True)
class RecordedInterval:
    outcome: IntervalOutcome
    reason: str
    at: datetime


@dataclass(frozen=True)
class RolloutState:
    """The rollout's memory, kept in the DocumentPipeline's status (see model.RolloutStatus)."""

    phase: Phase | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    started_at: datetime | None = None
    canary_replicas: int | None = None
    failure_hold_s: float | None = None
    intervals: tuple[RecordedInterval, ...] = ()
    message: str | None = None
    rejected_revision: str | None = None
    rejected_reason: str | None = None
    rejected_at: datetime | None = None


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw this round."""

    desired_revision: str  # the revision the spec asks for
    stable_revision: str | None  # the stable Deployment's revision; None: it does not exist
    canary_ready: bool  # every canary pod exists and is ready
    stable_rolled: bool  # the stable Deployment runs only the desired revision, all available
    now: datetime
    strategy: Strategy = Strategy.CANARY
    paused: bool = False
    rollback_requested: bool = False
    interval: IntervalResult | None = None  # judged this round (only while analysing)
    stable_seconds_per_job: float | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to run: the stable Deployment's template and whether a canary runs beside it."""

    stable_takes_desired: bool
    run_canary: bool
    state: RolloutState
    event: Event | None = None
    # The manual rollback request has been acted on (or has nothing to act on): clear it.
    clear_rollback_request: bool = False


# A canary whose stable has not measured a job yet holds a failed slot this long.
DEFAULT_FAILURE_HOLD_S = 1.0
MIN_FAILURE_HOLD_S = 0.05


def failure_hold_seconds(stable_seconds_per_job: float | None) -> float:
    """DOCPIPE_FAILURE_HOLD_SECONDS for a canary: a failed job keeps its slot as long as a
    stable worker takes for a job, so a fast-failing canary claims no faster than its share."""
    if stable_seconds_per_job is None or stable_seconds_per_job <= 0:
        return DEFAULT_FAILURE_HOLD_S
    return round(max(stable_seconds_per_job, MIN_FAILURE_HOLD_S), 3)


def _keep(intervals: tuple[RecordedInterval, ...]) -> tuple[RecordedInterval, ...]:
    if len(intervals) <= KEPT_INTERVALS:
        return intervals
    recent = intervals[-KEPT_INTERVALS:]
    older_failures = tuple(
        i for i in intervals[:-KEPT_INTERVALS] if i.outcome is IntervalOutcome.FAILED
    )
    return older_failures + recent


def plan(state: RolloutState, seen: Observed, policy: RolloutPolicy) -> Plan:
    """The next rollout step: start, analyse, promote, finish or roll back a canary."""
    desired, stable = seen.desired_revision, seen.stable_revision
    active = state.phase in ACTIVE_PHASES and state.canary_revision == desired
    if stable is None:
        # Nothing runs yet: the first revision is not a rollout.
        return Plan(True, False, RolloutState(stable_revision=desired), clear_rollback_request=True)
    if state.phase is Phase.PROMOTING and active:
        if stable == desired and seen.stable_rolled:
            done = replace(
                state,
                phase=Phase.PROMOTED,
                stable_revision=desired,
                message=f"revision {desired} promoted: every worker runs it",
            )
            event = Event("Normal", "Promoted", done.message or "")
            return Plan(True, False, done, event, clear_rollback_request=True)
        # The canary keeps its capacity until the stable Deployment has rolled.
        return Plan(True, True, state, clear_rollback_request=True)
    if stable == desired:
        if state.phase in ACTIVE_PHASES:
            # The spec went back to the stable revision: the canary is simply dropped.
            dropped = replace(
                state,
                phase=None,
                stable_revision=stable,
                message=f"rollout of {state.canary_revision} abandoned: the spec is back at the"
                f" stable revision {stable}",
            )
            return Plan(
                True, False, dropped, Event("Normal", "RolloutAbandoned", dropped.message or "")
            )
        return Plan(
            True, False, replace(state, stable_revision=stable), clear_rollback_request=True
        )
    # The spec asks for a revision the stable Deployment does not run.
    if seen.strategy is Strategy.ROLLING:
        rolling = replace(state, phase=None, stable_revision=stable, canary_revision=None)
        return Plan(True, False, rolling, clear_rollback_request=True)
    if desired == state.rejected_revision:
        return Plan(False, False, state, clear_rollback_request=True)
    if not active:
        started = RolloutState(
            phase=Phase.PAUSED if seen.paused else Phase.PROGRESSING,
            stable_revision=stable,
            canary_revision=desired,
            started_at=seen.now,
            failure_hold_s=failure_hold_seconds(seen.stable_seconds_per_job),
            message=f"canary of revision {desired} started beside stable {stable}",
            rejected_revision=state.rejected_revision,
            rejected_reason=state.rejected_reason,
            rejected_at=state.rejected_at,
        )
        event = Event("Normal", "CanaryStarted", started.message or "")
        return Plan(False, True, started, event, clear_rollback_request=True)
    if seen.rollback_requested:
        return _roll_back(state, seen, "rollback requested by the docpipe.io/rollback annotation")
    if seen.paused:
        paused = replace(state, phase=Phase.PAUSED, message="analysis paused (spec.rollout.paused)")
        pause_event = (
            None
            if state.phase is Phase.PAUSED
            else Event("Normal", "RolloutPaused", paused.message or "")
        )
        return Plan(False, True, paused, pause_event)
    intervals = state.intervals
    if seen.interval is not None:
        recorded = RecordedInterval(seen.interval.outcome, seen.interval.reason, seen.now)
        intervals = _keep((*intervals, recorded))
    age = (seen.now - state.started_at).total_seconds() if state.started_at else 0.0
    verdict = decide(
        [IntervalResult(i.outcome, i.reason) for i in intervals],
        policy,
        canary_age_s=age,
        canary_ready=seen.canary_ready,
    )
    resumed = state.phase is Phase.PAUSED
    analysed = replace(state, phase=Phase.PROGRESSING, intervals=intervals, message=verdict.reason)
    if verdict.action is Action.ROLL_BACK:
        return _roll_back(analysed, seen, verdict.reason)
    if verdict.action is Action.PROMOTE:
        promoting = replace(
            analysed,
            phase=Phase.PROMOTING,
            message=f"promoting {desired}: {verdict.reason}; the stable Deployment is rolling",
        )
        return Plan(True, True, promoting, Event("Normal", "Promoting", promoting.message or ""))
    note = Event("Normal", "RolloutResumed", "analysis resumed") if resumed else None
    if (
        note is None
        and seen.interval is not None
        and seen.interval.outcome is IntervalOutcome.FAILED
    ):
        note = Event("Warning", "AnalysisFailed", seen.interval.reason)
    return Plan(False, True, analysed, note)


def _roll_back(state: RolloutState, seen: Observed, reason: str) -> Plan:
    revision = state.canary_revision
    rolled = replace(
        state,
        phase=Phase.ROLLED_BACK,
        message=f"revision {revision} rolled back: {reason}",
        rejected_revision=revision,
        rejected_reason=reason,
        rejected_at=seen.now,
    )
    event = Event("Warning", "RolledBack", rolled.message or "")
    return Plan(False, False, rolled, event, clear_rollback_request=True)
