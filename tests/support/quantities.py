"""Kubernetes resource quantities as the API server stores them: parsed, then written back in
their canonical form (`resource.Quantity.String()` in apimachinery).

The canonical form keeps the notation family of the input (binary suffixes, decimal suffixes,
or an `e` exponent) and picks the largest unit that leaves an integer: `0.5` → `500m`,
`1000m` → `1`, `1.5Gi` → `1536Mi`, `1000` → `1k`, `1e3` → `1e3`. A binary value below 1024 or
with a fractional byte is written in decimal (`0.5Ki` → `512`). Precision stops at nano units;
finer values round up, as the API server rounds them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_EXPONENT = re.compile(r"^[eE][-+]?[0-9]+$")

BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15}
DECIMAL_SUFFIXES["E"] = 18
_DECIMAL_BY_EXPONENT = {e: s for s, e in DECIMAL_SUFFIXES.items()}
_BINARY_BY_EXPONENT = {e: s for s, e in BINARY_SUFFIXES.items()}


class QuantityError(ValueError):
    """Not a quantity; the message is the API server's."""

    def __init__(self) -> None:
        super().__init__(f"quantities must match the regular expression '{QUANTITY_PATTERN}'")


def parse_quantity(text: str | int | float) -> tuple[Fraction, str]:
    """The exact value of a quantity and its notation: "BinarySI", "DecimalSI" or
    "DecimalExponent". Raise QuantityError for anything else."""
    if isinstance(text, bool):
        raise QuantityError()
    if isinstance(text, int):
        return Fraction(text), "DecimalSI"
    if isinstance(text, float):
        return Fraction(Decimal(repr(text))), "DecimalSI"
    match = re.match(QUANTITY_PATTERN, text)
    if match is None or not _NUMBER.match(match[1]):
        raise QuantityError()
    number, suffix = Fraction(Decimal(match[1])), match[2]
    if suffix in BINARY_SUFFIXES:
        value, notation = number * 2 ** BINARY_SUFFIXES[suffix], "BinarySI"
    elif suffix in DECIMAL_SUFFIXES:
        value, notation = number * Fraction(10) ** DECIMAL_SUFFIXES[suffix], "DecimalSI"
    elif _EXPONENT.match(suffix):
        value, notation = number * Fraction(10) ** int(suffix[1:]), "DecimalExponent"
    else:
        raise QuantityError()
    # Nano units are the finest the server keeps; it rounds finer values up (away from zero).
    nanos = value * 10**9
    if nanos.denominator != 1:
        rounded = math.ceil(abs(nanos))
        value = Fraction(rounded if value > 0 else -rounded, 10**9)
    return value, notation


def canonical_quantity(text: str | int | float) -> str:
    """The canonical form the API server answers with for a quantity."""
    value, notation = parse_quantity(text)
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if notation == "BinarySI":
        if magnitude < 1024 or magnitude.denominator != 1:
            notation = "DecimalSI"
        else:
            number, exponent = int(magnitude), 0
            while number % 1024 == 0 and exponent < 60:
                number, exponent = number // 1024, exponent + 10
            return f"{sign}{number}{_BINARY_BY_EXPONENT.get(exponent, '')}"
    # Decimal: the largest exponent that is a multiple of 3 and leaves an integer mantissa.
    exponent = -9
    while exponent < 18 and (magnitude / Fraction(10) ** (exponent + 3)).denominator == 1:
        exponent += 3
    mantissa = magnitude / Fraction(10) ** exponent
    assert mantissa.denominator == 1
    if notation == "DecimalExponent":
        suffix = f"e{exponent}" if exponent else ""
    else:
        suffix = _DECIMAL_BY_EXPONENT[exponent]
    return f"{sign}{mantissa.numerator}{suffix}"
