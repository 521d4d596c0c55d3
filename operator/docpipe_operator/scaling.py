"""The autoscaling decision: a metrics snapshot, the policy and recent history in, replicas out.

Everything here is pure: the caller scrapes the workers (or queries Prometheus), keeps the
`ScalingHistory` between calls (in memory or in an annotation), and applies the `Decision`.

The sizing rule, in slots (one slot runs one job; a worker has `concurrency` of them):

    slots needed = max(jobs in flight, arrival rate × seconds per job)
                   + ready jobs × seconds per job / target queue wait
    replicas     = ceil(slots needed / concurrency)

The first term keeps up with the arrivals; the second drains the backlog within the target wait.
With no job ready, jobs in flight are averaged over the arrival window: one scrape's count is
noisy, and the scale-down stabilization would hold its peaks.
Jobs in flight measure the arrival rate only while slots are free (Little's law: in flight = rate
× job time): once every slot is busy they stop rising however fast jobs arrive. So the arrival
rate is also measured directly, as jobs completed plus the growth of jobs in flight and of the
backlog over the last `ARRIVAL_WINDOW_SECONDS` (every job that arrived is done, running or still
ready), and the larger of the two wins.

Seconds per job is measured from the succeeded counters (busy slot-seconds / jobs done over the
last minute); until a job has been measured it is taken to be the target wait itself, which sizes
the fleet to give every ready job a slot at once, and the measured arrival rate is not used (times
an unmeasured job time it would say nothing).

The provider quota's ceiling: replicas beyond what the quota can feed only wait for budget.

    quota jobs/s    = min over quotas (limit per minute / 60 / budget used per job)
    worker jobs/s   = concurrency / working slot-seconds per job
    ceiling         = ceil(quota jobs/s / worker jobs/s - 0.5) + 1 (one of headroom)

(the - 0.5 keeps measurement noise around a whole number of workers from moving the ceiling).

Budget used per job is the increase of the workers' `docpipe_quota_used` counters over their
succeeded jobs; working slot-seconds per job are the busy slot-seconds less the time spent waiting
for quota budget (`docpipe_quota_wait_seconds`), per job: what a worker could do unhindered. The
binding quota is the one that feeds the fewest jobs (requests or tokens per minute). Until a job
and its budget have been measured there is no ceiling, so the reaction to a new backlog (and
0 → 1) is never held back by it. The ceiling caps the recommendation (never below minReplicas) and
scales away pods above it at once: waiting pods are not noise the stabilization should smooth.
A quota held for lack of credit (`insufficient_quota`) keeps only the workers that keep its work
visible: minReplicas, or 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from docpipe_operator.model import ScalingSpec

# Within ±10 % of the current size, keep the current size: chasing noise costs pod churn.
TOLERANCE = 0.1
# Job time is measured over this many seconds of counter samples (or 3 intervals, if longer).
RATE_WINDOW_SECONDS = 60.0
# The arrival rate is measured over this many seconds (or 2 intervals, if longer): short enough to
# follow a rising load, long enough to span several completions.
ARRIVAL_WINDOW_SECONDS = 30.0
# Replicas above what the quota feeds: one, so a slowing worker does not starve the quota.
QUOTA_HEADROOM = 1
# The quota's need in workers is rounded up only past this fraction: a quota that feeds exactly 3
# workers measures as 2.97 or 3.03, and the ceiling should not flap between 4 and 5 with it. The
# ceiling still exceeds the need by at least half a worker.
QUOTA_ROUNDING = 0.5
# Working time per job is never taken as less than this share of the busy time: the wait counter
# and the in-flight gauge are read at slightly different times.
MIN_WORKING_SHARE = 0.05


@dataclass(frozen=True, order=True)
class QuotaKey:
    """One provider budget in one unit: `docpipe_quota_*`'s provider, quota and unit labels."""

    provider: str
    quota: str
    unit: str

    def __str__(self) -> str:
        return f"{self.provider} {self.unit} (quota {self.quota})"


