"""The canary's share of a pipeline's jobs (migration 0011), as pure functions: which bucket a job
falls in, how many buckets a weight covers, and who may claim a job while a canary runs.

`queries.CLAIM` applies the same rule in SQL (`queries.SHARE_FILTER`); the integration tests
check that the two agree. A job's bucket is a multiplicative hash of its id: consecutive ids
step through the bucket space by 6181/10000, close to the golden ratio, so any run of n
consecutive jobs puts within 3 of `weight * n` in the share (a random hash would be off by
about sqrt(n * weight) instead: 20 % of 100 jobs would vary by ±4, not ±3, and worse in
relative terms as the sample grows shorter).
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKETS = 10_000
# Coprime to BUCKETS (odd, not a multiple of 5): every run of BUCKETS consecutive ids visits each
# bucket exactly once.
STEP = 6181


def bucket_of(job_id: int) -> int:
    """The job's bucket, 0 to BUCKETS - 1; the SQL is ((id % 10000) * 6181) % 10000."""
    return (job_id % BUCKETS) * STEP % BUCKETS


def buckets_for(weight: float) -> int:
    """How many buckets a canary of `weight` (0 < weight <= 1) claims: at least one."""
    if not 0 < weight <= 1:
        raise ValueError(f"a canary weight must be > 0 and <= 1, got {weight}")
    return max(1, min(BUCKETS, int(weight * BUCKETS + 0.5)))


def in_share(job_id: int, buckets: int) -> bool:
    """Whether the job belongs to the share of a canary that claims `buckets` buckets."""
    return bucket_of(job_id) < buckets


@dataclass(frozen=True, slots=True)
class Candidate:
    """A ready job as the claim sees it."""

    job_id: int
    # Seconds since the job became ready (its run_after).
    waited_s: float
    # The job's last attempt was a canary's failure, handed back (jobs.handed_back_by is set).
    handed_back: bool = False


def canary_may_claim(job: Candidate, buckets: int) -> bool:
    """A canary worker claims the jobs of its share, except those a canary already failed."""
    return in_share(job.job_id, buckets) and not job.handed_back


def stable_may_claim(job: Candidate, live_buckets: int | None, hold_s: float) -> bool:
    """A stable worker claims every job outside a live canary's share; inside it, the jobs a
    canary handed back and those that have waited longer than the hold (the canary is gone,
    stuck or at capacity). `live_buckets` None: no live canary, every job."""
    if live_buckets is None or not in_share(job.job_id, live_buckets):
        return True
    return job.handed_back or job.waited_s >= hold_s
