"""Request and response bodies of the HTTP API, as msgspec Structs.

Handlers decode requests straight into these types and answer with them; `/openapi.json` is
generated from the same types, so the document cannot drift from what the server does. Limits
come from the engine's constants; the engine still checks its own rules behind them.
"""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from actors.billing import DESCRIPTION_LENGTH_MAX, TRANSACTIONS_PAGE_MAX, USAGE_BATCH_EVENTS_MAX
from api.routes import Header
from engine.account import (
    AUTO_REFILL_AMOUNT_CENTS_DEFAULT,
    AUTO_REFILL_AMOUNT_CENTS_MAX,
    AUTO_REFILL_AMOUNT_CENTS_MIN,
    AUTO_REFILL_TRIGGER_CENTS_DEFAULT,
    AUTO_REFILL_TRIGGER_CENTS_MIN,
)
from engine.ids import AGENT_ID_LENGTH_MAX, KEY_LENGTH_MAX
from engine.metering import METADATA_ENTRIES_MAX, METADATA_VALUE_LENGTH_MAX
from engine.money import AMOUNT_CENTS_MAX, AMOUNT_CENTS_MIN, COST_MICROS_MAX
from engine.reservations import RESERVATION_TTL_S_DEFAULT, RESERVATION_TTL_S_MAX
from engine.usage import Metric

Key = Annotated[str, Meta(min_length=1, max_length=KEY_LENGTH_MAX,
                          description="an idempotency key: printable characters")]
AmountCents = Annotated[int, Meta(ge=AMOUNT_CENTS_MIN, le=AMOUNT_CENTS_MAX)]
CostCents = Annotated[int, Meta(ge=0, le=AMOUNT_CENTS_MAX)]
CostMicros = Annotated[int, Meta(ge=0, le=COST_MICROS_MAX)]
AgentIdText = Annotated[str, Meta(min_length=1, max_length=AGENT_ID_LENGTH_MAX,
                                  pattern=r"^[A-Za-z0-9._:@/-]+$")]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=METADATA_VALUE_LENGTH_MAX)] | int | bool | None
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(
    max_length=METADATA_ENTRIES_MAX, description="a small flat map stored with the entry")]
Timestamp = Annotated[str, Meta(description="RFC 3339 date-time, UTC, milliseconds",
                                extra_json_schema={"format": "date-time"})]


def iso_ms(epoch_ms: int) -> str:
    """The wire form of a time: RFC 3339, UTC, milliseconds."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Request bodies: unknown fields are refused, not ignored (a typo must not pass)."""


class Reply(msgspec.Struct, frozen=True):
    """Response bodies."""


class Query(msgspec.Struct, frozen=True):
    """Query parameters; unknown ones are ignored, as HTTP clients and proxies add some."""


# --- requests -------------------------------------------------------------------------------


class EmptyBody(Body):
    pass


class AutoRefillBody(Body):
    enabled: bool
    trigger_below_cents: Annotated[int, Meta(ge=AUTO_REFILL_TRIGGER_CENTS_MIN,
                                             le=AMOUNT_CENTS_MAX)] = (
        AUTO_REFILL_TRIGGER_CENTS_DEFAULT)
    refill_amount_cents: Annotated[int, Meta(ge=AUTO_REFILL_AMOUNT_CENTS_MIN,
                                             le=AUTO_REFILL_AMOUNT_CENTS_MAX)] = (
        AUTO_REFILL_AMOUNT_CENTS_DEFAULT)


class CreditsAddBody(Body):
    user_id: uuid.UUID
    amount_cents: AmountCents
    reason: Annotated[str, Meta(max_length=DESCRIPTION_LENGTH_MAX)] = ""
    type: Literal["bonus", "refund", "adjustment"] = "bonus"


class PurchaseBody(Body):
    amount_usd: Annotated[Decimal, Meta(
        description="US dollars to spend, 5 … 1000, at most 2 decimals (1 credit = $0.01)")]


