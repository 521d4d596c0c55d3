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
from collections.abc import Sequence
from dataclasses import dataclass


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


class Outcome(enum.StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class IntervalResult:
    outcome: Outcome
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
            Outcome.FAILED, f"canary containers restarted {canary.restarts} time(s)"
        )
    if canary.pods_ready < canary.pods_desired:
        # Not ready is judged by the progress deadline (see `decide`), not per interval.
        return IntervalResult(
            Outcome.INCONCLUSIVE,
            f"{canary.pods_ready}/{canary.pods_desired} canary pods ready",
        )
    if canary.claimed < policy.min_jobs:
        return IntervalResult(
            Outcome.INCONCLUSIVE,
            f"canary claimed {canary.claimed:g} jobs,"
            f" fewer than the {policy.min_jobs} a verdict needs",
        )
    if canary.error_ratio > policy.max_error_ratio:
        return IntervalResult(
            Outcome.FAILED,
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
            Outcome.FAILED,
            f"canary stage p95 {canary.stage_p95_s:.3f}s above {policy.max_latency_ratio:g}x"
            f" the stable's {stable.stage_p95_s:.3f}s",
        )
    return IntervalResult(
        Outcome.PASSED,
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
    failed = [r for r in results if r.outcome is Outcome.FAILED]
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
    conclusive = [r for r in results if r.outcome is not Outcome.INCONCLUSIVE]
    window = conclusive[-policy.success_intervals :]
    if len(window) == policy.success_intervals and all(r.outcome is Outcome.PASSED for r in window):
        return Verdict(
            Action.PROMOTE,
            f"{policy.success_intervals} consecutive passing analysis interval(s)",
        )
    passing = 0
    for r in reversed(conclusive):
        if r.outcome is not Outcome.PASSED:
            break
        passing += 1
    last = results[-1].reason if results else "analysis started"
    return Verdict(
        Action.CONTINUE,
        f"{passing}/{policy.success_intervals} passing interval(s), {len(failed)}"
        f"/{policy.failure_limit} failed; last: {last}",
    )
