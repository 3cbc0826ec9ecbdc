"""Request and response bodies of the HTTP API, as msgspec Structs.

Handlers decode requests straight into these types and answer with them; `/openapi.json` is
generated from the same types, so the document cannot drift from what the server does. Limits
come from the engine's constants; the engine still checks its own rules behind them.
"""

from __future__ import annotations

import datetime
import functools
import re
import sys
import typing
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from actors.billing import TRANSACTIONS_PAGE_MAX, USAGE_BATCH_EVENTS_MAX
from actors.lots import DESCRIPTION_LENGTH_MAX
from api.auth import TOKEN_LENGTH_MAX
from api.routes import Header
from engine.account import (
    AUTO_REFILL_AMOUNT_CENTS_DEFAULT,
    AUTO_REFILL_AMOUNT_CENTS_MAX,
    AUTO_REFILL_AMOUNT_CENTS_MIN,
    AUTO_REFILL_TRIGGER_CENTS_DEFAULT,
    AUTO_REFILL_TRIGGER_CENTS_MIN,
)
from engine.caps import (
    CAPS_PER_ACCOUNT_MAX,
    LOW_BALANCE_THRESHOLDS_MAX,
    SCOPE_NAME_LENGTH_MAX,
    timezone_names,
)
from engine.errors import require
from engine.ids import AGENT_ID_LENGTH_MAX, EMAIL_LENGTH_MAX, EMAIL_PATTERN, KEY_LENGTH_MAX
from engine.lots import PRIORITY_MAX, PRIORITY_MIN
from engine.metadata import (
    METADATA_DEPTH_MAX,
    METADATA_ENTRIES_MAX,
    METADATA_KEY_LENGTH_MAX,
    METADATA_VALUE_LENGTH_MAX,
)
from engine.money import AMOUNT_CENTS_MAX, AMOUNT_CENTS_MIN, COST_MICROS_MAX
from engine.notifications import EventType
from engine.payments import PURCHASE_USD_MAX, PURCHASE_USD_MIN
from engine.reservations import RESERVATION_TTL_S_DEFAULT, RESERVATION_TTL_S_MAX
from engine.usage import (
    NAME_LENGTH_MAX,
    QUANTITY_DECIMALS_MAX,
    QUANTITY_MAX,
    Metric,
    Quantity,
    TokenCount,
)
from engine.webhooks import URL_LENGTH_MAX, URL_PATTERN

# --- text rules the document states by reference ----------------------------------------------

# Components of the document (added by api/openapi.py): one copy of each long pattern.
PRINTABLE_REF = "#/components/schemas/PrintableText"
PATH_SEGMENT_REF = "#/components/schemas/PathSegment"


