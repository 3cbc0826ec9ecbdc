"""Applying Stripe webhook events: each at most once, whatever the order or the repeats.

An applied event leaves a marker in the `webhooks` database in the commit of its entry. The
money itself is keyed on the PaymentIntent (purchases, auto-refills) and the charge (refunds),
so the same object under two event ids — `checkout.session.completed` and
`payment_intent.succeeded` both announce a purchase — is credited once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import stripe

from actors.payments import Payments
from engine.errors import BillingError, DuplicateEvent, InvalidInput, NotYetApplicable
from engine.ledger import EntryType
from engine.payments import refunded_credits
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.subscriptions import StripeSubscriptions, user_from_metadata

PROVIDER = "stripe"
SUBSCRIPTION_TYPES = ("customer.subscription.created", "customer.subscription.updated",
                      "customer.subscription.deleted", "invoice.paid",
                      "invoice.payment_failed")
HANDLED_TYPES = ("checkout.session.completed", "checkout.session.async_payment_succeeded",
                 "payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded",
                 *SUBSCRIPTION_TYPES)


class StripeWebhooks:
    def __init__(self, gateway: StripeGateway, payments: Payments,
                 subscriptions: StripeSubscriptions) -> None:
        self._gateway = gateway
        self._payments = payments
        self._subscriptions = subscriptions
        # (event type, outcome) -> count; exported as zbilling_stripe_webhooks_total.
        self.outcomes: Counter[tuple[str, str]] = Counter()

    async def handle(self, payload: bytes, signature: str | None) -> str:
        """Verify and apply one delivery; returns the outcome (raises to refuse it: Stripe
        delivers a refused event again)."""
        if not signature:
            raise self._refused("missing Stripe-Signature header")
        try:
            self._gateway.verify(payload, signature)
        except stripe.SignatureVerificationError:
            raise self._refused("invalid or expired Stripe signature") from None
        try:
            event = msgspec.json.decode(payload)
            event_id, event_type = str(event["id"]), str(event["type"])
            obj: dict[str, Any] = event["data"]["object"]
        except (msgspec.DecodeError, KeyError, TypeError):
            raise self._refused("not a Stripe event") from None
        label = event_type if event_type in HANDLED_TYPES else "other"
        if self._payments.webhook_applied(PROVIDER, event_id):
            outcome = "duplicate"
        else:
            try:
                if event_type in SUBSCRIPTION_TYPES:
                    outcome = await self._subscriptions.apply(event_type, obj,
                                                              event.get("data", {}))
                    await self._payments.record_webhook(
                        self._payments.marker(PROVIDER, event_id, event_type))
                else:
                    outcome = await self._apply(event_id, event_type, obj)
            except DuplicateEvent:
                outcome = "duplicate"
            except BillingError:
                self.outcomes[label, "refused"] += 1
                raise
        self.outcomes[label, outcome] += 1
        return outcome

    def _refused(self, message: str) -> InvalidInput:
        self.outcomes["unverified", "refused"] += 1
        return InvalidInput(message)

    async def _apply(self, event_id: str, event_type: str, obj: dict[str, Any]) -> str:
        marker = self._payments.marker(PROVIDER, event_id, event_type)
        if event_type in ("checkout.session.completed",
                          "checkout.session.async_payment_succeeded"):
            if obj.get("mode") != "payment" or obj.get("payment_status") != "paid":
                return "ignored"
            payment_id = obj.get("payment_intent") or obj["id"]
            return await self._credit(str(payment_id), {**obj, "metadata": session_metadata(obj)},
                                      marker,
                                      {"checkout_session": str(obj["id"])})
        if event_type == "payment_intent.succeeded":
            return await self._credit(str(obj["id"]), obj, marker, {})
        if event_type == "payment_intent.payment_failed":
            # The refill worker records declines from Stripe's answer; this only confirms it.
            return "recorded"
        if event_type == "charge.refunded":
            return await self._refund(obj, marker)
        return "ignored"

    async def _credit(self, payment_id: str, obj: dict[str, Any], marker: Any,
                      extra: dict[str, str]) -> str:
        metadata = obj.get("metadata") or {}
        kind = metadata.get("kind")
        if kind not in ("purchase", "auto_refill"):
            return "ignored"  # not a payment z-billing asked for
        user_id, credits = user_from_metadata(metadata), _positive(metadata.get("credits"))
        refill_number = (_positive(metadata.get("refill_number")) if kind == "auto_refill"
                         else None)
        await self._payments.credit_payment(
            user_id, payment_id, credits,
            entry_type=EntryType.PURCHASE if kind == "purchase" else EntryType.AUTO_REFILL,
            description=f"{'Purchase' if kind == 'purchase' else 'Auto-refill'} of "
                        f"{credits:,} credits",
            metadata={"payment_intent": payment_id, **extra},
            webhook=marker,
            refill_number=refill_number,
            paid_usd_cents=_paid_usd_cents(obj),
        )
        return "applied"

    async def _refund(self, charge: dict[str, Any], marker: Any) -> str:
        payment_id = charge.get("payment_intent")
        credited = self._payments.credited_payment(str(payment_id)) if payment_id else None
        if credited is None:
            if (charge.get("metadata") or {}).get("kind") in ("purchase", "auto_refill"):
                # Ours, but its payment is not credited yet: refuse, so Stripe sends it again.
                raise NotYetApplicable("the refunded payment is not credited yet")
            return "ignored"
        total = refunded_credits(credited.result.amount_cents, int(charge["amount"]),
                                 int(charge.get("amount_refunded") or 0))
        if total == 0:
            return "ignored"
        await self._payments.take_back(
            credited.user_id, str(charge["id"]), total,
            description=f"Stripe refund of {charge.get('amount_refunded', 0)} cents",
            metadata={"payment_intent": str(payment_id), "charge": str(charge["id"])},
            webhook=marker,
            lot_id=credited.result.transaction_id,
        )
        return "applied"


def _paid_usd_cents(obj: dict[str, Any]) -> int | None:
    """What the payment cost in US cents, as Stripe says (a lot's cost basis)."""
    amount = obj.get("amount_received", obj.get("amount_total", obj.get("amount")))
    return amount if type(amount) is int and amount >= 0 else None
def session_metadata(session: dict[str, Any]) -> dict[str, Any]:
    """A Checkout Session's metadata as ours. A session the original service created (before
    a switch to us) carries `user_id` (or only `client_reference_id`) and `credits_amount`
    and no `kind`: it is read as our purchase, credited once on its PaymentIntent like ours."""
    metadata = dict(session.get("metadata") or {})
    if "kind" not in metadata and "credits_amount" in metadata:
        metadata.setdefault("user_id", session.get("client_reference_id"))
        metadata.update(kind="purchase", credits=metadata["credits_amount"])
    return metadata


def _positive(value: object) -> int:
    text = str(value)
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"the payment carries an invalid amount {value!r}")
    return int(text)
