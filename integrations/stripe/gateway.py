"""`StripeGateway`: every call z-billing makes to Stripe, through the official `stripe` package.

The package's async client (HTTPXClient: httpx.AsyncClient + anyio) runs natively under
trio, so no call blocks the event loop and none needs a worker thread. Its own retries are
on (network errors, 409/429/5xx, with Stripe's idempotency keys), and our keys are derived
from what is being paid for, so a retry after a crash meets the same PaymentIntent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from engine.export import customer_name
from engine.ids import UserId
from engine.payments import RefillIntent

STRIPE_TIMEOUT_S = 20.0
STRIPE_NETWORK_RETRIES = 2
WEBHOOK_TOLERANCE_S = 300
CURRENCY = "usd"
REFILL_CARD_LOOKBACK = 10  # recent payments searched for a saved card


@dataclass(frozen=True)
class Checkout:
    session_id: str
    url: str


@dataclass(frozen=True)
class PaymentsPage:
    payments: list[dict[str, Any]]
    has_more: bool


class StripeGateway:
    def __init__(self, api_key: str, *, webhook_secret: str | None, frontend_url: str,
                 api_base: str | None = None) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,  # type: ignore[typeddict-item]
            http_client=stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_S),
            max_network_retries=STRIPE_NETWORK_RETRIES,
        )
        self.webhook_secret = webhook_secret
        self._frontend_url = frontend_url.rstrip("/")

    async def create_customer(self, user_id: UserId, email: str | None = None) -> str:
        # One customer per user even if two first purchases race: the key makes them one call.
        # Stripe refuses a key reused with other parameters, so the email has its own.
        params: dict[str, Any] = {"metadata": {"user_id": str(user_id)},
                                  "name": customer_name(user_id, email)}
        key = f"zbilling-customer-{user_id}"
        if email is not None:
            params["email"] = email
            key += "-email"
        customer = await self._client.v1.customers.create_async(
            params=params, options={"idempotency_key": key})
        return str(customer.id)

    async def checkout_purchase(self, user_id: UserId, customer_id: str, credits: int,
                                price: int, request_key: str) -> Checkout:
        metadata = {"kind": "purchase", "user_id": str(user_id), "credits": str(credits)}
        session = await self._client.v1.checkout.sessions.create_async(
            params={
                "mode": "payment",
                "customer": customer_id,
                "client_reference_id": str(user_id),
                "line_items": [{
                    "quantity": 1,
                    "price_data": {"currency": CURRENCY, "unit_amount": price,
                                   "product_data": {"name": f"{credits:,} z-billing credits"}},
                }],
                "metadata": metadata,
                # Carried to the PaymentIntent (and its charge), and the card is kept for
                # auto-refill.
                "payment_intent_data": {"metadata": metadata,
                                        "setup_future_usage": "off_session"},
                "success_url": f"{self._frontend_url}/checkout/success"
                               "?session_id={CHECKOUT_SESSION_ID}",
                "cancel_url": f"{self._frontend_url}/checkout/cancelled",
            },
            options={"idempotency_key": f"zbilling-checkout-{request_key}"},
        )
        return Checkout(str(session.id), str(session.url))

    async def checkout_subscription(self, user_id: UserId, customer_id: str, plan: str,
                                    price_id: str, request_key: str) -> Checkout:
        metadata = {"user_id": str(user_id), "plan": plan}
        session = await self._client.v1.checkout.sessions.create_async(
            params={
                "mode": "subscription",
                "customer": customer_id,
                "client_reference_id": str(user_id),
                "line_items": [{"price": price_id, "quantity": 1}],
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
                "success_url": f"{self._frontend_url}/checkout/success"
                               "?session_id={CHECKOUT_SESSION_ID}",
                "cancel_url": f"{self._frontend_url}/checkout/cancelled",
            },
            options={"idempotency_key": f"zbilling-subscribe-{request_key}"},
        )
        return Checkout(str(session.id), str(session.url))

    async def cancel_at_period_end(self, subscription_id: str) -> None:
        await self._client.v1.subscriptions.update_async(
            subscription_id, params={"cancel_at_period_end": True})

    async def portal(self, customer_id: str) -> str:
        session = await self._client.v1.billing_portal.sessions.create_async(
            params={"customer": customer_id, "return_url": f"{self._frontend_url}/subscription"})
        return str(session.url)

    async def list_payments(self, customer_id: str, limit: int,
                            starting_after: str | None) -> PaymentsPage:
        params: dict[str, Any] = {"customer": customer_id, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        page = await self._client.v1.payment_intents.list_async(params=params)  # type: ignore[arg-type]
        return PaymentsPage([intent.to_dict() for intent in page.data], bool(page.has_more))

    async def default_payment_method(self, customer_id: str) -> str | None:
        """The customer's default card, else the card of their latest successful payment
        (purchases save it for off-session use through `setup_future_usage`)."""
        customer = (await self._client.v1.customers.retrieve_async(customer_id)).to_dict()
        settings = customer.get("invoice_settings") or {}
        method = settings.get("default_payment_method")
        if isinstance(method, str):
            return method
        recent = await self.list_payments(customer_id, REFILL_CARD_LOOKBACK, None)
        return next((str(payment["payment_method"]) for payment in recent.payments
                     if payment.get("status") == "succeeded"
                     and isinstance(payment.get("payment_method"), str)), None)

    async def charge_refill(self, intent: RefillIntent, payment_method: str,
                            price: int) -> dict[str, Any]:
        """An off-session, confirmed PaymentIntent; raises stripe.CardError on a decline."""
        payment = await self._client.v1.payment_intents.create_async(
            params={
                "amount": price,
                "currency": CURRENCY,
                "customer": intent.customer_id,
                "payment_method": payment_method,
                "off_session": True,
                "confirm": True,
                "description": f"z-billing auto-refill of {intent.amount_cents:,} credits",
                "metadata": {"kind": "auto_refill", "user_id": str(intent.user_id),
                             "credits": str(intent.amount_cents),
                             "refill_number": str(intent.number)},
            },
            # One key per (account, refill, attempt): a retry after a crash or a timeout
            # meets the PaymentIntent of that attempt instead of charging again.
            options={"idempotency_key":
                     f"zbilling-refill-{intent.user_id}-{intent.number}-{intent.declines}"},
        )
        return payment.to_dict()

    def verify(self, payload: bytes, signature: str) -> None:
        """Raises stripe.SignatureVerificationError unless Stripe signed `payload` recently."""
        stripe.WebhookSignature.verify_header(payload.decode("utf-8", "replace"), signature,
                                              self.webhook_secret or "", WEBHOOK_TOLERANCE_S)
