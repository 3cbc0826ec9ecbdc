"""Stripe payments as pure rules: what a purchase costs and credits, what a refund takes back,
and when an account raises an auto-refill. No Stripe calls here; integrations/stripe makes
them and feeds the outcomes back as the commands below.

Idempotency: a payment is credited once per PaymentIntent id (scope `stripe_payment`), whether
Stripe's answer or a webhook — under any event id — arrives first. A refund is keyed on the
charge and is cumulative: each `charge.refunded` carries the total refunded so far, so the
entry takes back only what earlier ones did not, and a replayed or older event takes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec
from msgspec.structs import replace

from engine.account import Account, AutoRefillSettings, live_account
from engine.commands import (
    CommandBase,
    Context,
    CreditResult,
    KeyRecord,
    Reads,
    Transition,
    WebhookMarker,
    digest,
)
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.errors import DuplicateEvent, InvalidInput, require
from engine.ids import UserId
from engine.ledger import EntryType
from engine.money import round_half_even
from engine.posting import post_entry

SCOPE_STRIPE_PAYMENT = "stripe_payment"
SCOPE_STRIPE_REFUND = "stripe_refund"
PURCHASE_USD_MIN = Decimal(5)
PURCHASE_USD_MAX = Decimal(1000)
CREDITS_PER_USD = 100
# Declines of one refill before auto-refill is switched off (the first attempt included).
REFILL_ATTEMPTS_MAX = 4
REASON_LENGTH_MAX = 200


class RefillIntent(msgspec.Struct, frozen=True, gc=False):
    """An auto-refill to be charged: kept in the `refills` index until it is resolved."""

    user_id: UserId
    number: int
    amount_cents: int
    plan: str  # priced with this plan's purchase discount
    customer_id: str
    declines: int = 0


class RefillResolved(msgspec.Struct, frozen=True, gc=False):
    """The refill was credited or given up: drop it from the `refills` index."""

    user_id: UserId


# --- commands -------------------------------------------------------------------------------


class TakeBackCredits(CommandBase):
    """A Stripe refund of a payment we credited: bring the credits taken back for `charge_id`
    up to `total_cents` (cumulative over the charge's refunds), from the payment's own lot
    (`lot_id`, the transaction that credited it) first. May leave the balance below zero:
    the user already spent those credits."""

    user_id: UserId
    charge_id: str
    total_cents: int
    description: str = ""
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    webhook: WebhookMarker | None = None
    lot_id: int | None = None

    def reads(self) -> Reads:
        return Reads((SCOPE_STRIPE_REFUND, self.charge_id))


class DeclineRefill(CommandBase):
    """Stripe declined refill `number`; after REFILL_ATTEMPTS_MAX declines, give up."""

    user_id: UserId
    number: int
    reason: str


class SetStripeCustomer(CommandBase):
    user_id: UserId
    customer_id: str


class RefillDeclined(msgspec.Struct, frozen=True, gc=False):
    """Reply to DeclineRefill: `gave_up` when auto-refill was switched off."""

    declines: int
    gave_up: bool


# --- pure rules -----------------------------------------------------------------------------


def purchase_credits(amount_usd: Decimal) -> int:
    """Credits bought for `amount_usd` dollars (5 … 1000, at most two decimals)."""
    field = {"field": "amount_usd"}
    if not amount_usd.is_finite():
        raise InvalidInput("amount_usd must be a finite number", field)
    if not PURCHASE_USD_MIN <= amount_usd <= PURCHASE_USD_MAX:
        raise InvalidInput(
            f"amount_usd must be between {PURCHASE_USD_MIN} and {PURCHASE_USD_MAX}", field)
    if -amount_usd.as_tuple().exponent > 2:  # type: ignore[operator]
        raise InvalidInput("amount_usd has at most 2 decimals (whole cents)", field)
    return int(amount_usd * CREDITS_PER_USD)


def refunded_credits(credited_cents: int, paid_usd_cents: int, refunded_usd_cents: int) -> int:
    """Credits to take back for `refunded_usd_cents` of a payment of `paid_usd_cents` that
    credited `credited_cents`: proportional, exact at a full refund, never more than was
    credited."""
    if paid_usd_cents <= 0 or refunded_usd_cents <= 0:
        return 0
    share = Fraction(credited_cents * min(refunded_usd_cents, paid_usd_cents), paid_usd_cents)
    return min(credited_cents, round_half_even(share))


def payment_fingerprint(user_id: UserId, amount_cents: int, entry_type: EntryType) -> bytes:
    return digest((user_id.bytes, amount_cents, entry_type.value, SCOPE_STRIPE_PAYMENT))


def refill_if_low(account: Account) -> tuple[Account, tuple[RefillIntent | Deadline, ...]]:
    """After a debit: raise one refill when the balance fell below the trigger, unless one is
    already in flight (never two) or there is no Stripe customer to charge."""
    settings = account.auto_refill
    if (
        not settings.enabled
        or account.refill_pending
        or account.stripe_customer_id is None
        or account.balance_cents >= settings.trigger_below_cents
    ):
        return account, ()
    number = account.refill_count + 1
    raised = replace(account, refill_count=number, refill_pending=True, refill_declines=0)
    intent = RefillIntent(account.user_id, number, settings.refill_amount_cents, account.plan,
                          account.stripe_customer_id)
    # Due at once; the worker keeps its own backoff between declined attempts.
    return raised, (intent, user_deadline(DeadlineKind.AUTO_REFILL, account.user_id, 0))


def settle_refill(account: Account, number: int | None
                  ) -> tuple[Account, tuple[RefillResolved | Deadline, ...]]:
    """A credited auto-refill payment ends the refill in flight, if it is that one."""
    if number is None or not account.refill_pending or number != account.refill_count:
        return account, ()
    settled = replace(account, refill_pending=False, refill_declines=0, auto_refill_error=None)
    return settled, _refill_resolved(account.user_id)


def _refill_resolved(user_id: UserId) -> tuple[RefillResolved, Deadline]:
    return RefillResolved(user_id), user_deadline(DeadlineKind.AUTO_REFILL, user_id, None)


# --- transitions ----------------------------------------------------------------------------


def take_back_credits(account: Account | None, command: TakeBackCredits,
                      context: Context) -> Transition:
    if command.total_cents <= 0:
        raise InvalidInput("a refund takes back a positive number of credits")
    prior = context.prior
    taken_before = -prior.result.amount_cents if prior is not None else 0
    if command.total_cents <= taken_before:
        require(prior is not None, "a refund of nothing taken back before is positive")
        assert prior is not None
        raise DuplicateEvent(command.charge_id, prior.result.to_dict())
    live = live_account(account, command.user_id)
    amount = command.total_cents - taken_before
    own_lot = ((command.lot_id, amount),) if command.lot_id is not None else ()
    updated, entry = post_entry(live, context, EntryType.REFUND, -amount,
                                source_key=command.charge_id,
                                description=command.description, metadata=command.metadata,
                                first=own_lot)
    balance = updated.balance_cents
    reply = CreditResult(live.user_id, context.transaction_id, EntryType.REFUND, -amount,
                         balance)
    # The key's result holds the running total taken back (negative), for the next refund.
    record = KeyRecord(SCOPE_STRIPE_REFUND, command.charge_id, live.user_id, b"",
                       replace(reply, amount_cents=-command.total_cents))
    marker = (command.webhook,) if command.webhook is not None else ()
    return Transition(updated, (entry, record, *marker), reply, (record,))


def decline_refill(account: Account | None, command: DeclineRefill,
                   context: Context) -> Transition:
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    reason = command.reason[:REASON_LENGTH_MAX]
    if not live.refill_pending or command.number != live.refill_count:
        return Transition(live, (), RefillDeclined(live.refill_declines, False))
    declines = live.refill_declines + 1
    if declines < REFILL_ATTEMPTS_MAX:
        updated = replace(live, refill_declines=declines, auto_refill_error=reason,
                          updated_at_ms=now_ms)
        intent = RefillIntent(live.user_id, live.refill_count,
                              live.auto_refill.refill_amount_cents, live.plan,
                              live.stripe_customer_id or "", declines)
        return Transition(updated, (intent,), RefillDeclined(declines, False))
    switched_off = replace(
        live,
        refill_pending=False,
        refill_declines=declines,
        auto_refill=replace(live.auto_refill, enabled=False),
        auto_refill_error=f"switched off after {declines} declines: {reason}",
        updated_at_ms=now_ms,
    )
    return Transition(switched_off, _refill_resolved(live.user_id),
                      RefillDeclined(declines, True))


def set_stripe_customer(account: Account | None, command: SetStripeCustomer,
                        context: Context) -> Transition:
    live = live_account(account, command.user_id)
    if live.stripe_customer_id == command.customer_id:
        return Transition(live, (), live)
    updated = replace(live, stripe_customer_id=command.customer_id,
                      updated_at_ms=context.now_ms)
    return Transition(updated, (), updated)


def enabling_clears_error(settings: AutoRefillSettings, account: Account) -> Account:
    """Switching auto-refill on again forgets why it was switched off."""
    if settings.enabled and not account.auto_refill.enabled:
        return replace(account, auto_refill_error=None, refill_declines=0)
    return account


PaymentCommand = TakeBackCredits | DeclineRefill | SetStripeCustomer
HANDLERS = {
    TakeBackCredits: take_back_credits,
    DeclineRefill: decline_refill,
    SetStripeCustomer: set_stripe_customer,
}
