"""Resource quantities come back from the emulated API server in the canonical form a real one
stores (apimachinery's `resource.Quantity.String()`)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.quantities import QuantityError, canonical_quantity, parse_quantity


@pytest.mark.parametrize(
    ("given_value", "stored"),
    [
        ("0.5", "500m"),
        (0.5, "500m"),
        ("1000m", "1"),
        ("1500m", "1500m"),
        ("250m", "250m"),
        (2, "2"),
        ("1Gi", "1Gi"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5Ki", "512"),
        ("1000", "1k"),
        ("1500", "1500"),
        ("1e3", "1e3"),
        ("12e6", "12e6"),
        ("0.1m", "100u"),
        ("-1.5", "-1500m"),
        ("0", "0"),
        ("0Gi", "0"),
    ],
)
def test_a_quantity_is_stored_in_its_canonical_form(given_value: str | float, stored: str) -> None:
    assert canonical_quantity(given_value) == stored


def test_a_binary_quantity_with_a_fractional_byte_is_written_in_decimal() -> None:
    # 1.1Gi is 1181116006.4 bytes: no binary suffix leaves an integer.
    assert canonical_quantity("1.1Gi") == "1181116006400m"


def test_a_value_finer_than_a_nano_unit_rounds_up() -> None:
    assert canonical_quantity("0.0000000001") == "1n"


@pytest.mark.parametrize("text", ["abc", "1Xi", "1.2.3", "", "Gi", "1 Gi", "--1", True])
def test_a_value_that_is_not_a_quantity_is_refused_with_the_servers_pattern(text: object) -> None:
    with pytest.raises(QuantityError, match=r"quantities must match the regular expression"):
        canonical_quantity(text)  # type: ignore[arg-type]


_QUANTITIES = st.builds(
    lambda number, scale, suffix: f"{number / 10**scale}{suffix}",
    st.integers(min_value=-(10**9), max_value=10**9),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "e3", "e-2"]),
)


@given(_QUANTITIES)
def test_the_canonical_form_keeps_the_value_and_is_its_own_canonical_form(text: str) -> None:
    value, _ = parse_quantity(text)
    canonical = canonical_quantity(text)
    assert parse_quantity(canonical)[0] == value
    assert canonical_quantity(canonical) == canonical


@given(st.integers(min_value=1, max_value=2**40))
def test_a_whole_number_of_bytes_in_binary_uses_the_largest_exact_suffix(count: int) -> None:
    canonical = canonical_quantity(f"{count}Ki")
    value, notation = parse_quantity(canonical)
    assert value == Fraction(count * 1024)
    assert notation == "BinarySI"
    number = int(canonical.rstrip("KMGTPEi"))
    assert number % 1024 != 0 or canonical.endswith("Ei")