@dataclass(frozen=True)
class PodMetrics:
    """One worker pod as last seen: its readiness and, if its scrape succeeded, its metrics."""

    name: str
    ready: bool
    jobs_in_flight: float | None = None  # None: the scrape failed
    jobs_succeeded: float | None = None  # counter, summed over its label sets
    quota_used: Mapping[QuotaKey, float] = field(default_factory=dict)  # counters
    quota_wait_seconds: float = 0.0  # counter, summed over the pod's quotas

    @property
    def scraped(self) -> bool:
        """Whether this pod's metrics were read."""
        return self.jobs_in_flight is not None and self.jobs_succeeded is not None


@dataclass(frozen=True)
class QueueMetrics:
    """The pipeline's queue as any worker reports it (every worker exports the same gauges)."""

    ready_jobs: float
    oldest_ready_age_seconds: float = 0.0


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one round of scraping found; `queue` is None when no worker reported it."""

    pods: tuple[PodMetrics, ...] = ()
    queue: QueueMetrics | None = None
    # Per quota and unit, the limit per minute in force (the highest any worker reports).
    quota_limits: Mapping[QuotaKey, float] = field(default_factory=dict)
    # Quotas ("provider/quota") a worker reports held for lack of credit (insufficient_quota).
    quota_held: tuple[str, ...] = ()


@dataclass(frozen=True)
class CounterSample:
    """Per-pod counter and gauge values at one time, for measuring rates."""

    at: float
    succeeded: Mapping[str, float]
    in_flight: Mapping[str, float]
    ready: float | None = None  # ready jobs in the queue; None when no queue metrics were read
    quota_used: Mapping[str, Mapping[QuotaKey, float]] = field(default_factory=dict)  # per pod
    quota_wait: Mapping[str, float] = field(default_factory=dict)  # per pod, wait-seconds counter


@dataclass(frozen=True)
class Recommendation:
    """The replica count the load called for at one time (before step and stabilization)."""

    at: float
    replicas: int


@dataclass(frozen=True)
class ScalingHistory:
    """What the decision remembers between calls; start with `ScalingHistory()`."""

    samples: tuple[CounterSample, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    last_busy_at: float | None = None  # last time a job was ready or in flight (or unknown)
    seconds_per_job: float | None = None  # last measured busy slot-seconds per job
    quota_per_job: Mapping[QuotaKey, float] = field(default_factory=dict)  # last measured
    working_seconds_per_job: float | None = None  # last measured, quota waits left out


@dataclass(frozen=True)
class QuotaCeiling:
    """The most workers the binding quota can feed, and the figures that say so."""

    replicas: int
    binding: QuotaKey
    limit_per_minute: float
    used_per_job: float
    quota_jobs_per_second: float
    worker_jobs_per_second: float

    def describe(self) -> str:
        """The figures, for reasons, conditions and Events."""
        unit = self.binding.unit
        return (
            f"{self.binding.provider} quota {self.binding.quota}: {self.limit_per_minute:g} "
            f"{unit}/min at {self.used_per_job:.3g} {unit}/job feeds "
            f"{self.quota_jobs_per_second:.3g} jobs/s, one worker does "
            f"{self.worker_jobs_per_second:.3g} jobs/s: at most {self.replicas} workers "
            f"({self.replicas - QUOTA_HEADROOM} + {QUOTA_HEADROOM} of headroom)"
        )


@dataclass(frozen=True)
class Decision:
    """How many workers to run, why (for status and Events), and the figures behind it."""

    desired: int
    reason: str
    current: int
    recommendation: int
    metrics_complete: bool
    queue_depth: int | None = None
    oldest_ready_age_seconds: float | None = None
    throughput_per_second: float | None = None
    seconds_per_job: float | None = None
    jobs_in_flight: float | None = None
    arrival_per_second: float | None = None
    quota_ceiling: QuotaCeiling | None = None  # None: no quota measured (or pinned)
    quota_limited: bool = False  # the ceiling (or a held quota) keeps the fleet below the load
    quota_held: tuple[str, ...] = ()  # quotas held for lack of credit

    @property
    def changed(self) -> bool:
        """Whether the decision asks for a different number of workers."""
        return self.desired != self.current


@dataclass(frozen=True)
class _Load:
    """The figures of one snapshot the sizing rule needs."""

    complete: bool
    problem: str  # why the metrics are not complete, or ""
    in_flight: float
    backlog: float
    oldest_age: float | None
    idle: bool


def decide_replicas(
    snapshot: MetricsSnapshot | None,
    policy: ScalingSpec,
    *,
    current: int,
    concurrency: int,
    history: ScalingHistory,
    now: float,
    pinned: int | None = None,
) -> tuple[Decision, ScalingHistory]:
    """Decide the worker count for `now` from the snapshot (None: scraping failed entirely).

    Returns the decision and the history to pass to the next call.
    """
    load = _measure_load(snapshot)
    samples = _keep_samples(history.samples, snapshot, now, policy)
    throughput, measured = _measure_rates(samples)
    seconds_per_job = measured if measured is not None else history.seconds_per_job
    fallback = float(policy.target_queue_wait_seconds)
    job_seconds = seconds_per_job if seconds_per_job is not None else fallback

    last_busy_at = history.last_busy_at if load.idle and history.last_busy_at is not None else now
    idle_for = now - last_busy_at
    zero_allowed = (
        policy.scale_to_zero.enabled
        and policy.min_replicas == 0
        and load.idle
        and idle_for >= policy.scale_to_zero.idle_seconds
    )

    arrival = _measure_arrival(samples, policy)
    # Jobs in flight averaged over the arrival window, not as last scraped: one scrape's count
    # is noisy (Poisson arrivals, uneven job times), and the scale-down stabilization keeps the
    # highest recommendation of its window, so a noisy figure would hold its peaks.
    # An idle fleet (nothing ready, nothing in flight) has no work and no arrivals now, whatever
    # the window still remembers: jobs arriving would be ready or in flight. Counting them would
    # keep replicas up for the length of the window and delay scale-to-zero.
    # With jobs ready, every slot is busy and the count is the fleet's capacity, not noise: the
    # average would lag a fleet that is still growing and shrink it under a standing backlog.
    if load.idle:
        absorbing = 0.0
    elif load.backlog > 0:
        absorbing = load.in_flight
    else:
        absorbing = _mean_in_flight(samples, policy, load.in_flight)
    if arrival is not None and seconds_per_job is not None and not load.idle:
        absorbing = max(absorbing, arrival * seconds_per_job)
    slots = absorbing + load.backlog * job_seconds / policy.target_queue_wait_seconds
    raw = slots / concurrency
    wanted = _recommend(raw, current, policy, load, zero_allowed)
    recommendation = wanted

    measured_use, measured_working = _measure_quota_use(samples)
    quota_per_job = {**history.quota_per_job, **measured_use}
    working = measured_working if measured_working is not None else history.working_seconds_per_job
    held = snapshot.quota_held if snapshot is not None and pinned is None else ()
    ceiling = None
    if snapshot is not None and pinned is None:
        ceiling = quota_ceiling(snapshot.quota_limits, quota_per_job, working, concurrency)
    cap = policy.max_replicas
    if held:
        # Waiting does not cure a lack of credit: keep only the workers that keep it visible.
        cap = policy.min_replicas if policy.min_replicas > 0 else min(current, 1)
    elif ceiling is not None:
        cap = max(ceiling.replicas, policy.min_replicas)
    recommendation = min(recommendation, cap)
    if pinned is not None:
        recommendation = pinned

    window_start = now - policy.scale_down_stabilization_seconds
    recent = (
        *(r for r in history.recommendations if r.at > window_start),
        Recommendation(now, recommendation),
    )
    desired, action = _apply_limits(recommendation, current, policy, recent, zero_allowed, pinned)
    limited = pinned is None and (held or ceiling is not None) and max(wanted, desired) > cap
    if limited and desired > cap:
        # The stabilization keeps pods for a load that may come back; pods above what the quota
        # feeds would only wait for it, so they go now.
        desired = cap
    if held and pinned is None and desired != current and action != "zero":
        action = "held"
    elif (
        limited and desired == cap and action in ("up", "up-limited", "steady", "down", "down-held")
    ):
        action = "quota-up" if desired > current else "quota-down" if desired < current else "quota"

    needed = math.ceil(raw - 1e-9)
    if action in ("up", "up-limited") and needed < desired <= policy.min_replicas:
        # The load alone asks for fewer: the floor is the cause (a raised minReplicas).
        action = "up-min"
    elif (
        action == "down"
        and desired >= policy.max_replicas
        and (needed > desired or not load.complete)
    ):
        # The load asks for more (or is unknown, which never scales down): the ceiling is the
        # cause (a lowered maxReplicas).
        action = "down-max"
    figures = _describe_load(load, raw, job_seconds, seconds_per_job is not None, arrival)
    reason = _reason(action, current, desired, figures, policy, idle_for, load.complete)
    if held and action != "zero":
        reason = _held_reason(action, current, desired, held, figures)
    elif limited and ceiling is not None and action.startswith("quota"):
        reason = _quota_reason(action, current, desired, ceiling, figures)
    elif limited and ceiling is not None:
        # On the way to the ceiling (maxScaleUpStep, the stabilization window): say where it is.
        reason = f"{reason}; provider quota: {ceiling.describe()}"
    decision = Decision(
        desired=desired,
        reason=reason,
        current=current,
        recommendation=recommendation,
        metrics_complete=load.complete,
        queue_depth=None if snapshot is None or snapshot.queue is None else round(load.backlog),
        oldest_ready_age_seconds=load.oldest_age,
        throughput_per_second=throughput,
        seconds_per_job=seconds_per_job,
        jobs_in_flight=load.in_flight if snapshot is not None else None,
        arrival_per_second=arrival,
        quota_ceiling=ceiling,
        quota_limited=limited,
        quota_held=held,
    )
    new_history = replace(
        history,
        samples=samples,
        recommendations=recent,
        last_busy_at=last_busy_at,
        seconds_per_job=seconds_per_job,
        quota_per_job=quota_per_job,
        working_seconds_per_job=working,
    )
    return decision, new_history


def _measure_load(snapshot: MetricsSnapshot | None) -> _Load:
    if snapshot is None:
        return _Load(False, "no worker metrics", 0.0, 0.0, None, idle=False)
    scraped = [p for p in snapshot.pods if p.scraped]
    in_flight = sum(p.jobs_in_flight or 0.0 for p in scraped)
    # A not-ready pod that does not answer is starting or stopping; a ready one should answer.
    unscraped = tuple(p.name for p in snapshot.pods if p.ready and not p.scraped)
    queue = snapshot.queue
    backlog = max(queue.ready_jobs, 0.0) if queue is not None else 0.0
    problems = []
    if unscraped:
        problems.append(f"{len(unscraped)} ready worker(s) not scraped ({', '.join(unscraped)})")
    if queue is None:
        problems.append("no queue metrics")
    complete = not problems
    return _Load(
        complete=complete,
        problem="; ".join(problems),
        in_flight=in_flight,
        backlog=backlog,
        oldest_age=queue.oldest_ready_age_seconds if queue is not None else None,
        idle=complete and backlog == 0 and in_flight == 0,
    )


def _keep_samples(
    samples: tuple[CounterSample, ...],
    snapshot: MetricsSnapshot | None,
    now: float,
    policy: ScalingSpec,
) -> tuple[CounterSample, ...]:
    window = max(RATE_WINDOW_SECONDS, 3.0 * policy.interval_seconds)
    kept = tuple(s for s in samples if s.at >= now - window and s.at < now)
    if snapshot is None:
        return kept
    scraped = [p for p in snapshot.pods if p.scraped]
    sample = CounterSample(
        at=now,
        succeeded={p.name: p.jobs_succeeded or 0.0 for p in scraped},
        in_flight={p.name: p.jobs_in_flight or 0.0 for p in scraped},
        ready=snapshot.queue.ready_jobs if snapshot.queue is not None else None,
        quota_used={p.name: dict(p.quota_used) for p in scraped if p.quota_used},
        quota_wait={p.name: p.quota_wait_seconds for p in scraped},
    )
    return (*kept, sample)


def _increase(before: float, after: float) -> float:
    """A counter's increase; one that went down was reset (the container restarted)."""
    return after - before if after >= before else after


