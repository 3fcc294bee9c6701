from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmlet.kube.quantity import MAX_INT64, ceil_ratio, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "0"),
        ("-0", "0"),
        ("1", "1"),
        ("+1", "1"),
        ("-1", "-1"),
        ("500m", "0.5"),
        ("1.5", "1.5"),
        (".5", "0.5"),
        ("5.", "5"),
        ("007", "7"),
        ("1n", "0.000000001"),
        ("1u", "0.000001"),
        ("250m", "0.25"),
        ("1k", "1000"),
        ("128M", "128000000"),
        ("1G", "1000000000"),
        ("1T", "1e12"),
        ("1P", "1e15"),
        ("1E", "1e18"),
        ("1Ki", "1024"),
        ("1Mi", "1048576"),
        ("1Gi", "1073741824"),
        ("1.5Gi", "1610612736"),
        ("1Ti", str(2**40)),
        ("1Pi", str(2**50)),
        ("1Ei", str(2**60)),
        ("1e3", "1000"),
        ("1E3", "1000"),  # an exponent, not exa times 3
        ("1e+3", "1000"),
        ("15e-1", "1.5"),
        ("1.5e2", "150"),
        ("-2k", "-2000"),
    ],
)
def test_parses_kubernetes_quantities(text: str, expected: str) -> None:
    assert parse_quantity(text) == Decimal(expected)


def test_more_precision_than_a_nano_unit_rounds_up_away_from_zero() -> None:
    assert parse_quantity("0.0000000001") == Decimal("1e-9")
    assert parse_quantity("1.0000000001") == Decimal("1.000000001")
    assert parse_quantity("-0.0000000001") == Decimal("-1e-9")
    assert parse_quantity("1e-2147483647") == Decimal("1e-9")
    assert parse_quantity("1.0000000000") == 1  # zeros past a nano are no precision


def test_binary_suffixed_values_are_capped_at_int64() -> None:
    assert parse_quantity("100Ei") == MAX_INT64
    assert parse_quantity("-100Ei") == -MAX_INT64
    assert parse_quantity("100E") == Decimal("1e20")  # the cap is for binary suffixes only


def test_huge_exponents_stay_exact() -> None:
    assert parse_quantity("1e1000000") == Decimal("1e1000000")


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "-",
        "+",
        "abc",
        " 1",
        "1 ",
        "1K",
        "1kI",
        "1e",
        "1e+",
        "1.2.3",
        "1Gi ",
        "Gi",
        "\u0661",  # an ARABIC-INDIC DIGIT ONE is no digit here
        "1e2147483648",
    ],
)
def test_rejects_what_is_not_a_quantity_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_quantity(text)


def test_error_names_the_input() -> None:
    with pytest.raises(ValueError) as info:
        parse_quantity("12 cores")
    assert "'12 cores'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        ("500m", "1", 1),  # ceil
        ("1500m", "1", 2),
        ("2", "1", 2),
        ("500m", "1m", 500),
        ("1Gi", "1Mi", 1024),
        ("1Gi", "1M", 1074),
        ("128Mi", "1", 134217728),
        ("1", "1e100", 1),  # any positive fraction is at least 1
        ("1e100", "1", MAX_INT64),  # saturates
        ("9223372036854775807", "1", MAX_INT64),
        ("9223372036854775808", "1", MAX_INT64),
        ("0", "1", 0),
        ("-1", "1", 0),
        ("1", "-1", 0),
        ("1", "0", 0),
        ("1n", "1", 1),
    ],
)
def test_ceil_ratio_is_kubelets_downward_api_conversion(value: str, divisor: str, expected: int) -> None:
    assert ceil_ratio(parse_quantity(value), parse_quantity(divisor)) == expected


def test_ceil_ratio_refuses_non_finite_values() -> None:
    with pytest.raises(ValueError):
        ceil_ratio(Decimal("Infinity"), Decimal(1))


@given(
    st.integers(min_value=1, max_value=10**30),
    st.integers(min_value=-12, max_value=12),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=-12, max_value=12),
)
def test_ceil_ratio_matches_exact_fractions(vc: int, ve: int, dc: int, de: int) -> None:
    value, divisor = Decimal(vc).scaleb(ve), Decimal(dc).scaleb(de)
    ratio = Fraction(vc) * Fraction(10) ** ve / (Fraction(dc) * Fraction(10) ** de)
    exact = -(-ratio.numerator // ratio.denominator)
    assert ceil_ratio(value, divisor) == min(exact, MAX_INT64)


@given(st.text(max_size=30))
def test_parse_quantity_only_raises_value_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except ValueError:
        return
    assert value.is_finite()