class UsageBody(Body):
    """One usage event, priced by `metric` unless `cost_cents` or `cost_micros` is given."""

    event_id: Key
    user_id: uuid.UUID
    metric: Metric | None = None
    cost_cents: CostCents | None = None
    cost_micros: CostMicros | None = None
    agent_id: AgentIdText | None = None
    timestamp: datetime.datetime | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class UsageBatchBody(Body):
    # Kept raw so that one bad event fails alone: each is decoded as a UsageBody by itself.
    events: Annotated[list[msgspec.Raw], Meta(
        min_length=1, max_length=USAGE_BATCH_EVENTS_MAX,
        extra_json_schema={"items": {"$ref": "#/components/schemas/UsageBody"}})]


class UsageCheckBody(Body):
    user_id: uuid.UUID
    required_cents: CostCents


class QuoteBody(Body):
    metric: Metric


class ReserveBody(Body):
    """Hold `amount_cents`, or the price of an estimated `metric` (send exactly one)."""

    reservation_id: Key
    user_id: uuid.UUID
    amount_cents: AmountCents | None = None
    metric: Metric | None = None
    ttl_seconds: Annotated[int, Meta(ge=1, le=RESERVATION_TTL_S_MAX)] = RESERVATION_TTL_S_DEFAULT
    metadata: Metadata = msgspec.field(default_factory=dict)


class CommitBody(Body):
    event_id: Key | None = None
    metric: Metric | None = None
    cost_cents: CostCents | None = None
    cost_micros: CostMicros | None = None
    agent_id: AgentIdText | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


# --- query parameters and headers ----------------------------------------------------------

OFFSET_MAX = 10**9
PAYMENTS_PAGE_MAX = 100
PAYMENTS_PAGE_DEFAULT = 10


class TransactionsQuery(Query):
    limit: Annotated[int, Meta(ge=1, le=TRANSACTIONS_PAGE_MAX)] = 50
    offset: Annotated[int, Meta(ge=0, le=OFFSET_MAX)] = 0
    before: Annotated[str, Meta(
        max_length=26, description="a transaction id (ULID): entries older than it; "
                                   "empty or absent: from the newest")] = ""


class PaymentsQuery(Query):
    limit: Annotated[int, Meta(ge=1, le=PAYMENTS_PAGE_MAX)] = PAYMENTS_PAGE_DEFAULT
    starting_after: Annotated[str, Meta(
        max_length=255, description="a payment id: the page after it; empty or absent: "
                                    "the first page")] = ""


IDEMPOTENCY_KEY = Header("Idempotency-Key",
                         {"type": "string", "minLength": 1, "maxLength": KEY_LENGTH_MAX})
SERVICE_NAME = Header("X-Service-Name", {"type": "string", "maxLength": 64})


# --- responses ------------------------------------------------------------------------------


class ErrorDetail(Reply):
    code: str
    message: str
    details: dict[str, Any]


class ErrorReply(Reply):
    error: ErrorDetail


class HealthReply(Reply):
    status: str
    timestamp: Timestamp


class ReadyReply(Reply):
    status: str


class AutoRefillReply(Reply):
    enabled: bool
    trigger_below_cents: int
    refill_amount_cents: int
    refill_in_flight: bool
    last_error: str | None


class AccountReply(Reply):
    user_id: uuid.UUID
    balance_cents: int
    balance_formatted: str
    held_cents: int
    available_cents: int
    unbilled_micros: int
    lifetime_purchased_cents: int
    lifetime_granted_cents: int
    lifetime_used_cents: int
    plan: str
    status: Literal["active", "closed"]
    overdraft_limit_cents: int
    auto_refill: AutoRefillReply
    stripe_customer_id: str | None
    created_at: Timestamp
    updated_at: Timestamp


class DeletedReply(Reply):
    deleted: bool


class BalanceReply(Reply):
    user_id: uuid.UUID
    balance_cents: int
    balance_formatted: str
    held_cents: int
    available_cents: int
    plan: str