@functools.cache
def printable_pattern(excluded: str = "") -> str:
    """A pattern for text of the characters `str.isprintable()` accepts (the rule of
    `engine.ids.parse_key`), less `excluded`, built from this Python's Unicode tables so that
    the document states exactly what the server checks. Non-ASCII range ends are written as
    the characters themselves: ECMA-262 (with Unicode semantics) and Python's `re` read those
    alike, where their escapes for characters beyond U+FFFF differ."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if chr(code).isprintable() and chr(code) not in excluded:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))

    def spelled(code: int) -> str:
        return f"\\x{code:02x}" if code < 0x80 else chr(code)

    parts = (spelled(low) if low == high else f"{spelled(low)}-{spelled(high)}"
             for low, high in ranges)
    return f"^[{''.join(parts)}]*$"


PRINTABLE = {"allOf": [{"$ref": PRINTABLE_REF}]}


# --- decimals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecimalRule:
    """A decimal taken as a JSON number or as a string: its bounds, its decimals, and
    `spellings`, the strings that name a value within them. The document states all of it;
    the server checks a string's spelling against `spellings` (`api.http.BodyDecoder`) and
    the engine checks the value."""

    minimum: Decimal
    maximum: Decimal
    decimals: int
    spellings: re.Pattern[str]

    def schema(self) -> dict[str, Any]:
        # `minimum` and friends bind numbers only, `pattern` strings only.
        return {"type": ["string", "number"], "minimum": int(self.minimum),
                "maximum": int(self.maximum), "multipleOf": 10.0 ** -self.decimals,
                "pattern": f"^(?:{self.spellings.pattern})$"}


def _exponent(power: int) -> str:
    """`power` as an exponent the way Python (`str(Decimal)`, `repr(float)`) and JavaScript
    write it: e or E, a sign (optional when positive), perhaps one leading zero."""
    sign = "[+-]?" if power == 0 else "-" if power < 0 else r"\+?"
    return f"[eE]{sign}0?{abs(power)}"


def _quantity_spellings() -> re.Pattern[str]:
    """Plain notation, or one digit, decimals and an exponent: every way the engine's
    `Quantity` (0 … 10**top, at most `decimals` decimals) comes out of `str(Decimal)`
    (which writes tiny values as `1E-7`) or `repr(float)`."""
    top, decimals = len(str(int(QUANTITY_MAX))) - 1, QUANTITY_DECIMALS_MAX
    require(10**top == QUANTITY_MAX, "the spellings below assume a power of ten")
    plain = (rf"(?:0|[1-9][0-9]{{0,{top - 1}}})(?:\.[0-9]{{1,{decimals}}})?"
             rf"|10{{{top}}}(?:\.0{{1,{decimals}}})?")
    scientific = []
    for power in range(-decimals, top + 1):
        fraction = decimals + power  # digits after the point: value decimals stay in bounds
        tail = rf"(?:\.[0-9]{{1,{fraction}}})?" if fraction else ""
        zeros = rf"(?:\.0{{1,{fraction}}})?"
        lead = f"(?:0{tail}|1{zeros})" if power == top else f"[0-9]{tail}"
        scientific.append(lead + _exponent(power))
    return re.compile("|".join([plain, *scientific]))


def _usd_spellings() -> re.Pattern[str]:
    """Plain notation between the purchase bounds, with at most two decimals."""
    require((PURCHASE_USD_MIN, PURCHASE_USD_MAX) == (5, 1000), "the pattern spells 5 … 1000")
    return re.compile(r"(?:[5-9]|[1-9][0-9]{1,2})(?:\.[0-9]{1,2})?|1000(?:\.0{1,2})?")


UsdAmount = Annotated[Decimal, Meta(
    description=f"US dollars to spend, {PURCHASE_USD_MIN} … {PURCHASE_USD_MAX}, at most 2 "
                "decimals (1 credit = $0.01), as a JSON number or a string")]

# Every Decimal a body holds, by its annotation: the document and the decoder read it here.
DECIMAL_RULES: dict[Any, DecimalRule] = {
    Quantity: DecimalRule(Decimal(0), QUANTITY_MAX, QUANTITY_DECIMALS_MAX,
                          _quantity_spellings()),
    UsdAmount: DecimalRule(PURCHASE_USD_MIN, PURCHASE_USD_MAX, 2, _usd_spellings()),
}

Key = Annotated[str, Meta(min_length=1, max_length=KEY_LENGTH_MAX,
                          description="an idempotency key: printable characters",
                          extra_json_schema=PRINTABLE)]
AmountCents = Annotated[int, Meta(ge=AMOUNT_CENTS_MIN, le=AMOUNT_CENTS_MAX)]
CostCents = Annotated[int, Meta(ge=0, le=AMOUNT_CENTS_MAX)]
CostMicros = Annotated[int, Meta(ge=0, le=COST_MICROS_MAX)]
ModelName = Annotated[str, Meta(min_length=1, max_length=NAME_LENGTH_MAX)]
AgentIdText = Annotated[str, Meta(min_length=1, max_length=AGENT_ID_LENGTH_MAX,
                                  pattern=r"^[A-Za-z0-9._:@/-]+$")]
# engine/metadata.py's rules, level by level (the top object is level 1).
MetadataKey = Annotated[str, Meta(min_length=1, max_length=METADATA_KEY_LENGTH_MAX)]
MetadataScalar = (Annotated[str, Meta(max_length=METADATA_VALUE_LENGTH_MAX)] | int | float
                  | bool | None)
require(METADATA_DEPTH_MAX == 3, "the metadata types below spell three levels")
MetadataLevel3 = (
    MetadataScalar
    | Annotated[list[MetadataScalar], Meta(max_length=METADATA_ENTRIES_MAX)]
    | Annotated[dict[MetadataKey, MetadataScalar], Meta(max_length=METADATA_ENTRIES_MAX)])
MetadataValue = (
    MetadataScalar
    | Annotated[list[MetadataLevel3], Meta(max_length=METADATA_ENTRIES_MAX)]
    | Annotated[dict[MetadataKey, MetadataLevel3], Meta(max_length=METADATA_ENTRIES_MAX)])
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(
    max_length=METADATA_ENTRIES_MAX,
    description="any JSON object, stored verbatim with the entry: at most "
                f"{METADATA_ENTRIES_MAX} members per object or array, "
                f"{METADATA_DEPTH_MAX} levels, strings of at most "
                f"{METADATA_VALUE_LENGTH_MAX} characters")]
Timestamp = Annotated[str, Meta(description="RFC 3339 date-time, UTC, milliseconds",
                                extra_json_schema={"format": "date-time"})]
# A path parameter naming an account (api/openapi.py documents it so).
USER_ID_PATH_SCHEMA = {"type": "string", "format": "uuid",
                       "pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                                  "[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"}
Priority = Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX,
                               description="burn order: lower numbers are spent first")]
LotIdText = Annotated[str, Meta(min_length=26, max_length=26,
                                pattern="^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$",
                                description="a lot id: the ULID of the entry that opened it")]
# An RFC 3339 date-time as msgspec reads it: the pattern states the syntax (which `format`,
# an annotation in JSON Schema 2020-12, does not), msgspec then checks the calendar. No leap
# second and no year 0: Python's datetime has neither.
DateTimeText = Annotated[str, Meta(
    pattern=r"^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
            r"(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$",
    description="when the usage happened: RFC 3339 with a time zone offset",
    extra_json_schema={"format": "date-time"})]
LotTimeText = Annotated[str, Meta(
    pattern=DateTimeText.__metadata__[0].pattern,
    description="RFC 3339 with a time zone offset", extra_json_schema={"format": "date-time"})]


def iso_ms(epoch_ms: int) -> str:
    """The wire form of a time: RFC 3339, UTC, milliseconds."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Request bodies: unknown fields are refused, not ignored (a typo must not pass).

    `json_schema_rules` states rules between fields that the engine checks (and msgspec
    cannot), in JSON Schema; the document adds them to the body's schema.
    """

    json_schema_rules: ClassVar[dict[str, Any]] = {}


def present(name: str) -> dict[str, Any]:
    """JSON Schema for "`name` is present and not null"."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def absent(name: str) -> dict[str, Any]:
    """JSON Schema for "`name` is absent or null" (the engine reads null as absent)."""
    return {"properties": {name: {"type": "null"}}}


