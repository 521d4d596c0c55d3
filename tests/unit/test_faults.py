from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from docpipe_mocks.faults import (
    Fault,
    FaultConfig,
    FaultInjector,
    FaultKind,
    ServiceFaults,
    decide_fault,
)


def test_no_faults_configured_lets_every_request_through() -> None:
    assert decide_fault(ServiceFaults(), 0.0) == Fault(FaultKind.NONE, 0.0)
    assert decide_fault(ServiceFaults(), 0.999) == Fault(FaultKind.NONE, 0.0)


def test_latency_is_added_to_every_request_whatever_its_fault() -> None:
    faults = ServiceFaults(latency_ms=250, error_rate=0.5)

    assert decide_fault(faults, 0.1).delay_seconds == 0.25
    assert decide_fault(faults, 0.9).delay_seconds == 0.25


@pytest.mark.parametrize(
    ("roll", "kind"),
    [
        (0.05, FaultKind.ERROR),
        (0.15, FaultKind.RATE_LIMIT),
        (0.25, FaultKind.HANG),
        (0.32, FaultKind.MALFORMED_JSON),
        (0.38, FaultKind.WRONG_SHAPE),
        (0.45, FaultKind.NONE),
    ],
)
def test_the_roll_falls_into_one_fault_band(roll: float, kind: FaultKind) -> None:
    faults = ServiceFaults(error_rate=0.1, rate_limit_rate=0.1, hang_rate=0.1, malformed_rate=0.1)

    assert decide_fault(faults, roll).kind is kind


def test_a_rate_limit_carries_the_configured_retry_after() -> None:
    faults = ServiceFaults(rate_limit_rate=1.0, retry_after_seconds=7)

    assert decide_fault(faults, 0.5) == Fault(FaultKind.RATE_LIMIT, 0.0, retry_after_seconds=7)


@given(
    rates=st.lists(st.integers(min_value=0, max_value=250), min_size=4, max_size=4),
)
def test_each_fault_happens_at_its_configured_rate(rates: list[int]) -> None:
    # Rates in thousandths over an even grid of 1000 rolls: each band gets exactly its share.
    error, rate_limit, hang, malformed = (rate / 1000 for rate in rates)
    faults = ServiceFaults(
        error_rate=error, rate_limit_rate=rate_limit, hang_rate=hang, malformed_rate=malformed
    )

    kinds = [decide_fault(faults, (step + 0.5) / 1000).kind for step in range(1000)]

    assert kinds.count(FaultKind.ERROR) == rates[0]
    assert kinds.count(FaultKind.RATE_LIMIT) == rates[1]
    assert kinds.count(FaultKind.HANG) == rates[2]
    malformed_count = kinds.count(FaultKind.MALFORMED_JSON) + kinds.count(FaultKind.WRONG_SHAPE)
    assert malformed_count == rates[3]


def test_a_rate_above_one_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        FaultConfig.model_validate({"openai": {"error_rate": 1.5}})

    assert caught.value.errors()[0]["loc"] == ("openai", "error_rate")


def test_rates_summing_above_one_are_refused() -> None:
    with pytest.raises(ValidationError, match="must not exceed 1"):
        ServiceFaults(error_rate=0.6, hang_rate=0.6)


def test_an_unknown_fault_field_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        FaultConfig.model_validate({"llamaparse": {"eror_rate": 0.1}})

    assert caught.value.errors()[0]["loc"] == ("llamaparse", "eror_rate")


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValidationError):
        ServiceFaults(latency_ms=-1)


def _draw(injector: FaultInjector, count: int) -> list[FaultKind]:
    return [injector.next_fault("openai").kind for _ in range(count)]


HALF_ERRORS = FaultConfig(seed=42, openai=ServiceFaults(error_rate=0.5))


def test_the_same_seed_gives_the_same_sequence_of_faults() -> None:
    assert _draw(FaultInjector(HALF_ERRORS), 50) == _draw(FaultInjector(HALF_ERRORS), 50)


def test_another_seed_gives_another_sequence_of_faults() -> None:
    other = HALF_ERRORS.model_copy(update={"seed": 43})

    assert _draw(FaultInjector(HALF_ERRORS), 50) != _draw(FaultInjector(other), 50)


def test_reconfiguring_restarts_the_sequence_from_the_seed() -> None:
    injector = FaultInjector(HALF_ERRORS)
    first = _draw(injector, 20)

    injector.configure(HALF_ERRORS)

    assert _draw(injector, 20) == first


def test_requests_to_one_service_do_not_shift_the_other_services_faults() -> None:
    config = FaultConfig(
        llamaparse=ServiceFaults(error_rate=0.5), openai=ServiceFaults(error_rate=0.5)
    )
    quiet = FaultInjector(config)
    busy = FaultInjector(config)
    for _ in range(7):
        busy.next_fault("llamaparse")

    assert _draw(busy, 30) == _draw(quiet, 30)


def test_faults_apply_only_to_their_service() -> None:
    injector = FaultInjector(FaultConfig(llamaparse=ServiceFaults(error_rate=1.0)))

    assert injector.next_fault("llamaparse").kind is FaultKind.ERROR
    assert injector.next_fault("openai").kind is FaultKind.NONE
