"""The Stripe routes: buying credits, the payment history, and Stripe's webhooks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import stripe
from quart import request

from actors.billing import Billing
from api import schemas
from api.routes import Caller, Route
from engine.errors import ExternalServiceError, InvalidInput, NotConfigured
from engine.ids import UserId
from engine.money import require_int
from engine.payments import purchase_credits
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.service import StripeService

PAYMENTS_PAGE_MAX = 100
PAYMENTS_PAGE_DEFAULT = 10
T = TypeVar("T")
Register = Callable[[Route], Callable[[Callable[..., Awaitable[Any]]], Any]]


def register_payment_routes(endpoint: Register, billing: Billing,
                            service: StripeService) -> None:
    gateway = service.gateway

    @endpoint(Route("POST", "/v1/credits/purchase", "Buy credits: a Stripe Checkout link",
                    Caller.USER, body=schemas.PurchaseBody, reply=schemas.PurchaseReply,
                    errors=(400, 401, 409, 413, 415, 502, 503)))
    async def purchase(user: UserId, body: schemas.PurchaseBody) -> schemas.PurchaseReply:
        credits = purchase_credits(body.amount_usd)
        customer_id = await stripe_customer(billing, gateway, user)
        price = billing.plans.price_usd_cents(credits, (await billing.open_account(user)).plan)
        checkout = await stripe_call(gateway.checkout_purchase(
            user, customer_id, credits, price, request_key=uuid.uuid4().hex))
        return schemas.PurchaseReply(checkout.url, checkout.session_id, credits, price)

    @endpoint(Route("GET", "/v1/payments", "The caller's Stripe payments, newest first",
                    Caller.USER, reply=schemas.PaymentsPageReply,
                    errors=(400, 401, 409, 502, 503),
                    parameters=("payments_limit", "starting_after")))
    async def payments(user: UserId) -> schemas.PaymentsPageReply:
        limit_text = request.args.get("limit", str(PAYMENTS_PAGE_DEFAULT))
        if not limit_text.isdigit():
            raise InvalidInput("limit must be an integer", {"field": "limit"})
        limit = require_int("limit", int(limit_text), 1, PAYMENTS_PAGE_MAX)
        starting_after = request.args.get("starting_after") or None
        account = await billing.open_account(user)
        if account.stripe_customer_id is None:
            return schemas.PaymentsPageReply([], False)
        page = await stripe_call(gateway.list_payments(account.stripe_customer_id, limit,
                                                       starting_after))
        return schemas.PaymentsPageReply([payment_reply(p) for p in page.payments],
                                         page.has_more)

    @endpoint(Route("POST", "/webhooks/stripe", "Stripe events (verified by Stripe-Signature)",
                    Caller.PUBLIC, reply=schemas.WebhookReply, errors=(400, 409, 413, 503)))
    async def stripe_webhook() -> schemas.WebhookReply:
        if gateway.webhook_secret is None:
            raise NotConfigured("Stripe webhooks need STRIPE_WEBHOOK_SECRET")
        outcome = await service.webhooks.handle(await request.get_data(),
                                                request.headers.get("Stripe-Signature"))
        return schemas.WebhookReply(True, outcome)


async def stripe_customer(billing: Billing, gateway: StripeGateway, user: UserId) -> str:
    """The account's Stripe customer, created (once: Stripe's idempotency key) on first use."""
    account = await billing.open_account(user)
    if account.stripe_customer_id is not None:
        return account.stripe_customer_id
    customer_id = await stripe_call(gateway.create_customer(user))
    await billing.payments.set_customer(user, customer_id)
    return customer_id


async def stripe_call(call: Awaitable[T]) -> T:
    """Stripe's own failures as ours: a declined request is the caller's, the rest a 502."""
    try:
        return await call
    except stripe.InvalidRequestError as error:
        raise InvalidInput(error.user_message or "Stripe refused the request") from None
    except stripe.StripeError as error:
        raise ExternalServiceError(f"Stripe: {type(error).__name__}") from None


def payment_reply(payment: dict[str, Any]) -> schemas.PaymentReply:
    metadata = payment.get("metadata") or {}
    credits = str(metadata.get("credits", ""))
    return schemas.PaymentReply(
        id=str(payment["id"]),
        amount_cents=int(payment.get("amount") or 0),
        currency=str(payment.get("currency") or ""),
        status=str(payment.get("status") or ""),
        kind=metadata.get("kind"),
        credits=int(credits) if credits.isdigit() else None,
        description=payment.get("description"),
        created_at=schemas.iso_ms(int(payment.get("created") or 0) * 1000),
    )
