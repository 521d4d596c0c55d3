"""A canary without work: when an analysis interval ends with no job claimed by the canary, no
verdict on jobs is possible, and on an idle pipeline none ever would be. `spec.rollout.noTraffic`
says what happens then: promote the ready canary after a deadline, wait for work, or judge it on
the golden set. Pure: `rollout.plan` tracks the state from interval to interval and keeps it in
the status (`status.rollout.noTraffic`), so it survives an operator restart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class NoTrafficAction(enum.StrEnum):
    PROMOTE = "Promote"
    WAIT = "Wait"
    GOLDEN = "Golden"


@dataclass(frozen=True)
class NoTrafficPolicy:
    """spec.rollout.noTraffic, and whether a golden set is configured for `Golden`."""

    action: NoTrafficAction = NoTrafficAction.PROMOTE
    after_s: float = 600.0
    golden_set: bool = False

    def __post_init__(self) -> None:
        if self.after_s <= 0:
            raise ValueError(f"after_s must be > 0, got {self.after_s}")

    @property
    def effective(self) -> NoTrafficAction:
        """The action in force: `Golden` without a golden set falls back to waiting."""
        if self.action is NoTrafficAction.GOLDEN and not self.golden_set:
            return NoTrafficAction.WAIT
        return self.action


@dataclass(frozen=True)
class NoTrafficState:
    """Since when the canary has had no job, what is done about it, and until when."""

    action: NoTrafficAction
    since: datetime
    deadline: datetime | None
    message: str


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(since: datetime, policy: NoTrafficPolicy) -> NoTrafficState:
    """The state of a canary that has had no job since `since`, under `policy`."""
    action = policy.effective
    idle = f"the canary has had no job since {_at(since)}"
    if action is NoTrafficAction.PROMOTE:
        deadline = since + timedelta(seconds=policy.after_s)
        message = (
            f"{idle}: it is promoted at {_at(deadline)} unless work comes first "
            f"(rollout.noTraffic: Promote after {policy.after_s:g}s)"
        )
        return NoTrafficState(action, since, deadline, message)
    if action is NoTrafficAction.GOLDEN:
        message = f"{idle}: it is judged on the golden set (rollout.noTraffic: Golden); no deadline"
    elif policy.action is NoTrafficAction.GOLDEN:
        message = (
            f"{idle}: rollout.noTraffic is Golden but no rollout.goldenSet is configured, so it "
            "waits for work as with Wait; no deadline"
        )
    else:
        message = f"{idle}: it waits for work (rollout.noTraffic: Wait); no deadline"
    return NoTrafficState(action, since, None, message)


def track(
    previous: NoTrafficState | None,
    *,
    judged_idle: bool | None,
    now: datetime,
    policy: NoTrafficPolicy,
) -> NoTrafficState | None:
    """The state after a round: `judged_idle` is None when no interval was judged (the state holds,
    under the policy in force now), True when one ended without a job, False when the canary had
    work (or was not ready): the state ends."""
    if judged_idle is False:
        return None
    if judged_idle is None:
        return None if previous is None else describe(previous.since, policy)
    since = previous.since if previous is not None else now
    return describe(since, policy)


def promotion(
    state: NoTrafficState | None, now: datetime, *, canary_ready: bool, failed_intervals: int
) -> tuple[str | None, NoTrafficState | None]:
    """(the reason to promote now, or None; the state to keep). The deadline promotes only a
    ready canary with no failed interval: one that failed is never promoted without work."""
    if state is None or state.deadline is None or now < state.deadline:
        return None, state
    if failed_intervals or not canary_ready:
        why = f"{failed_intervals} failed interval(s)" if failed_intervals else "its pods not ready"
        held = NoTrafficState(
            state.action,
            state.since,
            state.deadline,
            f"the canary has had no job since {_at(state.since)}; the deadline "
            f"{_at(state.deadline)} has passed, but it is not promoted with {why}: it waits for "
            "work",
        )
        return None, held
    reason = (
        f"the canary had no job from {_at(state.since)} to the deadline {_at(state.deadline)} "
        "(rollout.noTraffic: Promote)"
    )
    return reason, None