def _measure_quota_use(
    samples: tuple[CounterSample, ...],
) -> tuple[dict[QuotaKey, float], float | None]:
    """Per quota, budget used per succeeded job; and working slot-seconds per job (busy
    slot-seconds less the time spent waiting for quota budget). Empty/None until a job is done."""
    done = busy = waited = 0.0
    used: dict[QuotaKey, float] = {}
    for before, after in itertools.pairwise(samples):
        dt = after.at - before.at
        for pod, value in after.succeeded.items():
            if pod not in before.succeeded:
                continue
            done += _increase(before.succeeded[pod], value)
            busy += (before.in_flight.get(pod, 0.0) + after.in_flight.get(pod, 0.0)) / 2 * dt
            if pod in before.quota_wait and pod in after.quota_wait:
                waited += _increase(before.quota_wait[pod], after.quota_wait[pod])
            previous = before.quota_used.get(pod, {})
            for key, counter in after.quota_used.get(pod, {}).items():
                if key in previous:
                    used[key] = used.get(key, 0.0) + _increase(previous[key], counter)
    if done < 1:
        return {}, None
    per_job = {key: amount / done for key, amount in used.items() if amount > 0}
    working = max(busy - waited, MIN_WORKING_SHARE * busy) / done if busy > 0 else None
    return per_job, working


