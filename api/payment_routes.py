"""The Stripe routes: buying credits, the payment history, and Stripe's webhooks. Without
Stripe configured each answers 503 `not_configured`."""

from __future__ import annotations

from quart import request

from actors.billing import Billing
from api import schemas
from api.http import Register, not_configured, read_raw_body
from api.replies import payment_reply, purchase_reply
from api.routes import Caller, Route
from engine.ids import UserId
from integrations.stripe.service import StripeService

PURCHASE = ("POST", "/v1/credits/purchase")
PAYMENTS = ("GET", "/v1/payments")
STRIPE_WEBHOOK = ("POST", "/webhooks/stripe")


def register_payment_routes(endpoint: Register, billing: Billing,
                            service: StripeService | None) -> None:
    if service is None:
        for method, path in (PURCHASE, PAYMENTS):
            not_configured(endpoint, method, path, "Stripe payments")
        not_configured(endpoint, *STRIPE_WEBHOOK, "Stripe webhooks")
        return

    @endpoint(Route(*PURCHASE, "Buy credits: a Stripe Checkout link",
                    Caller.USER, body=schemas.PurchaseBody, reply=schemas.PurchaseReply,
                    errors=(400, 401, 409, 413, 415, 502, 503)))
    async def purchase(user: UserId, body: schemas.PurchaseBody) -> schemas.PurchaseReply:
        account = await billing.open_account(user)
        # The amount counts by value, as the document (JSON Schema) counts it: 10.500 is 10.5.
        return purchase_reply(await service.purchase(account, body.amount_usd.normalize()))

    @endpoint(Route(*PAYMENTS, "The caller's Stripe payments, newest first",
                    Caller.USER, reply=schemas.PaymentsPageReply,
                    errors=(400, 401, 404, 409, 502, 503), parameters=schemas.PaymentsQuery))
    async def payments(user: UserId, query: schemas.PaymentsQuery
                       ) -> schemas.PaymentsPageReply:
        account = await billing.open_account(user)
        page = await service.payment_history(account, query.limit,
                                             query.starting_after or None)
        return schemas.PaymentsPageReply([payment_reply(p) for p in page.payments],
                                         page.has_more)

    @endpoint(Route(*STRIPE_WEBHOOK, "Stripe events (verified by Stripe-Signature)",
                    Caller.PUBLIC, raw_body=schemas.STRIPE_EVENT, reply=schemas.WebhookReply,
                    errors=(400, 409, 413, 503), headers=(schemas.STRIPE_SIGNATURE,)))
    async def stripe_webhook() -> schemas.WebhookReply:
        outcome = await service.handle_webhook(
            await read_raw_body(), request.headers.get(schemas.STRIPE_SIGNATURE.name))
        return schemas.WebhookReply(True, outcome)
