"""The retry schedule: how long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about base * 2**(n-1), capped."""

    base_s: float = 2.0
    cap_s: float = 600.0
    # Share of the delay that is randomised, so that jobs failed together do not return together.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s <= 0:
            raise ValueError(f"base_s must be > 0, got {self.base_s}")
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s must be >= base_s ({self.base_s}), got {self.cap_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")


def backoff_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    A `retry_after` from the failing service is a floor: the job never returns before the
    service said it would be ready, even when that is longer than the cap.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    exponent = min(attempt - 1, 62)  # beyond this the cap applies anyway; avoids float overflow
    raw = min(policy.cap_s, policy.base_s * 2.0**exponent)
    draw = (rng or random).random()
    delay = raw * (1.0 - policy.jitter * draw)
    if retry_after is not None and retry_after > delay:
        return float(retry_after)
    return delay