def quota_ceiling(
    limits: Mapping[QuotaKey, float],
    used_per_job: Mapping[QuotaKey, float],
    working_seconds_per_job: float | None,
    concurrency: int,
) -> QuotaCeiling | None:
    """The most workers the binding quota can feed; None until a quota's use has been measured."""
    if working_seconds_per_job is None or working_seconds_per_job <= 0:
        return None
    worker_rate = concurrency / working_seconds_per_job
    binding: tuple[float, QuotaKey] | None = None
    for key, limit in sorted(limits.items()):
        per_job = used_per_job.get(key)
        if per_job is None or per_job <= 0 or limit <= 0:
            continue  # a quota this pipeline's jobs do not draw on binds nothing
        jobs_per_second = limit / 60.0 / per_job
        if binding is None or jobs_per_second < binding[0]:
            binding = (jobs_per_second, key)
    if binding is None:
        return None
    jobs_per_second, key = binding
    return QuotaCeiling(
        replicas=max(1, math.ceil(jobs_per_second / worker_rate - QUOTA_ROUNDING)) + QUOTA_HEADROOM,
        binding=key,
        limit_per_minute=limits[key],
        used_per_job=used_per_job[key],
        quota_jobs_per_second=jobs_per_second,
        worker_jobs_per_second=worker_rate,
    )


