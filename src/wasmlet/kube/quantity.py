"""Kubernetes resource quantities (``500m``, ``1Gi``, ``128M``, ``1e3``) as exact decimals.

Follows ``k8s.io/apimachinery/pkg/api/resource`` (``ParseQuantity``)::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= <number> | "+" <number> | "-" <number>
    <number>          ::= <digits> | <digits> "." <digits> | <digits> "." | "." <digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>

As there, a value with more precision than a nano-unit is rounded up (away from zero) to the
next nano-unit ("if you want some resources, you should get some resources"), and a value with
a binary suffix is capped at 2^63-1. Unlike Go, a number needs at least one digit (Go reads
``""``-less degenerate forms such as ``"-"`` or ``"."`` as zero).
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, ROUND_UP, Context, Decimal, localcontext

_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)", re.DOTALL)
_EXPONENT = re.compile(r"[eE]([+-]?[0-9]+)")
_NANO = Decimal("1e-9")
_INT32_MAX = 2**31 - 1
MAX_INT64 = 2**63 - 1
"""The largest value Kubernetes hands out for a resource (and the cap on binary-suffixed ones)."""


def parse_quantity(text: str) -> Decimal:
    """The exact value of ``text``; :class:`ValueError` naming ``text`` when it is not a quantity."""
    if not isinstance(text, str):
        raise ValueError(f"quantity {text!r} is not a string")
    match = _QUANTITY.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        raise ValueError(
            f"quantity {text!r}: quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    sign, whole, fraction, suffix = match.group(1), match.group(2), match.group(3) or "", match.group(4)
    binary = suffix in _BINARY_SI
    if suffix in _DECIMAL_SI:
        exponent = _DECIMAL_SI[suffix]
    elif binary:
        exponent = 0
    else:
        exp_match = _EXPONENT.fullmatch(suffix)
        if exp_match is None:
            raise ValueError(f"quantity {text!r} has an unknown suffix {suffix!r}")
        exponent = int(exp_match.group(1))
        if abs(exponent) > _INT32_MAX:
            raise ValueError(f"quantity {text!r} has an exponent out of range")
    digits = (whole + fraction).lstrip("0") or "0"
    # Built from its digits and exponent, so exact whatever the size (no context rounding).
    value = Decimal(f"{sign}{digits}E{exponent - len(fraction)}")
    context = Context(prec=len(text) + 40, Emax=MAX_EMAX, Emin=MIN_EMIN)
    with localcontext(context):
        if binary:
            value = value * (2 ** _BINARY_SI[suffix])
            if abs(value) > MAX_INT64:
                value = Decimal(MAX_INT64).copy_sign(value)
        exp = value.as_tuple().exponent
        if isinstance(exp, int) and exp < -9:
            value = value.quantize(_NANO, rounding=ROUND_UP)
    return value if value != 0 else Decimal(0)


def ceil_ratio(value: Decimal, divisor: Decimal) -> int:
    """``ceil(value / divisor)`` as kubelet hands a resource to the downward API.

    Like ``convertQuantityToString`` (pkg/api/v1/resource): 0 for a zero or negative value or
    divisor, exact decimal arithmetic, and saturation at 2^63-1 for ratios an int64 cannot hold.
    """
    if not (value.is_finite() and divisor.is_finite()):
        raise ValueError(f"cannot divide {value} by {divisor}")
    if value <= 0 or divisor <= 0:
        return 0
    gap = value.adjusted() - divisor.adjusted()
    if gap > 19:  # value/divisor >= 10^19 > 2^63-1
        return MAX_INT64
    if gap < -1:  # 0 < value/divisor < 0.1
        return 1
    numerator, v_exp = _coefficient(value)
    denominator, d_exp = _coefficient(divisor)
    shift = v_exp - d_exp  # bounded by the gap check and the digits' lengths
    if shift >= 0:
        numerator *= 10**shift
    else:
        denominator *= 10**-shift
    return min(-(-numerator // denominator), MAX_INT64)


def _coefficient(value: Decimal) -> tuple[int, int]:
    """``(c, e)`` with ``value == c * 10**e`` for a finite positive ``value``."""
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"{value} is not finite")
    return int("".join(map(str, digits))), exponent


def format_bytes(value: int) -> str:
    """``value`` as Kubernetes prints a binary quantity: ``0``, ``1536``, ``100Mi``, ``51200Ki``.

    The largest binary suffix that divides the value exactly, as ``resource.Quantity.String()``
    canonicalizes a ``BinarySI`` amount (the kubelet's eviction messages print bytes this way).
    """
    suffix = ""
    for name, bits in _BINARY_SI.items():
        if value == 0 or value % (1 << bits):
            break
        suffix = name
    return f"{value >> _BINARY_SI[suffix]}{suffix}" if suffix else str(value)
