"""The subscription routes: the caller's plan, Stripe checkout and portal, cancel; admin plans."""

from __future__ import annotations

import uuid

from actors.billing import Billing
from actors.system import WallClock
from api import schemas
from api.payment_routes import Register, stripe_call, stripe_customer
from api.routes import Caller, Route
from engine.account import Account
from engine.errors import InvalidInput, NotConfigured
from engine.ids import UserId
from engine.plans import FREE
from engine.subscription_state import Manager
from engine.subscriptions import MONTH_MS
from integrations.stripe.service import StripeService

SUBSCRIPTION_ERRORS = (400, 401, 409, 413, 415, 502, 503)


def subscription_reply(billing: Billing, account: Account) -> schemas.SubscriptionReply:
    subscription = account.subscription
    plan = billing.plans.get(account.plan) if account.plan in billing.plans.codes else None
    if subscription is None:
        return schemas.SubscriptionReply(account.plan, plan.name if plan else account.plan,
                                         "none", None, None, 0, None, None)
    return schemas.SubscriptionReply(
        plan=subscription.plan,
        plan_name=plan.name if plan else subscription.plan,
        status=subscription.status.value,  # type: ignore[arg-type]
        subscription_id=subscription.subscription_id,
        managed_by=subscription.managed_by.value,  # type: ignore[arg-type]
        monthly_credits=subscription.monthly_credits,
        current_period_start=schemas.iso_ms(subscription.period_start_ms),
        current_period_end=schemas.iso_ms(subscription.period_end_ms),
    )


def register_subscription_routes(endpoint: Register, billing: Billing,
                                 stripe: StripeService | None, now_ms: WallClock) -> None:
    def need_stripe() -> StripeService:
        if stripe is None:
            raise NotConfigured("subscriptions through Stripe are not configured on this server")
        return stripe

    async def customer_of(user: UserId) -> str:
        return await stripe_customer(billing, need_stripe().gateway, user)

    @endpoint(Route("GET", "/v1/subscriptions/me", "The caller's plan and subscription",
                    Caller.USER, reply=schemas.SubscriptionReply, errors=(401, 409, 503)))
    async def my_subscription(user: UserId) -> schemas.SubscriptionReply:
        return subscription_reply(billing, await billing.open_account(user))

    @endpoint(Route("POST", "/v1/subscriptions/checkout", "Subscribe: a Stripe Checkout link",
                    Caller.USER, body=schemas.SubscriptionCheckoutBody,
                    reply=schemas.CheckoutReply, errors=SUBSCRIPTION_ERRORS))
    async def subscription_checkout(user: UserId, body: schemas.SubscriptionCheckoutBody
                                    ) -> schemas.CheckoutReply:
        plan = billing.plans.get(body.plan)
        if plan.stripe_price_id is None:
            raise InvalidInput(f"plan {body.plan!r} cannot be bought through Stripe",
                               {"field": "plan"})
        customer_id = await customer_of(user)
        checkout = await stripe_call(need_stripe().gateway.checkout_subscription(
            user, customer_id, body.plan, plan.stripe_price_id, uuid.uuid4().hex))
        return schemas.CheckoutReply(checkout.url, checkout.session_id)

    @endpoint(Route("POST", "/v1/subscriptions/cancel", "Cancel at the end of the period",
                    Caller.USER, body=schemas.EmptyBody, reply=schemas.SubscriptionReply,
                    errors=SUBSCRIPTION_ERRORS))
    async def cancel_subscription(user: UserId, _: schemas.EmptyBody
                                  ) -> schemas.SubscriptionReply:
        subscription = (await billing.open_account(user)).subscription
        if subscription is not None and subscription.managed_by is Manager.STRIPE:
            await stripe_call(need_stripe().gateway.cancel_at_period_end(
                subscription.subscription_id))
        return subscription_reply(billing, await billing.subscriptions.cancel(user))

    @endpoint(Route("POST", "/v1/subscriptions/portal", "A Stripe billing portal link",
                    Caller.USER, body=schemas.EmptyBody, reply=schemas.PortalReply,
                    errors=SUBSCRIPTION_ERRORS))
    async def subscription_portal(user: UserId, _: schemas.EmptyBody) -> schemas.PortalReply:
        customer_id = await customer_of(user)
        return schemas.PortalReply(await stripe_call(need_stripe().gateway.portal(customer_id)))

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
            return subscription_reply(billing, account)
        plan = billing.plans.get(body.plan)
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
        return subscription_reply(billing, account)