def _measure_arrival(samples: tuple[CounterSample, ...], policy: ScalingSpec) -> float | None:
    """Jobs arriving per second over the arrival window: done + Δ in flight + Δ ready, per second.

    Only consecutive samples that both read the queue count; a pod seen in one of two samples
    contributes no completions to that step (its counter has no baseline).
    """
    if not samples:
        return None
    window = max(ARRIVAL_WINDOW_SECONDS, 2.0 * policy.interval_seconds)
    recent = [s for s in samples if s.at >= samples[-1].at - window]
    arrived = 0.0
    span = 0.0
    for before, after in itertools.pairwise(recent):
        if before.ready is None or after.ready is None:
            continue
        done = 0.0
        for pod, value in after.succeeded.items():
            if pod in before.succeeded:
                previous = before.succeeded[pod]
                done += value - previous if value >= previous else value
        growth = sum(after.in_flight.values()) - sum(before.in_flight.values())
        arrived += done + growth + after.ready - before.ready
        span += after.at - before.at
    if span <= 0:
        return None
    return max(arrived / span, 0.0)


def _mean_in_flight(
    samples: tuple[CounterSample, ...], policy: ScalingSpec, latest: float
) -> float:
    """Jobs in flight, averaged over the arrival window."""
    if not samples:
        return latest
    window = max(ARRIVAL_WINDOW_SECONDS, 2.0 * policy.interval_seconds)
    recent = [sum(s.in_flight.values()) for s in samples if s.at >= samples[-1].at - window]
    return sum(recent) / len(recent)