# `engine.metering.usage_command`: a metric or a cost prices the event, and at most one cost.
PRICED_ONCE = {"allOf": [
    {"anyOf": [present("metric"), present("cost_cents"), present("cost_micros")]},
    {"anyOf": [absent("cost_cents"), absent("cost_micros")]},
]}


class Reply(msgspec.Struct, frozen=True):
    """Response bodies."""


class Query(msgspec.Struct, frozen=True):
    """Query parameters; unknown ones are ignored, as HTTP clients and proxies add some."""


# --- requests -------------------------------------------------------------------------------


class EmptyBody(Body):
    pass


class AccountCreateBody(Body):
    """`{}` is fine; `email` names the account's Stripe and Lago customers."""

    email: Annotated[str, Meta(max_length=EMAIL_LENGTH_MAX, pattern=EMAIL_PATTERN)] | None = None


class AutoRefillBody(Body):
    enabled: bool
    trigger_below_cents: Annotated[int, Meta(ge=AUTO_REFILL_TRIGGER_CENTS_MIN,
                                             le=AMOUNT_CENTS_MAX)] = (
        AUTO_REFILL_TRIGGER_CENTS_DEFAULT)
    refill_amount_cents: Annotated[int, Meta(ge=AUTO_REFILL_AMOUNT_CENTS_MIN,
                                             le=AUTO_REFILL_AMOUNT_CENTS_MAX)] = (
        AUTO_REFILL_AMOUNT_CENTS_DEFAULT)


