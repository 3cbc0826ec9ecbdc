"""`StripeService`: the Stripe use cases (buying credits, subscribing, the payment history),
and Stripe assembled: the gateway, the webhook handler, the refill worker and their metrics.

Each use case takes an opened account and calls Stripe through the gateway; Stripe's own
failures come out as our errors (`_call`), so callers (the HTTP routes, a test, the CLI) never
see the `stripe` package.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import stripe
from prometheus_client import CollectorRegistry

from actors.metrics import TallyCollector
from actors.payments import Payments
from actors.subscriptions import Subscriptions
from engine.account import Account
from engine.errors import ExternalServiceError, InvalidInput, NotConfigured, NotFound
from engine.payments import purchase_credits
from engine.plans import Plans
from integrations.stripe.gateway import Checkout, PaymentsPage, StripeGateway
from integrations.stripe.refill import RefillWorker
from integrations.stripe.subscriptions import StripeSubscriptions
from integrations.stripe.webhooks import StripeWebhooks

T = TypeVar("T")


@dataclass(frozen=True)
class Purchase:
    checkout: Checkout
    credits: int
    price_usd_cents: int


@dataclass(frozen=True)
class StripeService:
    gateway: StripeGateway
    webhooks: StripeWebhooks
    refills: RefillWorker
    payments: Payments
    plans: Plans

    async def purchase(self, account: Account, amount_usd: Decimal) -> Purchase:
        """A Checkout Session for `amount_usd` dollars of credits, priced with the account's
        plan discount; the credits come with Stripe's webhook once it is paid."""
        credits = purchase_credits(amount_usd)
        customer_id = await self.customer(account)
        price = self.plans.price_usd_cents(credits, account.plan)
        checkout = await _call(self.gateway.checkout_purchase(
            account.user_id, customer_id, credits, price, request_key=_fresh_key()))
        return Purchase(checkout, credits, price)

    async def subscribe(self, account: Account, plan_code: str) -> Checkout:
        """A Checkout Session in subscription mode for a plan sold through Stripe."""
        plan = self.plans.get(plan_code)
        if plan.stripe_price_id is None:
            raise InvalidInput(f"plan {plan_code!r} cannot be bought through Stripe",
                               {"field": "plan"})
        customer_id = await self.customer(account)
        return await _call(self.gateway.checkout_subscription(
            account.user_id, customer_id, plan_code, plan.stripe_price_id, _fresh_key()))

    async def cancel_at_period_end(self, subscription_id: str) -> None:
        await _call(self.gateway.cancel_at_period_end(subscription_id))

    async def portal(self, account: Account) -> str:
        """A billing portal link for the account's Stripe customer."""
        return await _call(self.gateway.portal(await self.customer(account)))

    async def payment_history(self, account: Account, limit: int,
                              starting_after: str | None) -> PaymentsPage:
        if account.stripe_customer_id is None:
            return PaymentsPage([], False)
        try:
            return await _call(self.gateway.list_payments(account.stripe_customer_id, limit,
                                                          starting_after))
        except _Missing as missing:
            if missing.param != "starting_after":
                raise
            raise NotFound(f"no payment {starting_after!r}",
                           {"starting_after": starting_after}) from None

    async def handle_webhook(self, payload: bytes, signature: str | None) -> str:
        if self.gateway.webhook_secret is None:
            raise NotConfigured("Stripe webhooks need STRIPE_WEBHOOK_SECRET")
        return await self.webhooks.handle(payload, signature)

    async def customer(self, account: Account, *, email: str | None = None) -> str:
        """The account's Stripe customer, created (once: Stripe's idempotency key) on first
        use, or with the account when it is opened with an email."""
        if account.stripe_customer_id is not None:
            return account.stripe_customer_id
        customer_id = await _call(self.gateway.create_customer(account.user_id, email))
        await self.payments.set_customer(account.user_id, customer_id)
        return customer_id


def _fresh_key() -> str:
    """Each call opens its own Checkout Session; the key only makes Stripe's retries safe."""
    return uuid.uuid4().hex


class _Missing(InvalidInput):
    """Stripe has no object the request names (`param`): a 400, unless the use case can
    tell it is the caller's reference to something that does not exist (a 404)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


async def _call(call: Awaitable[T]) -> T:
    """Stripe's own failures as ours: a declined request is the caller's, the rest a 502."""
    try:
        return await call
    except stripe.InvalidRequestError as error:
        message = error.user_message or "Stripe refused the request"
        if error.code == "resource_missing":
            raise _Missing(message, error.param) from None
        raise InvalidInput(message) from None
    except stripe.StripeError as error:
        raise ExternalServiceError(f"Stripe: {type(error).__name__}") from None


def stripe_service(gateway: StripeGateway, payments: Payments,
                   subscriptions: Subscriptions, plans: Plans, registry: CollectorRegistry,
                   *, refill_retry_base_s: float) -> StripeService:
    webhooks = StripeWebhooks(gateway, payments, StripeSubscriptions(subscriptions, plans))
    service = StripeService(gateway, webhooks,
                            RefillWorker(gateway, payments, plans,
                                         decline_backoff_s=refill_retry_base_s),
                            payments, plans)
    registry.register(TallyCollector("zbilling_stripe_webhooks",
                                     "Stripe webhook deliveries by event type and outcome",
                                     ["type", "outcome"], webhooks.outcomes))
    registry.register(TallyCollector("zbilling_auto_refill_attempts",
                                     "Auto-refill charge attempts by outcome", ["outcome"],
                                     service.refills.outcomes))
    return service
