"""Kubernetes quantities in the canonical form the API server stores and returns.

The API server canonicalises every quantity it stores (`cpu: 0.5` comes back as `500m`, `1000m`
as `1`, `2048Mi` as `2Gi`). The rounds compare what they render with what is stored, so they
render the canonical form: otherwise a spec written `0.5` would look like drift and be patched
every round. The rules are apimachinery's `Quantity.CanonicalizeBytes`: the input's format
(binary suffix, decimal suffix, or exponent) is kept; a decimal value is written as an integer
times a power of 1000 with every factor of ten taken out; a binary one as an integer times the
largest power of 1024 that divides it (below 1024, or with a fraction of a unit, it is written in
decimal form); precision beyond nano is rounded up.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Decimal, localcontext

_PATTERN = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_BINARY_SUFFIX = {power: suffix for suffix, power in _BINARY.items()}
_NANO = Decimal("1e-9")


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def canonical(value: int | str) -> str:
    """The quantity `value` as the API server would return it."""
    text = str(value).strip()
    found = _PATTERN.match(text)
    if found is None:
        raise QuantityError(f"{value!r} is not a quantity (e.g. 500m, 2, 1Gi)")
    with localcontext() as context:
        context.prec = 60
        number = Decimal(found["number"])
        if found["binary"]:
            amount = number * Decimal(1024) ** _BINARY[found["binary"]]
            form = "binary"
        elif found["exponent"] is not None:
            amount = number.scaleb(int(found["exponent"]))
            form = "exponent"
        else:
            amount = number.scaleb(_DECIMAL[found["decimal"] or ""])
            form = "decimal"
        # Finer than nano is rounded up, away from zero (as apimachinery does).
        amount = amount.quantize(_NANO, rounding=ROUND_UP)
        if amount == 0:
            return "0"
        if form == "binary" and (-1024 < amount < 1024 or amount != amount.to_integral_value()):
            form = "decimal"
        if form == "binary":
            return _binary(int(amount))
        return _decimal(amount, exponent_form=form == "exponent")


def _binary(amount: int) -> str:
    power = 0
    while power < 6 and amount % 1024 == 0:
        amount //= 1024
        power += 1
    return f"{amount}{_BINARY_SUFFIX.get(power, '')}"


def _decimal(amount: Decimal, *, exponent_form: bool) -> str:
    sign, digits, exponent = amount.normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)))
    # A multiple of 3 at or below the exponent: the mantissa takes the extra zeros.
    shift = exponent % 3
    mantissa *= 10**shift
    exponent -= shift
    if not exponent_form and exponent > 18:
        # Beyond the largest suffix (E): the mantissa takes the rest.
        mantissa *= 10 ** (exponent - 18)
        exponent = 18
    text = f"{'-' if sign else ''}{mantissa}"
    if exponent_form:
        return text if exponent == 0 else f"{text}e{exponent}"
    return f"{text}{_DECIMAL_SUFFIX[exponent]}"