class CreditsAddBody(Body):
    """A grant; the lot's attributes not given are the defaults of its `type`."""

    user_id: uuid.UUID
    amount_cents: AmountCents
    reason: Annotated[str, Meta(max_length=DESCRIPTION_LENGTH_MAX)] = ""
    type: Literal["bonus", "refund", "adjustment"] = "bonus"
    category: Literal["paid", "promotional"] | None = None
    priority: Priority | None = None
    effective_at: LotTimeText | None = None
    expires_at: LotTimeText | None = None


class LotVoidBody(Body):
    user_id: uuid.UUID
    lot_id: LotIdText
    reason: Annotated[str, Meta(max_length=DESCRIPTION_LENGTH_MAX)] = ""


class CreditsDebitBody(Body):
    user_id: uuid.UUID
    amount_cents: AmountCents
    reason: Annotated[str, Meta(max_length=DESCRIPTION_LENGTH_MAX)] = ""


class UsageReverseBody(Body):
    event_id: Key
    reason: Annotated[str, Meta(max_length=DESCRIPTION_LENGTH_MAX)] = ""


class PurchaseBody(Body):
    amount_usd: UsdAmount


class UsageBody(Body):
    """One usage event, priced by `metric` unless `cost_cents` or `cost_micros` is given."""

    event_id: Key
    user_id: uuid.UUID
    metric: Metric | None = None
    cost_cents: CostCents | None = None
    cost_micros: CostMicros | None = None
    agent_id: AgentIdText | None = None
    timestamp: DateTimeText | None = None
    metadata: Metadata | None = None
    # The original service's plan flag, in its four spellings: read, with no effect on the
    # price (plans price purchases here, not usage).
    zero_pro_user: bool | None = None
    zero_pro_user_camel: bool | None = msgspec.field(default=None, name="zeroProUser")
    is_zero_pro: bool | None = None
    is_zero_pro_camel: bool | None = msgspec.field(default=None, name="isZeroPro")

    json_schema_rules: ClassVar[dict[str, Any]] = PRICED_ONCE


class UsageBatchBody(Body):
    # Kept raw so that one bad event fails alone: each is decoded as a UsageBody by itself.
    events: Annotated[list[msgspec.Raw], Meta(
        min_length=1, max_length=USAGE_BATCH_EVENTS_MAX,
        extra_json_schema={"items": {"$ref": "#/components/schemas/UsageBody"}})]


class PromptBody(Body):
    """The model call an affordability question is about: its model and prompt size."""

    provider: ModelName
    model: ModelName
    input_tokens: TokenCount = 0


class UsageCheckBody(Body):
    """Would `required_cents` be spendable (balance and caps)? With `provider` and `model`
    (the original service's fields) and no positive `required_cents`, the requirement is the
    model reserve: the price of 2,000 input and 1,000 output tokens of that model (rounded up
    to credits, at least 1). With a `prompt` (provider, model and input tokens), the reply
    also says how many output tokens the caller can afford."""

    user_id: uuid.UUID
    required_cents: CostCents = 0
    provider: ModelName | None = None
    model: ModelName | None = None
    agent_id: AgentIdText | None = None
    prompt: PromptBody | None = None


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
    agent_id: AgentIdText | None = None
    # Hold what the balance and the spend caps allow when that is less than asked.
    clamp: bool = False
    # The call the hold is for: the reply says how many output tokens the hold pays for.
    prompt: PromptBody | None = None

    # `Billing.reserve`: exactly one of the two sizes the hold.
    json_schema_rules: ClassVar[dict[str, Any]] = {
        "oneOf": [present("amount_cents"), present("metric")]}


EventTypeText = Literal[
    "balance.low", "balance.depleted", "balance.recovered", "spend_limit.reached",
    "auto_refill.succeeded", "auto_refill.failed", "auto_refill.disabled",
    "subscription.renewed", "subscription.past_due", "subscription.ended",
    "payment.succeeded", "payment.refunded", "credits.expiring", "credits.expired"]
