"""Plans: what a subscription costs and grants, and the purchase discount it gives.

The four plans of the overview are the defaults; a `[plans.<code>]` table in the `--config`
file changes one or adds another (decoded into these types: a typo is an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Annotated, Any, Literal

import msgspec

from engine.errors import InvalidInput
from engine.money import AMOUNT_CENTS_MAX, round_half_even

FREE = "free"
ENTERPRISE = "enterprise"

Cents = Annotated[int, msgspec.Meta(ge=0, le=AMOUNT_CENTS_MAX)]


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    monthly_price_usd_cents: Cents
    monthly_credits: Cents
    purchase_discount_percent: Annotated[int, msgspec.Meta(ge=0, le=99)] = 0
    stripe_price_id: str | None = None
    lago_plan_code: str | None = None
    # Enterprise: an admin sets each account's monthly credits.
    custom: bool = False
    # What is left of a period's grant at its end: "none" expires, "all" rolls over (the
    # grant never expires), a number keeps at most that many credits one more period.
    grant_rollover: Literal["none", "all"] | Cents = "none"
    # Credits of the daily grant (POST /v1/credits/daily-grant); 0 or less: none.
    daily_grant_credits: Annotated[int, msgspec.Meta(le=AMOUNT_CENTS_MAX)] = 0


PLANS_DEFAULT: dict[str, Plan] = {
    FREE: Plan("Free", 0, 0, 0, lago_plan_code="free"),
    "standard": Plan("Standard", 2_000, 2_500, 10, lago_plan_code="standard"),
    "pro": Plan("Pro", 5_000, 6_000, 20, lago_plan_code="pro"),
    ENTERPRISE: Plan("Enterprise", 0, 0, 0, lago_plan_code="enterprise", custom=True),
}


class Plans:
    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self._plans = dict(plans)

    @classmethod
    def from_config(cls, table: Mapping[str, Any] | None) -> Plans:
        """The defaults, each replaced or joined by the config file's `[plans.<code>]`."""
        try:
            configured = msgspec.convert(table or {}, dict[str, Plan])
        except msgspec.ValidationError as error:
            raise InvalidInput(f"plans: {error}") from None
        return cls({**PLANS_DEFAULT, **configured})

    @property
    def codes(self) -> list[str]:
        return list(self._plans)

    def get(self, code: str) -> Plan:
        plan = self._plans.get(code)
        if plan is None:
            raise InvalidInput(f"unknown plan {code!r}; plans: {', '.join(self._plans)}",
                               {"field": "plan"})
        return plan

    def daily_grant_credits(self) -> dict[str, int]:
        """Each plan's daily grant, for the plans that have one."""
        return {code: plan.daily_grant_credits for code, plan in self._plans.items()
                if plan.daily_grant_credits > 0}

    def by_stripe_price(self, price_id: str) -> str | None:
        return next((code for code, plan in self._plans.items()
                     if plan.stripe_price_id == price_id), None)

    def price_usd_cents(self, amount_cents: int, code: str) -> int:
        """What `amount_cents` credits cost on plan `code`, in US cents: its discount lowers
        the price, never the credits. An unknown plan (say, one removed from the config) pays
        full price."""
        plan = self._plans.get(code)
        discount = plan.purchase_discount_percent if plan is not None else 0
        return round_half_even(Fraction(amount_cents * (100 - discount), 100))