class TransactionReply(Reply):
    id: str
    type: str
    amount_cents: int
    balance_after_cents: int
    description: str
    metadata: dict[str, Any]
    event_id: str | None
    created_at: Timestamp


class TransactionPageReply(Reply):
    transactions: list[TransactionReply]
    has_more: bool
    next_before: str | None


class CreditReply(Reply):
    success: bool
    user_id: uuid.UUID
    transaction_id: str
    type: str
    amount_cents: int
    balance_cents: int
    balance_formatted: str


class UsageReply(Reply):
    success: bool
    event_id: str
    user_id: uuid.UUID
    transaction_id: str
    cost_cents: int
    cost_micros: int
    balance_cents: int
    held_cents: int
    available_cents: int


class UsageFailure(Reply):
    success: bool
    event_id: str | None
    error: ErrorDetail


class UsageBatchReply(Reply):
    results: Annotated[list[dict[str, Any]], Meta(extra_json_schema={"items": {"anyOf": [
        {"$ref": "#/components/schemas/UsageReply"},
        {"$ref": "#/components/schemas/UsageFailure"},
    ]}})]
    processed: int
    failed: int


class UsageCheckReply(Reply):
    sufficient: bool
    balance_cents: int
    available_cents: int
    required_cents: int


class QuoteReply(Reply):
    cost_micros: int
    cost_cents: int
    cost_cents_exact: Annotated[str, Meta(description="exact credits as a decimal string")]
    provider: str | None
    model: str | None
    default_price: bool
    long_context: bool
    min_charge_applied: bool


ReservationStatusText = Literal["held", "committed", "released", "expired"]


class ReservationHeldReply(Reply):
    reservation_id: str
    user_id: uuid.UUID
    status: ReservationStatusText
    held_cents: int
    balance_cents: int
    available_cents: int
    expires_at: Timestamp


class ReservationReply(Reply):
    reservation_id: str
    user_id: uuid.UUID
    status: ReservationStatusText
    held_cents: int
    amount_cents: int
    released_cents: int
    created_at: Timestamp
    expires_at: Timestamp
    closed_at: Timestamp | None
    transaction_id: str | None
    cost_cents: int | None
    cost_micros: int | None
    metadata: dict[str, Any]


class CommitReply(UsageReply):
    reservation_id: str
    released_cents: int


class ReleaseReply(Reply):
    reservation_id: str
    user_id: uuid.UUID
    status: ReservationStatusText
    released_cents: int
    balance_cents: int
    available_cents: int


class PurchaseReply(Reply):
    checkout_url: str
    session_id: str
    credits: int
    price_cents: int


class PaymentReply(Reply):
    id: str
    amount_cents: int
    currency: str
    status: str
    kind: str | None
    credits: int | None
    description: str | None
    created_at: Timestamp


class PaymentsPageReply(Reply):
    payments: list[PaymentReply]
    has_more: bool


class WebhookReply(Reply):
    received: bool
    outcome: Annotated[str, Meta(description="applied, duplicate, ignored or recorded")]


class SubscriptionCheckoutBody(Body):
    plan: Annotated[str, Meta(min_length=1, max_length=64)]


class AdminSubscriptionBody(Body):
    """Put an account on a plan, managed by us (renewed by our timer); `free` ends it.
    `monthly_credits` is required for a custom plan (Enterprise) and refused otherwise."""

    user_id: uuid.UUID
    plan: Annotated[str, Meta(min_length=1, max_length=64)]
    monthly_credits: CostCents | None = None


class SubscriptionReply(Reply):
    plan: str
    plan_name: str
    status: Literal["none", "active", "cancelled", "past_due"]
    subscription_id: str | None
    managed_by: Literal["stripe", "admin"] | None
    monthly_credits: int
    current_period_start: Timestamp | None
    current_period_end: Timestamp | None


class CheckoutReply(Reply):
    checkout_url: str
    session_id: str


class PortalReply(Reply):
    url: str