require(set(typing.get_args(EventTypeText)) == {kind.value for kind in EventType},
        "EventTypeText lists every engine.notifications.EventType")


class WebhookEndpointBody(Body):
    """An endpoint for outbound webhooks: where to POST and which events."""

    url: Annotated[str, Meta(max_length=URL_LENGTH_MAX, pattern=URL_PATTERN)]
    event_types: Annotated[list[EventTypeText], Meta(min_length=1,
                                                     max_length=len(EventType))]


class WebhookResendBody(Body):
    """Re-send these parked events (their sequences), or all of the endpoint's."""

    sequences: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(max_length=10_000)] | None = None


class CapBody(Body):
    """One spend cap: `hard` refuses what would pass the limit, soft only notifies."""

    period: Literal["day", "week", "month"]
    limit_cents: AmountCents
    hard: bool = True
    scope: Literal["account", "agent", "service"] = "account"
    name: Annotated[str, Meta(min_length=1, max_length=SCOPE_NAME_LENGTH_MAX)] | None = None

    # `engine.caps.validated_caps`: an agent or service cap names its agent or key; an
    # account cap names nothing.
    json_schema_rules: ClassVar[dict[str, Any]] = {"anyOf": [
        {"properties": {"scope": {"const": "account"}, "name": {"type": "null"}}},
        {"required": ["scope", "name"],
         "properties": {"scope": {"enum": ["agent", "service"]}, "name": {"type": "string"}}},
    ]}


class SpendControlsBody(Body):
    """Replace the caps (what a kept cap spent in its current window stays counted)."""

    caps: Annotated[list[CapBody], Meta(max_length=CAPS_PER_ACCOUNT_MAX)]
    low_balance_cents: Annotated[list[AmountCents], Meta(
        max_length=LOW_BALANCE_THRESHOLDS_MAX)] | None = None
    timezone: Annotated[str, Meta(extra_json_schema={
        "enum": sorted(timezone_names()), "description": "an IANA time zone name"})] | None = None


class CommitBody(Body):
    event_id: Key | None = None
    metric: Metric | None = None
    cost_cents: CostCents | None = None
    cost_micros: CostMicros | None = None
    agent_id: AgentIdText | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)

    json_schema_rules: ClassVar[dict[str, Any]] = PRICED_ONCE


# --- query parameters and headers ----------------------------------------------------------

OFFSET_MAX = 10**9
# What `engine.ids.parse_transaction_id` reads: 26 Crockford base32 digits of 128 bits.
ULID_TEXT = "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"
PAYMENTS_PAGE_MAX = 100
PAYMENTS_PAGE_DEFAULT = 10


class UsageSummaryQuery(Query):
    """UTC days, both included (default: the 30 days to today); at most 366 are covered."""

    from_: datetime.date | None = msgspec.field(default=None, name="from")
    to: datetime.date | None = None
    group_by: Literal["day", "model", "agent"] = "day"


class TransactionsQuery(Query):
    limit: Annotated[int, Meta(ge=1, le=TRANSACTIONS_PAGE_MAX)] = 50
    offset: Annotated[int, Meta(ge=0, le=OFFSET_MAX)] = 0
    before: Annotated[str, Meta(
        pattern=f"^(?:{ULID_TEXT})?$",
        description="a transaction id (ULID): entries older than it; empty or absent: from "
                    "the newest")] = ""


class BalanceSocketQuery(Query):
    token: Annotated[str, Meta(max_length=TOKEN_LENGTH_MAX, description="the user's JWT")] = ""


class PaymentsQuery(Query):
    limit: Annotated[int, Meta(ge=1, le=PAYMENTS_PAGE_MAX)] = PAYMENTS_PAGE_DEFAULT
    starting_after: Annotated[str, Meta(
        max_length=255, description="a payment id: the page after it; empty or absent: "
                                    "the first page")] = ""


IDEMPOTENCY_KEY = Header(
    "Idempotency-Key", {"type": "string", "maxLength": KEY_LENGTH_MAX, **PRINTABLE},
    description="makes the grant idempotent; empty or absent: not idempotent")
