"""Quantities rendered as the API server stores them, so that a spec written `cpu: 0.5` is not
drift the rounds patch every time (the API server returns `500m`)."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe_operator.quantities import QuantityError, canonical
from tests.support.quantities import canonical_quantity
from tests.unit.test_operator_rendering import container, deployment, make_spec

# (written, as the API server returns it): apimachinery's Quantity.String().
CASES = [
    ("0.5", "500m"),
    ("1000m", "1"),
    ("1.5", "1500m"),
    ("1000", "1k"),
    ("1500", "1500"),
    ("1024", "1024"),
    ("2048Mi", "2Gi"),
    ("1.5Gi", "1536Mi"),
    ("0.5Ki", "512"),  # a binary value below 1Ki is written in decimal form
    ("2e3", "2e3"),
    ("12e0", "12"),
    ("129e6", "129e6"),
    ("129M", "129M"),
    ("128974848", "128974848"),
    ("0.0000000001", "1n"),  # finer than nano: rounded up
    ("0Mi", "0"),
    (2, "2"),
    ("-0.5", "-500m"),
    ("5000E", "5000E"),  # beyond the largest suffix
]


@pytest.mark.parametrize(("written", "stored"), CASES)
def test_a_quantity_renders_as_the_api_server_stores_it(written: int | str, stored: str) -> None:
    assert canonical(written) == stored


@pytest.mark.parametrize("bad", ["", "1.2.3", "5 Gi", "Gi", "1Xi", "0x10", "1e"])
def test_what_is_not_a_quantity_is_refused(bad: str) -> None:
    with pytest.raises(QuantityError):
        canonical(bad)


def _value(text: str) -> Decimal:
    binary = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
    decimal = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
    if text[-2:] in binary:
        return Decimal(text[:-2]) * Decimal(1024) ** binary[text[-2:]]
    if "e" in text:
        number, exponent = text.split("e")
        return Decimal(number).scaleb(int(exponent))
    if text[-1] in decimal:
        return Decimal(text[:-1]).scaleb(decimal[text[-1]])
    return Decimal(text)


SUFFIXES = ["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "e3", "e-3"]


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(SUFFIXES),
)
def test_canonical_keeps_the_value_and_is_stable(mantissa: int, places: int, suffix: str) -> None:
    written = f"{Decimal(mantissa).scaleb(-places):f}{suffix}"
    stored = canonical(written)
    assert canonical(stored) == stored
    with localcontext() as context:
        context.prec = 60
        assert _value(stored) == _value(written).quantize(Decimal("1e-9"))


def test_the_worker_container_carries_canonical_resources() -> None:
    resources = {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": 2}}
    spec = make_spec(worker={"image": "docpipe:1", "resources": resources})
    rendered = container(deployment(spec))["resources"]
    assert rendered == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2"}}


@given(
    st.integers(min_value=-(10**13), max_value=10**13),
    st.integers(min_value=0, max_value=12),
    st.sampled_from([*SUFFIXES, "n", "u", "Ti", "e6", "E"]),
)
def test_the_operator_renders_what_the_emulated_api_server_returns(
    mantissa: int, places: int, suffix: str
) -> None:
    # Two implementations written apart (the operator's, and the emulator's in tests/support):
    # the rounds see no drift only if they agree.
    written = f"{Decimal(mantissa).scaleb(-places):f}{suffix}"
    assert canonical(written) == canonical_quantity(written)
