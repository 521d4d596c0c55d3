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

from docpipe_operator import no_traffic
from docpipe_operator.no_traffic import NoTrafficPolicy, NoTrafficState
from docpipe_operator.quality import (
    GoldenFigures,
    GoldenPolicy,
    OutputCounters,
    OutputPolicy,
    OutputSample,
    judge_golden,
    judge_output,
    sample_output,
)


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
    # The output analysis' thresholds (spec.rollout.outputAnalysis).
    output: OutputPolicy = field(default_factory=OutputPolicy)
    # The golden set's thresholds (spec.rollout.goldenSet; disabled without one).
    golden: GoldenPolicy = field(default_factory=GoldenPolicy)
    # What a canary without work comes to (spec.rollout.noTraffic).
    no_traffic: NoTrafficPolicy = field(default_factory=NoTrafficPolicy)

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
    # What the revision wrote over the interval; None when it was not measured.
    output: OutputSample | None = None
    # The canary workers' latest golden set comparison; None before one.
    golden: GoldenFigures | None = None

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
    # The canary was ready and claimed no job at all: no traffic (see no_traffic.py).
    idle: bool = False


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
    golden = judge_golden(canary.golden, policy.golden)
    if golden.regression is not None:
        # The golden set needs no traffic: it fails an interval however few jobs came.
        return IntervalResult(IntervalOutcome.FAILED, golden.regression)
    if (
        canary.claimed < policy.min_jobs
        and golden.judged
        and policy.no_traffic.effective is no_traffic.NoTrafficAction.GOLDEN
    ):
        # rollout.noTraffic: Golden: too few jobs to judge, the golden set judges instead.
        return IntervalResult(
            IntervalOutcome.PASSED,
            f"canary claimed {canary.claimed:g} jobs (fewer than {policy.min_jobs});"
            f" {golden.summary}",
            idle=canary.claimed == 0,
        )
    if canary.claimed < policy.min_jobs:
        return IntervalResult(
            IntervalOutcome.INCONCLUSIVE,
            f"canary claimed {canary.claimed:g} jobs,"
            f" fewer than the {policy.min_jobs} a verdict needs",
            idle=canary.claimed == 0,
        )
    if canary.error_ratio > policy.max_error_ratio:
        return IntervalResult(
            IntervalOutcome.FAILED,
            f"canary error ratio {canary.error_ratio:.2f} above {policy.max_error_ratio:.2f}"
            f" ({canary.retried + canary.dead:g} of {canary.claimed:g} jobs failed)",
        )
    output = None
    if canary.output is not None:
        output = judge_output(
            canary.output, stable.output if stable is not None else None, policy.output
        )
        if output.regression is not None:
            return IntervalResult(IntervalOutcome.FAILED, output.regression)
        if not output.judged and policy.output.enabled and canary.output.documents > 0:
            # Jobs enough but documents too few to judge what they wrote: never a pass. (A
            # worker that reports no output at all, an image older than the counters, is judged
            # on its jobs alone.)
            return IntervalResult(IntervalOutcome.INCONCLUSIVE, output.summary)
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
    summary = f"; {output.summary}" if output is not None else ""
    if golden.judged:
        summary += f"; {golden.summary}"
    return IntervalResult(
        IntervalOutcome.PASSED,
        f"canary error ratio {canary.error_ratio:.2f} over {canary.claimed:g} jobs{summary}",
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
    # What the revision wrote (documents, characters, chunks, vectors).
    output: OutputCounters = field(default_factory=OutputCounters)
    # The golden set comparison this pod exports for the revision (canary pods only).
    golden: GoldenFigures | None = None


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
    output = sample_output(
        {pod: c.output for pod, c in before.items()}, {pod: c.output for pod, c in after.items()}
    )
    return RevisionSample(
        claimed=claimed,
        retried=retried,
        dead=dead,
        stage_p95_s=max(known) if known else None,
        pods_desired=pods_desired,
        pods_ready=pods_ready,
        restarts=restarts,
        output=output,
        golden=next((c.golden for c in after.values() if c.golden is not None), None),
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
class Undo:
    """The undo of a rolled-back revision: its documents re-enqueued for the stable revision."""

    revision: str
    reprocessed_documents: int
    at: datetime | None = None


@dataclass(frozen=True)
class RolloutState:
    """The rollout's memory, kept in the DocumentPipeline's status (see model.RolloutStatus)."""

    phase: Phase | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    started_at: datetime | None = None
    canary_replicas: int | None = None
    # The canary's share of the jobs (DOCPIPE_CANARY_WEIGHT), fixed when it starts.
    canary_weight: float | None = None
    intervals: tuple[RecordedInterval, ...] = ()
    message: str | None = None
    rejected_revision: str | None = None
    rejected_reason: str | None = None
    rejected_at: datetime | None = None
    last_rollback: Undo | None = None
    # Set while the canary has had no job (spec.rollout.noTraffic).
    no_traffic: NoTrafficState | None = None


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
    # The share of the jobs a canary started this round gets (see canary_weight).
    canary_weight: float = 0.2


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


def canary_weight(split: Split, *, canary_replicas: int | None, canary_percent: int) -> float:
    """The canary's share of the jobs (DOCPIPE_CANARY_WEIGHT): `canaryPercent` as a fraction;
    with a fixed `canaryReplicas`, the canary's share of the workers in `split`."""
    if canary_replicas is None:
        return canary_percent / 100
    pods = split.canary + split.stable
    return round(split.canary / pods, 4) if pods else 1.0


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
            canary_weight=seen.canary_weight,
            message=f"canary of revision {desired} started beside stable {stable}",
            rejected_revision=state.rejected_revision,
            rejected_reason=state.rejected_reason,
            rejected_at=state.rejected_at,
            last_rollback=state.last_rollback,
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
    idle = no_traffic.track(
        state.no_traffic,
        judged_idle=None if seen.interval is None else seen.interval.idle,
        now=seen.now,
        policy=policy.no_traffic,
    )
    if verdict.action is Action.CONTINUE:
        failed = sum(1 for i in intervals if i.outcome is IntervalOutcome.FAILED)
        promote, idle = no_traffic.promotion(
            idle, seen.now, canary_ready=seen.canary_ready, failed_intervals=failed
        )
        if promote is not None:
            verdict = Verdict(Action.PROMOTE, promote)
        elif idle is not None:
            analysed = replace(analysed, message=f"{verdict.reason}; {idle.message}")
    analysed = replace(analysed, no_traffic=idle)
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


# ---- Undo: the output of a rolled-back revision goes back to the stable revision ----


# Past the pods' termination grace period, a pod of the rejected revision still listed (a lost
# node, a stuck finalizer) no longer holds the undo back beyond this margin.
UNDO_GRACE_MARGIN_S = 5.0


def undo_due(
    state: RolloutState, *, revision_pods_left: bool, now: datetime, grace_s: float
) -> str | None:
    """The rejected revision whose documents are to be re-enqueued now: once per rejection, after
    its last pod is gone (a terminating pod may still finish a job and write chunks), or at the
    latest the pods' termination grace period after the rejection (the kubelet has killed them)."""
    revision = state.rejected_revision
    if revision is None:
        return None
    if state.last_rollback is not None and state.last_rollback.revision == revision:
        return None
    if revision_pods_left:
        since = (now - state.rejected_at).total_seconds() if state.rejected_at else 0.0
        if since < grace_s + UNDO_GRACE_MARGIN_S:
            return None
    return revision