SERVICE_NAME = Header(
    "X-Service-Name", {"type": "string"},
    description="the calling service, for metrics (its first 64 characters; at most 50 "
                "names are counted apart)")

# Webhooks: verified over the exact bytes, so their bodies are documented, not decoded.
STRIPE_SIGNATURE = Header(
    "Stripe-Signature", {"type": "string", "minLength": 1}, required=True,
    description="Stripe's signature of the body with STRIPE_WEBHOOK_SECRET; a delivery it "
                "does not verify is refused (400)")
# What `StripeWebhooks` reads of every event: `id` and `type` (as text) and `data.object`.
STRIPE_EVENT = {"type": "object", "required": ["id", "type", "data"],
                "properties": {"data": {"type": "object", "required": ["object"]}}}
LAGO_SIGNATURE = Header(
    "X-Lago-Signature", {"type": "string", "minLength": 1}, required=True,
    description="Lago's HMAC (base64) or JWT of the body; a delivery it does not verify is "
                "refused (400)")
LAGO_UNIQUE_KEY = Header(
    "X-Lago-Unique-Key", {"type": "string", "minLength": 1, "maxLength": 256}, required=True,
    description="the delivery: a repeated one is acknowledged and not applied again")
LAGO_WEBHOOK = {"type": "object", "required": ["webhook_type"]}


def lago_signature_algorithm(algorithms: tuple[str, ...]) -> Header:
    """The algorithms this server verifies (`jwt` when absent, so then the header may be)."""
    schema: dict[str, Any] = {"enum": list(algorithms)}
    if "jwt" in algorithms:
        schema["default"] = "jwt"
    return Header("X-Lago-Signature-Algorithm", schema, required="jwt" not in algorithms)


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
    service: str
    version: str


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
    paid_cents: int
    promotional_cents: int
    next_expiry: NextExpiryReply | None
    debt_cents: int
    lots: list[LotReply]
    spend_caps: list[CapReply] = msgspec.field(default_factory=list)


class DeletedReply(Reply):
    deleted: bool


class NextExpiryReply(Reply):
    amount_cents: int
    expires_at: Timestamp


class BalanceReply(Reply):
    """`paid_cents` and `promotional_cents` are what remains of the lots in effect."""

    user_id: uuid.UUID
    balance_cents: int
    balance_formatted: str
    held_cents: int
    available_cents: int
    plan: str
    paid_cents: int
    promotional_cents: int
    next_expiry: NextExpiryReply | None
    # Each cap's spending and what remains of it in its current window.
    spend_caps: list[CapReply] = msgspec.field(default_factory=list)


class LotReply(Reply):
    """One credit lot: remaining = original - drawn - expired - voided; `held_cents` of it are
    promised to open reservations."""

    lot_id: str
    source: str
    category: Literal["paid", "promotional"]
    priority: int
    effective_at: Timestamp | None
    expires_at: Timestamp | None
    in_effect: bool
    original_cents: int
    remaining_cents: int
    drawn_cents: int
    expired_cents: int
    voided_cents: int
    held_cents: int
    paid_usd_cents: int | None
    rollover_cents: int
    rollover_expires_at: Timestamp | None


class LotsReply(Reply):
    """The account's lots with credits left, in burn order, and credits owed."""

    user_id: uuid.UUID
    lots: list[LotReply]
    debt_cents: int
    as_of: Timestamp


class LotDrawReply(Reply):
    lot_id: str
    amount_cents: int


class TransactionReply(Reply):
    id: str
    type: str
    # The original service's name for `type` (same values; it wrote them without
    # underscores, e.g. "autorefill", where ours are snake_case).
    transaction_type: str
    amount_cents: int
    balance_after_cents: int
    description: str
    metadata: dict[str, Any]
    event_id: str | None
    created_at: Timestamp
    lot_draws: list[LotDrawReply]


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
    # What may be spent now under the balance and every hard cap that applies.
    spendable_micros: int = 0
    within_caps: bool = True
    max_output_tokens: int | None = None


