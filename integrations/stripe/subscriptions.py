"""Stripe's subscription events, turned into the subscription state machine's commands.

We put `user_id` and `plan` in every subscription's metadata at checkout; Stripe copies
them into each invoice's `subscription_details`. A period is granted when `invoice.paid`
says it was paid, or when `customer.subscription.updated` moves an active subscription to a
new period; both name the same (subscription, period start) key, so it is granted once.
"""

from __future__ import annotations

import uuid
from typing import Any

from actors.subscriptions import Subscriptions
from engine.errors import DuplicateEvent, InvalidInput
from engine.ids import UserId
from engine.plans import Plans
from engine.subscription_state import Manager


class StripeSubscriptions:
    def __init__(self, ledger: Subscriptions, plans: Plans) -> None:
        self._ledger = ledger
        self._plans = plans

    async def apply(self, event_type: str, obj: dict[str, Any], data: dict[str, Any]) -> str:
        if event_type.startswith("invoice."):
            return await self._invoice(event_type, obj)
        user_id = user_from_metadata(obj.get("metadata") or {})
        subscription_id = str(obj["id"])
        if event_type == "customer.subscription.deleted":
            await self._ledger.end(user_id, subscription_id)
            return "applied"
        account = await self._start(user_id, obj)
        current = account.subscription
        outcome = "applied"
        if obj.get("cancel_at_period_end") and current is not None \
                and current.status.value != "cancelled":
            await self._ledger.cancel(user_id)
        if obj.get("status") in ("past_due", "unpaid"):
            await self._ledger.payment_failed(user_id, subscription_id)
        elif obj.get("status") == "active" and "current_period_start" in (
                data.get("previous_attributes") or {}):
            start, end = _period(obj)
            outcome = await self._grant(user_id, subscription_id, start, end, event_type)
        return outcome

    async def _start(self, user_id: UserId, obj: dict[str, Any]) -> Any:
        """The subscription on the account (started from this object if it is new)."""
        # The price says the plan now (a portal change keeps the checkout's metadata).
        plan_code = self._plan_of(obj) or (obj.get("metadata") or {}).get("plan")
        if not plan_code:
            raise InvalidInput("the subscription's plan is unknown (no price or metadata)")
        plan = self._plans.get(str(plan_code))
        start, end = _period(obj)
        return await self._ledger.subscribe(
            user_id, str(obj["id"]), str(plan_code),
            monthly_credits=plan.monthly_credits, managed_by=Manager.STRIPE,
            period_start_ms=_ms(start), period_end_ms=_ms(end),
            lago_plan_code=plan.lago_plan_code, grant_rollover=plan.grant_rollover,
        )

    def _plan_of(self, obj: dict[str, Any]) -> str | None:
        items = ((obj.get("items") or {}).get("data")) or [{}]
        price = (items[0].get("price") or {}).get("id")
        return self._plans.by_stripe_price(str(price)) if price else None

    async def _invoice(self, event_type: str, invoice: dict[str, Any]) -> str:
        # Newer API versions moved these under `parent.subscription_details`.
        details = (invoice.get("subscription_details")
                   or ((invoice.get("parent") or {}).get("subscription_details")) or {})
        subscription_id = invoice.get("subscription") or details.get("subscription")
        if not subscription_id:
            return "ignored"  # not a subscription's invoice
        lines = ((invoice.get("lines") or {}).get("data")) or [{}]
        user_id = user_from_metadata(details.get("metadata") or lines[0].get("metadata") or {})
        if event_type == "invoice.payment_failed":
            await self._ledger.payment_failed(user_id, str(subscription_id))
            return "applied"
        period = lines[0].get("period") or {}
        start = period.get("start", invoice.get("period_start"))
        end = period.get("end", invoice.get("period_end"))
        return await self._grant(user_id, str(subscription_id), start, end, event_type)

    async def _grant(self, user_id: UserId, subscription_id: str, start: object, end: object,
                     source: str) -> str:
        try:
            await self._ledger.grant(user_id, subscription_id, _ms(start), _ms(end), source)
        except DuplicateEvent:
            return "duplicate"
        return "applied"


def _ms(seconds: object) -> int:
    text = str(seconds)
    if not text.isdigit():
        raise InvalidInput("the event carries no billing period")
    return int(text) * 1000


def _period(subscription: dict[str, Any]) -> tuple[object, object]:
    """The current period, on the subscription or (newer API versions) on its first item."""
    if "current_period_start" in subscription:
        return subscription["current_period_start"], subscription.get("current_period_end")
    items = ((subscription.get("items") or {}).get("data")) or [{}]
    return items[0].get("current_period_start"), items[0].get("current_period_end")


def user_from_metadata(metadata: dict[str, Any]) -> UserId:
    """The user a Stripe object is for: we put `user_id` in the metadata of all we create."""
    try:
        return UserId(uuid.UUID(str(metadata.get("user_id"))))
    except ValueError:
        raise InvalidInput("the Stripe object carries no valid user_id") from None