def _measure_rates(samples: tuple[CounterSample, ...]) -> tuple[float | None, float | None]:
    """Fleet throughput (jobs/s) and busy slot-seconds per job over the samples, if measurable."""
    if len(samples) < 2:
        return None, None
    done = 0.0
    busy = 0.0
    for before, after in itertools.pairwise(samples):
        dt = after.at - before.at
        for pod, value in after.succeeded.items():
            if pod not in before.succeeded:
                continue
            previous = before.succeeded[pod]
            # A counter that went down was reset (the container restarted): count from zero.
            done += value - previous if value >= previous else value
            busy += (before.in_flight.get(pod, 0.0) + after.in_flight.get(pod, 0.0)) / 2 * dt
    span = samples[-1].at - samples[0].at
    throughput = done / span if span > 0 else None
    seconds_per_job = busy / done if done >= 1 and busy > 0 else None
    return throughput, seconds_per_job


def _recommend(
    raw: float, current: int, policy: ScalingSpec, load: _Load, zero_allowed: bool
) -> int:
    """The replica count the load calls for, within the policy's floor and ceiling."""
    if current > 0 and abs(raw / current - 1) <= TOLERANCE:
        wanted = current
    else:
        wanted = math.ceil(raw - 1e-9)
    if policy.min_replicas > 0:
        floor = policy.min_replicas
    elif current == 0:
        # At zero, only ready jobs bring a worker back; nothing else would be seen.
        floor = 1 if load.backlog > 0 else 0
    else:
        floor = 0 if zero_allowed else 1
    if not load.complete:
        # Missing metrics are no evidence of less work: never recommend fewer than now.
        floor = max(floor, current)
    return min(max(wanted, floor), policy.max_replicas)


def _apply_limits(
    recommendation: int,
    current: int,
    policy: ScalingSpec,
    recent: tuple[Recommendation, ...],
    zero_allowed: bool,
    pinned: int | None,
) -> tuple[int, str]:
    """Turn a recommendation into the replicas to run now, and name the rule that decided."""
    if pinned is not None:
        return pinned, "pinned"
    if recommendation > current:
        stepped = min(recommendation, current + policy.max_scale_up_step)
        desired = max(stepped, policy.min_replicas)
        return desired, "up-limited" if desired < recommendation else "up"
    if recommendation < current:
        if zero_allowed and recommendation == 0:
            # The idle period is the stabilization for scale-to-zero.
            return 0, "zero"
        highest = max(r.replicas for r in recent)
        desired = min(max(min(current, highest), policy.min_replicas), policy.max_replicas)
        if desired == current:
            return desired, "down-held"
        return desired, "down"
    return current, "steady"