class CapReply(Reply):
    """A cap in its current window: spent, held by open reservations, and what remains."""

    scope: Literal["account", "agent", "service"]
    name: str | None
    period: Literal["day", "week", "month"]
    limit_cents: int
    hard: bool
    spent_cents: int
    spent_micros: int
    held_cents: int
    remaining_cents: int
    reached: bool
    window_start: Timestamp
    resets_at: Timestamp


class WebhookEndpointReply(Reply):
    """`secret` is shown when the endpoint is created or its secret rotated, never again."""

    endpoint_id: str
    url: str
    event_types: list[str]
    created_at: Timestamp
    secret: str | None = None


class WebhookEndpointsReply(Reply):
    endpoints: list[WebhookEndpointReply]


class ParkedWebhookReply(Reply):
    sequence: int
    event_id: str
    event_type: str
    user_id: str
    attempts: int
    last_error: str


class ParkedWebhooksReply(Reply):
    endpoint_id: str
    parked: list[ParkedWebhookReply]


class ResentReply(Reply):
    resent: int


class UsageTotalsReply(Reply):
    """`cost_micros` is exact; `debited_cents` the whole credits the ledger debited for it
    (the sum of those usage entries); input tokens count cached and cache-write ones too."""

    events: int
    cost_micros: int
    cost_credits: Annotated[str, Meta(description="exact credits as a decimal string")]
    debited_cents: int
    input_tokens: int
    output_tokens: int


class UsageGroupReply(Reply):
    key: Annotated[str, Meta(description="the day, provider/model ('-': no model) or "
                                         "agent_id ('': none)")]
    totals: UsageTotalsReply


class UsageSummaryReply(Reply):
    user_id: uuid.UUID
    group_by: Literal["day", "model", "agent"]
    from_: Annotated[str, Meta(description="first UTC day covered")] = msgspec.field(
        name="from")
    to: str
    groups: list[UsageGroupReply]
    total: UsageTotalsReply


class SpendControlsReply(Reply):
    user_id: uuid.UUID
    timezone: str
    caps: list[CapReply]
    # `balance.low` is announced when the balance falls below each of these.
    low_balance_cents: list[int] = msgspec.field(default_factory=list)


class QuoteReply(Reply):
    cost_micros: int
    cost_cents: int
    cost_cents_exact: Annotated[str, Meta(description="exact credits as a decimal string")]
    provider: str | None
    model: str | None
    default_price: bool
    long_context: bool
    min_charge_applied: bool
    currency: Literal["USD_CENTS"]


ReservationStatusText = Literal["held", "committed", "released", "expired"]


class ReservationHeldReply(Reply):
    reservation_id: str
    user_id: uuid.UUID
    status: ReservationStatusText
    held_cents: int
    balance_cents: int
    available_cents: int
    expires_at: Timestamp
    # A clamped hold held less than `requested_cents`.
    requested_cents: int = 0
    clamped: bool = False
    max_output_tokens: int | None = None


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


# --- promotional grants (service) --------------------------------------------------------------


class SignupGrantBody(Body):
    """`is_zero_pro` (also spelled `isZeroPro`) and `referred_by` are the original's fields:
    accepted, with no effect (a referral is granted by /v1/credits/referral-grant)."""

    user_id: uuid.UUID
    is_zero_pro: bool | None = None
    is_zero_pro_camel: bool | None = msgspec.field(default=None, name="isZeroPro")
    referred_by: uuid.UUID | None = None


class DailyGrantBody(Body):
    user_id: uuid.UUID


class ReferralGrantBody(Body):
    inviter_user_id: uuid.UUID
    invitee_user_id: uuid.UUID


GrantReason = Annotated[str | None, Meta(
    description="why nothing was granted: already_granted, already_granted_today, disabled "
                "(the grant is configured to 0) or signup_grant_required; null when granted")]


class GrantReply(Reply):
    granted: bool
    reason: GrantReason
    user_id: uuid.UUID
    amount_cents: int
    balance_cents: int
    transaction_id: str | None


class ReferralGrantReply(Reply):
    granted: bool
    reason: GrantReason
    invitee_amount_cents: int
    inviter_amount_cents: int
    invitee_balance_cents: int
    inviter_balance_cents: int
