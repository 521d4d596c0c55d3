"""The canary's share of the jobs (docpipe_queue.shares): a job's bucket, the buckets of a weight,
and who may claim a job while a canary runs. The SQL applies the same rule; the integration test
tests/integration/queue/test_canary_shares.py checks that it agrees."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docpipe_queue.shares import (
    BUCKETS,
    Candidate,
    bucket_of,
    buckets_for,
    canary_may_claim,
    in_share,
    stable_may_claim,
)

ids = st.integers(1, 2**62)
weights = st.floats(0.0001, 1.0, allow_nan=False)


def test_consecutive_ids_visit_every_bucket_once_per_cycle() -> None:
    assert sorted(bucket_of(i) for i in range(12_345, 12_345 + BUCKETS)) == list(range(BUCKETS))


@settings(max_examples=300, deadline=None)
@given(start=ids, n=st.integers(20, 3000), weight=st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.5]))
def test_any_run_of_consecutive_jobs_puts_its_weight_in_the_share_within_three_jobs(
    start: int, n: int, weight: float
) -> None:
    buckets = buckets_for(weight)
    in_it = sum(in_share(i, buckets) for i in range(start, start + n))
    assert abs(in_it - weight * n) <= 3


@given(weight=weights)
def test_a_weight_covers_its_fraction_of_the_buckets_and_at_least_one(weight: float) -> None:
    buckets = buckets_for(weight)
    assert 1 <= buckets <= BUCKETS
    assert abs(buckets - weight * BUCKETS) <= 0.5 or buckets == 1


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.01, float("nan")])
def test_a_weight_out_of_range_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="canary weight"):
        buckets_for(weight)


@settings(max_examples=300)
@given(
    job_id=ids,
    weight=weights,
    waited=st.floats(0, 1000),
    hold=st.floats(0.001, 500),
    handed_back=st.booleans(),
)
def test_with_a_live_canary_every_job_has_exactly_one_claimer_until_the_hold(
    job_id: int, weight: float, waited: float, hold: float, handed_back: bool
) -> None:
    buckets = buckets_for(weight)
    job = Candidate(job_id, waited, handed_back)
    canary = canary_may_claim(job, buckets)
    stable = stable_may_claim(job, buckets, hold)
    assert canary or stable, "a job nobody may claim would be stranded"
    if waited < hold:
        assert not (canary and stable)
    if handed_back:
        assert stable, "a job a canary failed goes to the stable workers"
        assert not canary, "a canary never retries a canary's failure"


@given(job_id=ids, waited=st.floats(0, 1000), handed_back=st.booleans())
def test_without_a_live_canary_the_stable_workers_claim_every_job(
    job_id: int, waited: float, handed_back: bool
) -> None:
    assert stable_may_claim(Candidate(job_id, waited, handed_back), None, 60.0)


def test_a_job_of_the_share_goes_to_the_stable_workers_once_it_waited_the_hold() -> None:
    buckets = buckets_for(0.2)
    job_id = next(i for i in range(1, 100) if in_share(i, buckets))
    assert not stable_may_claim(Candidate(job_id, 59.9), buckets, 60.0)
    assert stable_may_claim(Candidate(job_id, 60.0), buckets, 60.0)
