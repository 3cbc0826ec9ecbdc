"""Credits are integers (1 credit = US$0.01); exact usage cost is in micro-credits."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from engine.errors import InvalidInput

MICROS_PER_CREDIT = 1_000_000
AMOUNT_CENTS_MIN = 1
AMOUNT_CENTS_MAX = 10**12
COST_MICROS_MAX = AMOUNT_CENTS_MAX * MICROS_PER_CREDIT
assert 0 < AMOUNT_CENTS_MIN <= AMOUNT_CENTS_MAX


def micros_to_cents_ceil(micros: int) -> int:
    """Whole credits that cover `micros` (rounded up: a hold or a requirement never falls
    short of the exact cost)."""
    return -(-micros // MICROS_PER_CREDIT)


def format_usd(cents: int) -> str:
    """`format_usd(4500) == "$45.00"`, `format_usd(-5) == "-$0.05"`."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def require_int(name: str, value: Any, low: int, high: int) -> int:
    """An exact integer in [low, high]; booleans, floats and strings are refused."""
    if type(value) is not int:
        raise InvalidInput(f"{name} must be an integer", {"field": name})
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}", {"field": name})
    return value


def require_amount_cents(name: str, value: Any) -> int:
    return require_int(name, value, AMOUNT_CENTS_MIN, AMOUNT_CENTS_MAX)


def round_half_even(value: Fraction) -> int:
    """The single rounding rule for fractional micro-credits (banker's rounding, exact)."""
    quotient, remainder = divmod(value.numerator, value.denominator)
    twice = 2 * remainder
    if twice > value.denominator or (twice == value.denominator and quotient % 2 == 1):
        return quotient + 1
    return quotient


def split_micros(unbilled_micros: int, cost_micros: int) -> tuple[int, int]:
    """The carry rule: (whole credits to debit now, micro-credits carried forward)."""
    return divmod(unbilled_micros + cost_micros, MICROS_PER_CREDIT)
