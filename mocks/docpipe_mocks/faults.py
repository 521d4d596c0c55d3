"""Fault injection for the mock services: the configuration, and the decision for one request."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Service = Literal["llamaparse", "openai"]
SERVICES: tuple[Service, ...] = ("llamaparse", "openai")


class ServiceFaults(BaseModel):
    """Faults injected into one service's requests; the rates are probabilities per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0, le=600_000.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_limit_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    retry_after_seconds: int = Field(default=1, ge=0, le=86_400)
    hang_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    malformed_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _rates_fit_in_one(self) -> Self:
        # Each request gets at most one fault, so the rates partition one probability.
        total = self.error_rate + self.rate_limit_rate + self.hang_rate + self.malformed_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                "error_rate + rate_limit_rate + hang_rate + malformed_rate must not exceed 1, "
                f"got {total:g}"
            )
        return self


class FaultConfig(BaseModel):
    """Faults of every mock service, and the seed that makes their sequence reproducible."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    llamaparse: ServiceFaults = ServiceFaults()
    openai: ServiceFaults = ServiceFaults()

    def for_service(self, service: Service) -> ServiceFaults:
        """Return the faults configured for `service`."""
        return self.llamaparse if service == "llamaparse" else self.openai


class FaultKind(enum.StrEnum):
    NONE = "none"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    HANG = "hang"
    MALFORMED_JSON = "malformed_json"
    WRONG_SHAPE = "wrong_shape"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request: wait `delay_seconds`, then answer normally or fail as `kind`."""

    kind: FaultKind
    delay_seconds: float
    retry_after_seconds: int | None = None


def decide_fault(faults: ServiceFaults, roll: float) -> Fault:
    """Decide the fault for one request from a uniform `roll` in [0, 1)."""
    delay = faults.latency_ms / 1000.0
    bands = (
        (FaultKind.ERROR, faults.error_rate),
        (FaultKind.RATE_LIMIT, faults.rate_limit_rate),
        (FaultKind.HANG, faults.hang_rate),
    )
    start = 0.0
    for kind, rate in bands:
        if roll < start + rate:
            retry_after = faults.retry_after_seconds if kind is FaultKind.RATE_LIMIT else None
            return Fault(kind, delay, retry_after)
        start += rate
    if roll < start + faults.malformed_rate:
        # Half of the malformed band is not JSON at all, half is JSON of the wrong shape.
        in_band = (roll - start) / faults.malformed_rate
        kind = FaultKind.MALFORMED_JSON if in_band < 0.5 else FaultKind.WRONG_SHAPE
        return Fault(kind, delay)
    return Fault(FaultKind.NONE, delay)


class FaultInjector:
    """The current fault configuration of a running mock, with one seeded RNG per service."""

    def __init__(self, config: FaultConfig) -> None:
        self.configure(config)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration and restart every service's random sequence from the seed."""
        self._config = config
        # A string seed is hashed with sha512 by `random`, so the sequences are stable across runs.
        self._rngs = {service: random.Random(f"{config.seed}:{service}") for service in SERVICES}

    def next_fault(self, service: Service) -> Fault:
        """Draw the fault for the next request to `service`."""
        return decide_fault(self._config.for_service(service), self._rngs[service].random())
