"""The subscription routes: the caller's plan, Stripe checkout and portal, cancel; admin plans;
and Lago's webhooks, which start and end the periods of the subscriptions mirrored to Lago."""

from __future__ import annotations

import uuid
from typing import Any

from quart import request

from actors.billing import Billing
from api import schemas
from api.errors import ApiError
from api.http import Register, not_configured, read_raw_body
from api.replies import checkout_reply, subscription_reply
from api.routes import Caller, Route
from api.schemas import absent, present
from api.settings import Settings
from engine.account import Account
from engine.errors import InvalidInput, NotConfigured
from engine.ids import UserId
from engine.plans import FREE, Plans
from engine.subscription_state import Manager
from engine.subscriptions import MONTH_MS
from integrations.lago.webhooks import LagoWebhooks
from integrations.stripe.service import StripeService

SUBSCRIPTION_ERRORS = (400, 401, 409, 413, 415, 502, 503)
CHECKOUT = ("POST", "/v1/subscriptions/checkout")
LAGO_WEBHOOK = ("POST", "/webhooks/lago")


def register_subscription_routes(endpoint: Register, billing: Billing,
                                 stripe: StripeService | None) -> None:
    plans = billing.plans

    def need_stripe() -> StripeService:
        if stripe is None:
            raise NotConfigured("subscriptions through Stripe are not configured on this server")
        return stripe

    @endpoint(Route("GET", "/v1/subscriptions/me", "The caller's plan and subscription",
                    Caller.USER, reply=schemas.SubscriptionReply, errors=(401, 409, 503)))
    async def my_subscription(user: UserId) -> schemas.SubscriptionReply:
        return subscription_reply(plans, await billing.open_account(user))

    register_checkout_route(endpoint, billing, stripe)

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
                    body_rules=admin_plan_rules(plans), reply=schemas.SubscriptionReply,
                    errors=(400, 401, 403, 404, 409, 413, 415, 503)))
    async def admin_subscription(body: schemas.AdminSubscriptionBody
                                 ) -> schemas.SubscriptionReply:
        return subscription_reply(plans, await put_on_plan(billing, body))


def register_checkout_route(endpoint: Register, billing: Billing,
                            stripe: StripeService | None) -> None:
    """Subscription checkout, for the plans sold through Stripe; a stand-in without any."""
    sold = [code for code in billing.plans.codes
            if billing.plans.get(code).stripe_price_id is not None]
    if stripe is None or not sold:
        not_configured(endpoint, *CHECKOUT, "Stripe subscriptions (Stripe and a plan with a "
                                            "stripe_price_id)")
        return

    @endpoint(Route(*CHECKOUT, "Subscribe: a Stripe Checkout link", Caller.USER,
                    body=schemas.SubscriptionCheckoutBody,
                    body_rules={"properties": {"plan": {"enum": sold}}},
                    reply=schemas.CheckoutReply, errors=SUBSCRIPTION_ERRORS))
    async def subscription_checkout(user: UserId, body: schemas.SubscriptionCheckoutBody
                                    ) -> schemas.CheckoutReply:
        return checkout_reply(await stripe.subscribe(await billing.open_account(user),
                                                     body.plan))


async def put_on_plan(billing: Billing, body: schemas.AdminSubscriptionBody) -> Account:
    """An admin-managed subscription to `body.plan` from now (renewed by our timer); `free`
    ends the current one."""
    user = UserId(body.user_id)
    account = await billing.get_account(user)
    if body.plan == FREE:
        current = account.subscription
        if current is None:
            return account
        return await billing.subscriptions.end(user, current.subscription_id)
    plan = billing.plans.get(body.plan)
    if plan.custom != (body.monthly_credits is not None):
        raise InvalidInput("monthly_credits is set for a custom plan, and only then",
                           {"field": "monthly_credits"})
    start = billing.wall_clock_ms()
    return await billing.subscriptions.subscribe(
        user, f"zb-{uuid.uuid4().hex}", body.plan,
        monthly_credits=(body.monthly_credits if body.monthly_credits is not None
                         else plan.monthly_credits),
        managed_by=Manager.ADMIN, period_start_ms=start, period_end_ms=start + MONTH_MS,
        lago_plan_code=plan.lago_plan_code, grant_rollover=plan.grant_rollover,
    )


def admin_plan_rules(plans: Plans) -> dict[str, Any]:
    """The configured plans, and `monthly_credits` for a custom plan, and only then (`free`
    ends the subscription and reads no credits)."""
    custom = [code for code in plans.codes if code != FREE and plans.get(code).custom]
    fixed = [code for code in plans.codes if code != FREE and not plans.get(code).custom]
    choices: list[dict[str, Any]] = [{"properties": {"plan": {"enum": [FREE]}}}]
    if custom:
        choices.append({"allOf": [{"properties": {"plan": {"enum": custom}}},
                                  present("monthly_credits")]})
    if fixed:
        choices.append({"allOf": [{"properties": {"plan": {"enum": fixed}}},
                                  absent("monthly_credits")]})
    return {"anyOf": choices}


def register_lago_routes(endpoint: Register, lago_webhooks: LagoWebhooks | None,
                         settings: Settings) -> None:
    """Lago's webhooks, documented with the signature algorithms this server verifies."""
    if lago_webhooks is None:
        not_configured(endpoint, *LAGO_WEBHOOK, "Lago webhooks")
        return
    algorithms = tuple(name for name, key in (("hmac", settings.lago_webhook_secret),
                                              ("jwt", settings.lago_public_key)) if key)

    @endpoint(Route(*LAGO_WEBHOOK, "Lago events (verified by X-Lago-Signature)",
                    Caller.PUBLIC, raw_body=schemas.LAGO_WEBHOOK, reply=schemas.WebhookReply,
                    errors=(400, 409, 413, 503),
                    headers=(schemas.LAGO_SIGNATURE, schemas.lago_signature_algorithm(algorithms),
                             schemas.LAGO_UNIQUE_KEY)))
    async def lago_webhook() -> schemas.WebhookReply:
        outcome = await lago_webhooks.handle(await read_raw_body(), request.headers)
        return schemas.WebhookReply(True, outcome)
