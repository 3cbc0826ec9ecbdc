"""The subscription an account carries (its rules are in engine/subscriptions.py)."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.lots import GrantRollover

GRACE_PERIOD_MS = 7 * 24 * 3600 * 1000  # past_due this long, and the subscription ends


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"  # still active until the period ends
    PAST_DUE = "past_due"


class Manager(StrEnum):
    STRIPE = "stripe"  # Stripe bills it and announces each period
    ADMIN = "admin"  # an operator set it; our renewal timer starts each period


class Subscription(msgspec.Struct, frozen=True, gc=False):
    subscription_id: str
    plan: str
    status: SubscriptionStatus
    managed_by: Manager
    monthly_credits: int
    period_start_ms: int
    period_end_ms: int
    last_granted_period_ms: int | None = None
    past_due_since_ms: int | None = None
    grant_rollover: GrantRollover = "none"  # the plan's, for each period's grant lot

    def deadline_ms(self) -> int | None:
        """When the sweeper must look at this subscription again."""
        if self.status is SubscriptionStatus.PAST_DUE and self.past_due_since_ms is not None:
            return self.past_due_since_ms + GRACE_PERIOD_MS
        if self.status is SubscriptionStatus.CANCELLED or self.managed_by is Manager.ADMIN:
            return self.period_end_ms
        return None
