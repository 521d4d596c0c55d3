"""A pure model of the fair claim's rule (ADR 0006, docpipe_queue.queries.CLAIM), for the tests:
the property test checks the rule's promise on it, the Postgres test checks the statement
against it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ReadyJob:
    id: int
    owner: str
    priority: int = 0
    # Seconds, in the order jobs became ready.
    run_after: int = 0


def job_order(job: ReadyJob) -> tuple[int, int, int]:
    """One owner's jobs: priority first, then age, then id (the order of jobs_ready)."""
    return (-job.priority, job.run_after, job.id)


@dataclass(frozen=True)
class Claim:
    jobs: list[ReadyJob]  # in turn order
    cursor: str  # the rotation's next cursor
    share: int  # ceil(limit / owners in the round): what each owner was offered at most
    round: list[str]  # the owners of the round, in rotation order
    filled: int  # jobs taken in the plain order after the round (slots it left free)


def claim(
    ready: Sequence[ReadyJob], cursor: str, limit: int, idle_owners: Iterable[str] = ()
) -> Claim:
    """What one claim takes from `ready` (every job ready, none locked). `idle_owners` have
    queued jobs, none ready yet: they take a place in the round and offer nothing."""
    queued = {j.owner for j in ready} | set(idle_owners)
    owners = sorted(queued, key=lambda o: (o <= cursor, o))[:limit]
    if not owners:
        return Claim([], cursor, 0, [], 0)
    share = math.ceil(limit / len(owners))
    offers = []
    for pos, owner in enumerate(owners):
        mine = sorted((j for j in ready if j.owner == owner), key=job_order)[:share]
        offers += [(rank, pos, job) for rank, job in enumerate(mine)]
    picked = [job for _, _, job in sorted(offers)[:limit]]
    taken = {j.id for j in picked}
    rest = sorted((j for j in ready if j.id not in taken), key=job_order)[: limit - len(picked)]
    next_cursor = picked[-1].owner if picked else cursor
    return Claim(picked + rest, next_cursor, share, owners, len(rest))
