"""Commands an account actor applies, the records they produce, and their replies."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from engine.account import Account, AutoRefillSettings
from engine.ids import AgentId, TransactionId, UserId, transaction_id_str
from engine.ledger import EntryType
from engine.lots import LotRequest, LotTerms
from engine.usage import Metric

if TYPE_CHECKING:  # only annotations: these modules import this one
    from engine.records import AnyRecord
    from engine.reservations import Reservation

# Idempotency scopes: a key is unique within its scope.
SCOPE_USAGE = "usage"
SCOPE_CREDITS_ADD = "credits_add"


class _Value(msgspec.Struct, frozen=True, gc=False):
    """Immutable value: cheap to build and to copy with a change (msgspec.structs.replace)."""


# --- what a transition may know of the world ------------------------------------------------


class Reads(NamedTuple):
    """What the actor looks up before deciding a command: the outcome of an idempotency key
    `(scope, key)`, the reservation a command names (TigerBeetle's prefetch), and the
    outcomes of other keys a rule depends on (a daily grant needs the signup grant's)."""

    key: tuple[str, str] | None = None
    reservation_id: str | None = None
    other_keys: tuple[tuple[str, str], ...] = ()


NO_READS = Reads()


class CommandBase(_Value):
    """Every command names its account (`user_id`) and declares its reads."""

    def reads(self) -> Reads:
        return NO_READS



# --- commands -------------------------------------------------------------------------------


class OpenAccount(CommandBase):
    """Create the account; `must_be_new` makes an existing account a conflict."""

    user_id: UserId
    must_be_new: bool = False
    # For the customers integrations create (Lago now, Stripe from the route); not stored.
    email: str | None = None


class GetAccount(CommandBase):
    user_id: UserId


class CloseAccount(CommandBase):
    user_id: UserId


class WebhookMarker(_Value):
    """An applied webhook event, stored in the same commit as its ledger entry."""

    provider: str
    event_id: str
    event_type: str
    received_at_ms: int


class AddCredits(CommandBase):
    """Credits of a credit type. Payments use the `stripe_payment` scope keyed on the
    PaymentIntent, carry the webhook that announced them, and an auto-refill its number."""

    user_id: UserId
    amount_cents: int
    entry_type: EntryType
    key: str | None
    fingerprint: bytes
    description: str = ""
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    scope: str = SCOPE_CREDITS_ADD
    webhook: WebhookMarker | None = None
    refill_number: int | None = None
    lot: LotTerms | None = None  # None: the defaults of `entry_type` (engine/lots.py)

    def reads(self) -> Reads:
        return Reads((self.scope, self.key)) if self.key is not None else NO_READS


class ReportUsage(CommandBase):
    """One usage event, already priced: `cost_micros` is exact."""

    user_id: UserId
    event_id: str
    cost_micros: int
    fingerprint: bytes
    occurred_at_ms: int
    metric: Metric | None = None
    agent_id: AgentId | None = None
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    service: str | None = None  # the reporting service key's name (its caps apply)

    def reads(self) -> Reads:
        return Reads((SCOPE_USAGE, self.event_id))


class CheckBalance(CommandBase):
    """Would `required_cents` be available to `agent_id` through service key `service`?"""

    user_id: UserId
    required_cents: int
    agent_id: str | None = None
    service: str | None = None


class SetAutoRefill(CommandBase):
    user_id: UserId
    settings: AutoRefillSettings


Command = (
    OpenAccount | GetAccount | CloseAccount | AddCredits | ReportUsage | CheckBalance
    | SetAutoRefill
)
KeyedCommand = AddCredits | ReportUsage


# --- replies --------------------------------------------------------------------------------


class UsageResult(_Value):
    event_id: str
    user_id: UserId
    transaction_id: TransactionId
    cost_cents: int
    cost_micros: int
    balance_cents: int
    held_cents: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "user_id": str(self.user_id),
            "transaction_id": transaction_id_str(self.transaction_id),
            "cost_cents": self.cost_cents,
            "cost_micros": self.cost_micros,
            "balance_cents": self.balance_cents,
            "held_cents": self.held_cents,
            "available_cents": self.balance_cents - self.held_cents,
        }


class CreditResult(_Value):
    user_id: UserId
    transaction_id: TransactionId
    entry_type: EntryType
    amount_cents: int
    balance_cents: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "transaction_id": transaction_id_str(self.transaction_id),
            "type": self.entry_type.value,
            "amount_cents": self.amount_cents,
            "balance_cents": self.balance_cents,
        }


class BalanceCheck(_Value):
    """`spendable_micros`: what may be spent now under the balance (holds, unbilled
    fractions and the overdraft counted) and every hard cap that applies; `caps_micros` what
    those caps alone allow (None: none applies). `max_output_tokens` is set by the facade
    from a model's prices when the caller named one."""

    sufficient: bool
    balance_cents: int
    available_cents: int
    required_cents: int
    spendable_micros: int
    within_caps: bool = True
    caps_micros: int | None = None
    max_output_tokens: int | None = None


Reply = Account | UsageResult | CreditResult | BalanceCheck


# --- records (what a transition asks the journal to store besides the account) ------------


class KeyRecord(_Value):
    """An idempotency key with the fingerprint of its request and the result it produced."""

    scope: str
    key: str
    user_id: UserId
    fingerprint: bytes
    result: CreditResult


class UsageEventRecord(_Value):
    """A usage event as received, with its result; doubles as its idempotency key."""

    event_id: str
    user_id: UserId
    fingerprint: bytes
    occurred_at_ms: int
    metric: Metric | None
    agent_id: str | None
    result: UsageResult

    @property
    def scope(self) -> str:
        return SCOPE_USAGE

    @property
    def key(self) -> str:
        return self.event_id


PriorOutcome = KeyRecord | UsageEventRecord


class Context(_Value):
    """The time, a fresh transaction id, and what the command's `reads()` found
    (`others`: the outcomes of `Reads.other_keys`, in their order)."""

    now_ms: int
    transaction_id: TransactionId
    prior: PriorOutcome | None = None
    reservation: Reservation | None = None
    others: tuple[PriorOutcome | None, ...] = ()


class Transition(_Value):
    """The outcome of one command: the new state (None: no account), what to store, the reply.

    `keyed` are the records among `records` that others look up by key (idempotency keys,
    reservations) and so must be visible before their commit.
    """

    account: Account | None
    records: tuple[AnyRecord, ...]
    reply: Any
    keyed: tuple[PriorOutcome | Reservation, ...] = ()


# --- fingerprints ---------------------------------------------------------------------------

_fingerprint_encoder = msgspec.msgpack.Encoder()


def digest(parts: tuple[Any, ...]) -> bytes:
    """A short, stable fingerprint of a request's identifying parts."""
    return hashlib.blake2b(_fingerprint_encoder.encode(parts), digest_size=16).digest()


def usage_fingerprint(
    user_id: UserId, metric: Metric | None, cost_micros_override: int | None
) -> bytes:
    """What makes two usage requests "the same" for idempotency: user, metric and cost."""
    kind = metric.type if metric is not None else None
    return digest((user_id.bytes, kind, metric, cost_micros_override))


def credits_fingerprint(user_id: UserId, amount_cents: int, entry_type: EntryType,
                        lot: LotRequest | None = None) -> bytes:
    """A grant's fingerprint; the lot attributes count when the request sets them (a grant
    without them keeps the fingerprint it had before lots)."""
    if lot is None:
        return digest((user_id.bytes, amount_cents, entry_type.value))
    return digest((user_id.bytes, amount_cents, entry_type.value, lot))
