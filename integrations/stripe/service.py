"""Stripe, assembled: the gateway, the webhook handler, the refill worker and their metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from actors.metrics import TallyCollector
from actors.payments import Payments
from actors.subscriptions import Subscriptions
from engine.plans import Plans
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.refill import RefillWorker
from integrations.stripe.subscriptions import StripeSubscriptions
from integrations.stripe.webhooks import StripeWebhooks


@dataclass(frozen=True)
class StripeService:
    gateway: StripeGateway
    webhooks: StripeWebhooks
    refills: RefillWorker


def stripe_service(gateway: StripeGateway, payments: Payments,
                   subscriptions: Subscriptions, plans: Plans, registry: CollectorRegistry,
                   *, refill_retry_base_s: float) -> StripeService:
    webhooks = StripeWebhooks(gateway, payments, StripeSubscriptions(subscriptions, plans))
    service = StripeService(gateway, webhooks,
                            RefillWorker(gateway, payments, plans,
                                         decline_backoff_s=refill_retry_base_s))
    registry.register(TallyCollector("zbilling_stripe_webhooks",
                                     "Stripe webhook deliveries by event type and outcome",
                                     ["type", "outcome"], webhooks.outcomes))
    registry.register(TallyCollector("zbilling_auto_refill_attempts",
                                     "Auto-refill charge attempts by outcome", ["outcome"],
                                     service.refills.outcomes))
    return service

