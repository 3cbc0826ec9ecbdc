"""The subscription routes: the caller's plan, Stripe checkout and portal, cancel; admin plans;
and Lago's webhooks, which start and end the periods of the subscriptions mirrored to Lago."""

from __future__ import annotations

import uuid

from quart import request

from actors.billing import Billing
from actors.system import WallClock
from api import schemas
from api.errors import ApiError
from api.http import Register, not_configured
from api.replies import checkout_reply, subscription_reply
from api.routes import Caller, Route
from engine.errors import InvalidInput, NotConfigured
from engine.ids import UserId
from engine.plans import FREE
from engine.subscription_state import Manager
from engine.subscriptions import MONTH_MS
from integrations.lago.webhooks import LagoWebhooks
from integrations.stripe.service import StripeService

SUBSCRIPTION_ERRORS = (400, 401, 409, 413, 415, 502, 503)
LAGO_WEBHOOK = ("POST", "/webhooks/lago")


def register_subscription_routes(endpoint: Register, billing: Billing,
                                 stripe: StripeService | None,
                                 lago_webhooks: LagoWebhooks | None,
                                 now_ms: WallClock) -> None:
    plans = billing.plans

    def need_stripe() -> StripeService:
        if stripe is None:
            raise NotConfigured("subscriptions through Stripe are not configured on this server")
        return stripe

    @endpoint(Route("GET", "/v1/subscriptions/me", "The caller's plan and subscription",
                    Caller.USER, reply=schemas.SubscriptionReply, errors=(401, 409, 503)))
    async def my_subscription(user: UserId) -> schemas.SubscriptionReply:
        return subscription_reply(plans, await billing.open_account(user))

    @endpoint(Route("POST", "/v1/subscriptions/checkout", "Subscribe: a Stripe Checkout link",
                    Caller.USER, body=schemas.SubscriptionCheckoutBody,
                    reply=schemas.CheckoutReply, errors=SUBSCRIPTION_ERRORS))
    async def subscription_checkout(user: UserId, body: schemas.SubscriptionCheckoutBody
                                    ) -> schemas.CheckoutReply:
        service = need_stripe()
        return checkout_reply(await service.subscribe(await billing.open_account(user),
                                                      body.plan))

    @endpoint(Route("POST", "/v1/subscriptions/cancel", "Cancel at the end of the period",
                    Caller.USER, body=schemas.EmptyBody, reply=schemas.SubscriptionReply,
                    errors=SUBSCRIPTION_ERRORS))
    async def cancel_subscription(user: UserId, _: schemas.EmptyBody
                                  ) -> schemas.SubscriptionReply:
        subscription = (await billing.open_account(user)).subscription
        if subscription is None:
            # A state, not a malformed request: 409 (the engine refuses it as bad input).
            raise ApiError("conflict", "there is no subscription to cancel",
                           {"reason": "no_subscription"})
        if subscription.managed_by is Manager.STRIPE:
            await need_stripe().cancel_at_period_end(subscription.subscription_id)
        return subscription_reply(plans, await billing.subscriptions.cancel(user))

    @endpoint(Route("POST", "/v1/subscriptions/portal", "A Stripe billing portal link",
                    Caller.USER, body=schemas.EmptyBody, reply=schemas.PortalReply,
                    errors=SUBSCRIPTION_ERRORS))
    async def subscription_portal(user: UserId, _: schemas.EmptyBody) -> schemas.PortalReply:
        service = need_stripe()
        return schemas.PortalReply(await service.portal(await billing.open_account(user)))

    @endpoint(Route("POST", "/v1/admin/subscriptions", "Put an account on a plan (admin)",
                    Caller.ADMIN, body=schemas.AdminSubscriptionBody,
                    reply=schemas.SubscriptionReply,
                    errors=(400, 401, 403, 404, 409, 413, 415, 503)))
    async def admin_subscription(body: schemas.AdminSubscriptionBody
                                 ) -> schemas.SubscriptionReply:
        user = UserId(body.user_id)
        account = await billing.get_account(user)
        if body.plan == FREE:
            current = account.subscription
            if current is not None:
                account = await billing.subscriptions.end(user, current.subscription_id)
            return subscription_reply(plans, account)
        plan = plans.get(body.plan)
        if plan.custom != (body.monthly_credits is not None):
            raise InvalidInput("monthly_credits is set for a custom plan, and only then",
                               {"field": "monthly_credits"})
        start = now_ms()
        account = await billing.subscriptions.subscribe(
            user, f"zb-{uuid.uuid4().hex}", body.plan,
            monthly_credits=(body.monthly_credits if body.monthly_credits is not None
                             else plan.monthly_credits),
            managed_by=Manager.ADMIN, period_start_ms=start, period_end_ms=start + MONTH_MS,
            lago_plan_code=plan.lago_plan_code,
        )
        return subscription_reply(plans, account)

    if lago_webhooks is None:
        not_configured(endpoint, *LAGO_WEBHOOK, "Lago webhooks")
        return

    @endpoint(Route(*LAGO_WEBHOOK, "Lago events (verified by X-Lago-Signature)",
                    Caller.PUBLIC, reply=schemas.WebhookReply, errors=(400, 409, 413, 503)))
    async def lago_webhook() -> schemas.WebhookReply:
        outcome = await lago_webhooks.handle(await request.get_data(), request.headers)
        return schemas.WebhookReply(True, outcome)
