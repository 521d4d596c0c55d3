"""The fair claim's promise, on a pure model of its rule (tests/support/fair_claims.py; the
Postgres statement is checked against the same model in tests/integration/queue): no owner with
ready jobs waits more than one round of the other owners' shares."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fair_claims import ReadyJob, claim, job_order

OWNERS = list("abcdefghij")

backlogs = st.dictionaries(st.sampled_from(OWNERS), st.integers(1, 25), min_size=1)
# Between two claims: jobs that arrive, per owner.
arrivals = st.lists(st.dictionaries(st.sampled_from(OWNERS), st.integers(1, 3)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    backlog=backlogs,
    arriving=arrivals,
    limit=st.integers(1, 12),
    priorities=st.booleans(),
    cursor=st.sampled_from(["", *OWNERS]),
)
def test_no_owner_waits_more_than_one_round_of_the_others_shares(
    backlog: dict[str, int],
    arriving: list[dict[str, int]],
    limit: int,
    priorities: bool,
    cursor: str,
) -> None:
    ids = itertools.count(1)
    clock = itertools.count()

    def new_jobs(counts: dict[str, int]) -> list[ReadyJob]:
        now = next(clock)
        return [
            ReadyJob(next(ids), owner, (i % 3) if priorities else 0, now)
            for owner, n in counts.items()
            for i in range(n)
        ]

    ready = new_jobs(backlog)
    # For each owner that waits (has ready jobs, not served since): the claims in which every
    # other owner was served since the wait began.
    served_while_waiting: dict[str, Counter[str]] = {}
    claimed: list[int] = []
    step = 0
    while ready or step < len(arriving):
        if step < len(arriving):
            ready += new_jobs(arriving[step])
        step += 1
        if not ready:
            continue
        waiting = {j.owner for j in ready}
        result = claim(ready, cursor, limit)
        got = Counter(j.owner for j in result.jobs)
        assert len(result.jobs) == min(limit, len(ready))
        # The round's part: each owner at most its share, and in its own order.
        picked = result.jobs[: len(result.jobs) - result.filled]
        for owner in got:
            mine = [j for j in picked if j.owner == owner]
            assert len(mine) <= result.share
            assert (
                mine == sorted((j for j in ready if j.owner == owner), key=job_order)[: len(mine)]
            )
        if result.filled:
            # Slots go to the plain order only when the round's owners had no more to offer.
            assert len(result.round) == len(waiting)
        for owner in waiting:
            if got[owner]:
                served_while_waiting.pop(owner, None)
                continue
            others = served_while_waiting.setdefault(owner, Counter())
            others.update(o for o in got if o != owner)
            twice = [o for o, n in others.items() if n > 1]
            assert not twice, (
                f"{owner} waited while {twice} were served twice (limit {limit}, step {step})"
            )
        claimed += [j.id for j in result.jobs]
        taken = {j.id for j in result.jobs}
        ready = [j for j in ready if j.id not in taken]
        cursor = result.cursor
    assert not ready
    assert len(claimed) == len(set(claimed))


@given(backlog=backlogs, limit=st.integers(1, 12))
def test_owners_fewer_than_the_limit_are_all_served_by_every_claim(
    backlog: dict[str, int], limit: int
) -> None:
    ready = [
        ReadyJob(n, owner)
        for n, owner in enumerate(o for o, k in backlog.items() for _ in range(k))
    ]
    result = claim(ready, "", limit)
    if len(backlog) <= limit:
        assert {j.owner for j in result.jobs} == set(backlog)


def test_the_remainder_of_a_round_rotates() -> None:
    ready = [ReadyJob(i, owner) for i, owner in enumerate("xyz" * 10)]
    cursor, taken = "", Counter[str]()
    for _ in range(3):
        result = claim(ready, cursor, 4)
        taken.update(j.owner for j in result.jobs)
        ready = [j for j in ready if j not in result.jobs]
        cursor = result.cursor
    assert taken == {"x": 4, "y": 4, "z": 4}