def _describe_load(
    load: _Load, raw: float, job_seconds: float, measured: bool, arrival: float | None
) -> str:
    if load.problem and load.in_flight == 0 and load.backlog == 0:
        return load.problem
    parts = [
        f"load needs {math.ceil(raw - 1e-9)} workers",
        f"{load.in_flight:g} jobs in flight, {load.backlog:g} ready",
    ]
    if arrival is not None and measured:
        parts.append(f"{arrival:.2g} arriving/s")
    if load.oldest_age is not None and load.backlog > 0:
        parts.append(f"oldest waiting {load.oldest_age:.0f}s")
    timing = f"jobs take {job_seconds:.1f}s" if measured else f"assuming {job_seconds:g}s per job"
    parts.append(timing)
    text = ", ".join(parts)
    return f"{text}; {load.problem}" if load.problem else text


def _reason(
    action: str,
    current: int,
    desired: int,
    figures: str,
    policy: ScalingSpec,
    idle_for: float,
    complete: bool,
) -> str:
    target = f"to keep the queue wait under {policy.target_queue_wait_seconds}s"
    if action == "pinned":
        return f"spec.replicas pins {desired} workers; autoscaling is off ({figures})"
    if action == "zero":
        return f"scaling {current} → 0: no work for {idle_for:.0f}s ({figures})"
    if action == "up":
        return f"scaling up {current} → {desired} {target} ({figures})"
    if action == "up-min":
        return (
            f"scaling up {current} → {desired}: spec.scaling.minReplicas is "
            f"{policy.min_replicas} ({figures})"
        )
    if action == "down-max":
        return (
            f"scaling down {current} → {desired}: spec.scaling.maxReplicas is "
            f"{policy.max_replicas} ({figures})"
        )
    if action == "up-limited":
        return (
            f"scaling up {current} → {desired}, at most {policy.max_scale_up_step} at a time "
            f"(maxScaleUpStep), {target} ({figures})"
        )
    if action == "down":
        return f"scaling down {current} → {desired}: less work ({figures})"
    if action == "down-held":
        return (
            f"holding {current}: load would allow fewer, but scale-down waits for "
            f"{policy.scale_down_stabilization_seconds}s of lower load ({figures})"
        )
    if not complete:
        return f"holding {current} workers until metrics are complete ({figures})"
    return f"steady at {current} workers ({figures})"


def _quota_reason(
    action: str, current: int, desired: int, ceiling: QuotaCeiling, figures: str
) -> str:
    quota = ceiling.describe()
    if action == "quota-up":
        return (
            f"scaling up {current} → {desired}, capped by the provider quota: {quota} ({figures})"
        )
    if action == "quota-down":
        return (
            f"scaling down {current} → {desired}: more workers would only wait for the provider "
            f"quota: {quota} ({figures})"
        )
    return f"holding {current} workers at the provider quota's ceiling: {quota} ({figures})"


def _held_reason(
    action: str, current: int, desired: int, held: tuple[str, ...], figures: str
) -> str:
    quotas = ", ".join(held)
    why = (
        f"the provider refuses work for lack of credit (insufficient_quota: {quotas}); jobs wait "
        "until billing restores it"
    )
    if action == "held" and desired < current:
        return f"scaling down {current} → {desired}: {why} ({figures})"
    if action == "held":
        return f"scaling {current} → {desired} (minReplicas): {why} ({figures})"
    return f"holding {current} workers: {why} ({figures})"


def pod_deletion_costs(pods: Iterable[PodMetrics]) -> dict[str, int]:
    """The `controller.kubernetes.io/pod-deletion-cost` of each pod: its jobs in flight.

    A scale-down then removes idle pods first; a pod whose scrape failed counts as busy as the
    busiest, since an unknown load is no evidence of idleness.
    """
    pods = list(pods)
    known = {p.name: round(p.jobs_in_flight) for p in pods if p.jobs_in_flight is not None}
    busiest = max(known.values(), default=0)
    return {p.name: known.get(p.name, busiest) for p in pods}
