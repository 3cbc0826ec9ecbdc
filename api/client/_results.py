"""The typed results of the client's calls: one frozen `msgspec.Struct` per response shape.

No `from __future__ import annotations` here: msgspec resolves string annotations in the
module a class's `__module__` names, and `api.client` renames that to itself, where `Any`
and the like are not defined; real annotation objects need no resolving.
"""

from typing import Any

import msgspec


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the typed results; unknown response fields are ignored so servers can grow."""


class Health(_Result):
    status: str
    timestamp: str | None = None
    service: str | None = None
    version: str | None = None


class Ready(_Result):
    status: str


class AutoRefill(_Result):
    enabled: bool
    trigger_below_cents: int
    refill_amount_cents: int
    refill_in_flight: bool = False
    last_error: str | None = None


class Purchase(_Result):
    checkout_url: str
    session_id: str
    credits: int
    price_cents: int


class Payment(_Result):
    id: str
    amount_cents: int
    currency: str
    status: str
    kind: str | None = None
    credits: int | None = None
    description: str | None = None
    created_at: str | None = None


class PaymentsPage(_Result):
    payments: list[Payment]
    has_more: bool


class SubscriptionState(_Result):
    plan: str
    status: str
    plan_name: str | None = None
    subscription_id: str | None = None
    managed_by: str | None = None
    monthly_credits: int = 0
    current_period_start: str | None = None
    current_period_end: str | None = None


class Checkout(_Result):
    checkout_url: str
    session_id: str


class Portal(_Result):
    url: str


class NextExpiry(_Result):
    amount_cents: int
    expires_at: str


class Lot(_Result):
    """One credit lot (see the server's README "Credit lots")."""

    lot_id: str
    source: str
    category: str
    priority: int
    original_cents: int
    remaining_cents: int
    effective_at: str | None = None
    expires_at: str | None = None
    in_effect: bool = True
    drawn_cents: int = 0
    expired_cents: int = 0
    voided_cents: int = 0
    held_cents: int = 0
    paid_usd_cents: int | None = None
    rollover_cents: int = 0
    rollover_expires_at: str | None = None


class Lots(_Result):
    user_id: str
    lots: list[Lot]
    debt_cents: int = 0
    as_of: str | None = None


class LotDraw(_Result):
    lot_id: str
    amount_cents: int


class SpendCap(_Result):
    scope: str
    name: str | None
    period: str
    limit_cents: int
    hard: bool
    spent_cents: int = 0
    spent_micros: int = 0
    held_cents: int = 0
    remaining_cents: int = 0
    reached: bool = False
    window_start: str | None = None
    resets_at: str | None = None


class SpendControls(_Result):
    user_id: str
    timezone: str
    caps: list[SpendCap] = msgspec.field(default_factory=list)
    low_balance_cents: list[int] = msgspec.field(default_factory=list)


class WebhookEndpoint(_Result):
    endpoint_id: str
    url: str
    event_types: list[str]
    created_at: str | None = None
    # Only in the answer to create and rotate: keep it, it is not shown again.
    secret: str | None = None


class WebhookEndpoints(_Result):
    endpoints: list[WebhookEndpoint]


class ParkedWebhook(_Result):
    sequence: int
    event_id: str
    event_type: str
    user_id: str
    attempts: int
    last_error: str


class ParkedWebhooks(_Result):
    endpoint_id: str
    parked: list[ParkedWebhook]


class Resent(_Result):
    resent: int


class BillingAccount(_Result):
    user_id: str
    balance_cents: int
    balance_formatted: str
    held_cents: int
    available_cents: int
    unbilled_micros: int = 0
    lifetime_purchased_cents: int = 0
    lifetime_granted_cents: int = 0
    lifetime_used_cents: int = 0
    plan: str | None = None
    status: str = "active"
    overdraft_limit_cents: int = 0
    auto_refill: AutoRefill | None = None
    stripe_customer_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    paid_cents: int = 0
    promotional_cents: int = 0
    next_expiry: NextExpiry | None = None
    debt_cents: int = 0
    lots: list[Lot] = msgspec.field(default_factory=list)
    spend_caps: list[SpendCap] = msgspec.field(default_factory=list)


class Deleted(_Result):
    deleted: bool


class Balance(_Result):
    user_id: str
    balance_cents: int
    balance_formatted: str
    held_cents: int
    available_cents: int
    plan: str | None = None
    paid_cents: int = 0
    promotional_cents: int = 0
    next_expiry: NextExpiry | None = None
    spend_caps: list[SpendCap] = msgspec.field(default_factory=list)


class Transaction(_Result):
    id: str
    type: str
    amount_cents: int
    balance_after_cents: int
    # The original service's name for `type`.
    transaction_type: str | None = None
    description: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    event_id: str | None = None
    created_at: str | None = None
    lot_draws: list[LotDraw] = msgspec.field(default_factory=list)


class TransactionPage(_Result):
    transactions: list[Transaction]
    has_more: bool
    next_before: str | None = None


class CreditResult(_Result):
    user_id: str
    transaction_id: str
    type: str
    amount_cents: int
    balance_cents: int
    # Absent when the result is the original of a replayed Idempotency-Key.
    balance_formatted: str | None = None


class UsageResult(_Result):
    event_id: str
    user_id: str
    transaction_id: str
    cost_cents: int
    cost_micros: int
    balance_cents: int
    held_cents: int
    available_cents: int


class CommitResult(UsageResult, frozen=True, kw_only=True):
    reservation_id: str
    released_cents: int


class ErrorInfo(_Result):
    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class BatchItem(_Result):
    """One event of a batch: `result` on success, `error` otherwise."""

    success: bool
    event_id: str | None
    result: UsageResult | None = None
    error: ErrorInfo | None = None


class BatchResult(_Result):
    results: list[BatchItem]
    processed: int
    failed: int


class BalanceCheck(_Result):
    sufficient: bool
    balance_cents: int
    available_cents: int
    required_cents: int
    spendable_micros: int = 0
    within_caps: bool = True
    max_output_tokens: int | None = None


class Quote(_Result):
    cost_micros: int
    cost_cents: int
    cost_cents_exact: str | None = None
    provider: str | None = None
    model: str | None = None
    default_price: bool = False
    long_context: bool = False
    min_charge_applied: bool = False
    currency: str = "USD_CENTS"


class ReservationHeld(_Result):
    reservation_id: str
    user_id: str
    status: str
    held_cents: int
    # None when replayed from a duplicate: the server's stored record has no balance.
    balance_cents: int | None = None
    available_cents: int | None = None
    expires_at: str | None = None
    requested_cents: int | None = None
    clamped: bool = False
    max_output_tokens: int | None = None


class Reservation(_Result):
    reservation_id: str
    user_id: str
    status: str
    held_cents: int
    amount_cents: int
    released_cents: int = 0
    created_at: str | None = None
    expires_at: str | None = None
    closed_at: str | None = None
    transaction_id: str | None = None
    cost_cents: int | None = None
    cost_micros: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class ReleaseResult(_Result):
    reservation_id: str
    user_id: str
    status: str
    released_cents: int
    # None when replayed from a duplicate: the server's stored record has no balance.
    balance_cents: int | None = None
    available_cents: int | None = None


class GrantResult(_Result, kw_only=True):
    """A promotional grant call: `granted` False says why in `reason`."""

    granted: bool
    reason: str | None = None
    user_id: str
    amount_cents: int
    balance_cents: int
    transaction_id: str | None = None


class ReferralGrantResult(_Result, kw_only=True):
    granted: bool
    reason: str | None = None
    invitee_amount_cents: int
    inviter_amount_cents: int
    invitee_balance_cents: int
    inviter_balance_cents: int


class BalanceEvent(_Result):
    """A committed balance, pushed by `GET /ws/balance` (camelCase as the original sent)."""

    type: str
    userId: str  # the wire spells these fields in camelCase
    balanceCents: int
    balanceFormatted: str
    heldCents: int = 0
    availableCents: int = 0
    seq: int = 0
class UsageTotals(_Result):
    events: int
    cost_micros: int
    cost_credits: str
    debited_cents: int
    input_tokens: int = 0
    output_tokens: int = 0


class UsageGroup(_Result):
    key: str
    totals: UsageTotals


class UsageSummary(_Result):
    user_id: str
    group_by: str
    from_: str = msgspec.field(name="from")
    to: str
    groups: list[UsageGroup]
    total: UsageTotals
