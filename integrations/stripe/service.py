"""Stripe, assembled: the gateway, the webhook handler, the refill worker and their metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from actors.payments import PaymentLedger
from engine.plans import Plans
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.refill import RefillWorker
from integrations.stripe.webhooks import StripeWebhooks


@dataclass(frozen=True)
class StripeService:
    gateway: StripeGateway
    webhooks: StripeWebhooks
    refills: RefillWorker


def stripe_service(gateway: StripeGateway, payments: PaymentLedger, plans: Plans,
                   registry: CollectorRegistry, *, refill_retry_base_s: float) -> StripeService:
    service = StripeService(gateway, StripeWebhooks(gateway, payments),
                            RefillWorker(gateway, payments, plans,
                                         decline_backoff_s=refill_retry_base_s))
    registry.register(_StripeCollector(service))
    return service


class _StripeCollector(Collector):
    def __init__(self, service: StripeService) -> None:
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily]:
        webhooks = CounterMetricFamily("zbilling_stripe_webhooks",
                                       "Stripe webhook deliveries by event type and outcome",
                                       labels=["type", "outcome"])
        for (event_type, outcome), count in sorted(self._service.webhooks.outcomes.items()):
            webhooks.add_metric([event_type, outcome], count)
        yield webhooks
        refills = CounterMetricFamily("zbilling_auto_refill_attempts",
                                      "Auto-refill charge attempts by outcome",
                                      labels=["outcome"])
        for outcome, count in sorted(self._service.refills.outcomes.items()):
            refills.add_metric([outcome], count)
        yield refills
