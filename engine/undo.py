"""Undo tools for operators: void what is left of a lot, debit credits by hand, and reverse a
usage event (its cost goes back to the lots it came from). Each is idempotent: a void and a
debit on their `Idempotency-Key` (like `credits/add`), a reversal on the usage event's own
id, so a retried reversal never gives the cost back twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.account import Account, live_account
from engine.commands import (
    CommandBase,
    Context,
    CreditResult,
    KeyRecord,
    Reads,
    Transition,
    digest,
)
from engine.errors import Conflict, InsufficientCredits, InvalidInput, require
from engine.ids import UserId, transaction_id_str
from engine.ledger import EntryType, LedgerEntry
from engine.lots import default_terms, give_back, void
from engine.payments import refill_if_low
from engine.posting import check_prior, post_entry

if TYPE_CHECKING:  # only annotations: engine.records imports this module's neighbours
    from engine.records import AnyRecord

SCOPE_LOT_VOID = "lot_void"
SCOPE_CREDITS_DEBIT = "credits_debit"
SCOPE_USAGE_REVERSAL = "usage_reversal"


class VoidLot(CommandBase):
    user_id: UserId
    lot_id: int
    key: str | None
    fingerprint: bytes
    description: str = ""

    def reads(self) -> Reads:
        return Reads((SCOPE_LOT_VOID, self.key)) if self.key is not None else Reads()


class DebitCredits(CommandBase):
    """An operator's debit, burnt in burn order, within what the account may spend."""

    user_id: UserId
    amount_cents: int
    key: str | None
    fingerprint: bytes
    description: str = ""

    def reads(self) -> Reads:
        return Reads((SCOPE_CREDITS_DEBIT, self.key)) if self.key is not None else Reads()


class ReverseUsage(CommandBase):
    """Give back what usage event `event_id` debited; `usage` is its ledger entry (entries
    never change, so the facade reads it before the command)."""

    user_id: UserId
    event_id: str
    usage: LedgerEntry
    fingerprint: bytes
    description: str = ""

    def reads(self) -> Reads:
        return Reads((SCOPE_USAGE_REVERSAL, self.event_id))


UndoCommand = VoidLot | DebitCredits | ReverseUsage


def _done(live: Account, updated: Account, entry: LedgerEntry, *, scope: str, key: str | None,
          fingerprint: bytes, also: tuple[AnyRecord, ...] = ()) -> Transition:
    reply = CreditResult(live.user_id, entry.transaction_id, entry.entry_type, entry.amount,
                         updated.balance_cents)
    if key is None:
        return Transition(updated, (entry, *also), reply)
    record = KeyRecord(scope, key, live.user_id, fingerprint, reply)
    return Transition(updated, (entry, record, *also), reply, (record,))


def void_lot(account: Account | None, command: VoidLot, context: Context) -> Transition:
    if command.key is not None:
        check_prior(command.key, command.fingerprint, context.prior)
    live = live_account(account, command.user_id)
    booking = void(live.lots, live.debt_cents, command.lot_id)
    voided = booking.draws[0][1]
    updated, entry = post_entry(
        live, context, EntryType.VOID, -voided, source_key=command.key,
        description=command.description or f"lot {transaction_id_str(command.lot_id)} voided",
        booked=booking)
    return _done(live, updated, entry, scope=SCOPE_LOT_VOID, key=command.key,
                 fingerprint=command.fingerprint)


def debit_credits(account: Account | None, command: DebitCredits, context: Context
                  ) -> Transition:
    if command.key is not None:
        check_prior(command.key, command.fingerprint, context.prior)
    live = live_account(account, command.user_id)
    if command.amount_cents <= 0:
        raise InvalidInput("a debit is a positive amount", {"field": "amount_cents"})
    available = live.available_cents(context.now_ms)
    if available - command.amount_cents < -live.overdraft_limit_cents:
        raise InsufficientCredits(balance_cents=live.balance_cents, available_cents=available,
                                  required_cents=command.amount_cents)
    updated, entry = post_entry(live, context, EntryType.DEBIT, -command.amount_cents,
                                source_key=command.key, description=command.description)
    updated, refill = refill_if_low(updated)
    return _done(live, updated, entry, scope=SCOPE_CREDITS_DEBIT, key=command.key,
                 fingerprint=command.fingerprint, also=refill)


def reverse_usage(account: Account | None, command: ReverseUsage, context: Context
                  ) -> Transition:
    check_prior(command.event_id, command.fingerprint, context.prior)
    live = live_account(account, command.user_id)
    usage = command.usage
    require(usage.entry_type is EntryType.USAGE and usage.user_id == live.user_id,
            "reversal of entry %s, not a usage of this account", usage.transaction_id)
    cost = -usage.amount
    if cost == 0:
        raise Conflict(f"usage event {command.event_id!r} debited no whole credit",
                       {"event_id": command.event_id, "reason": "nothing_to_reverse"})
    drawn = sum(cents for _, cents in usage.draws)
    booking = give_back(live.lots, live.debt_cents, usage.draws, debt_part_cents=cost - drawn,
                        lot_id=context.transaction_id, source=EntryType.REVERSAL.value,
                        terms=default_terms(EntryType.REVERSAL))
    updated, entry = post_entry(
        live, context, EntryType.REVERSAL, cost, source_key=command.event_id,
        description=command.description or f"usage event {command.event_id} reversed",
        metadata={"reversed_transaction_id": transaction_id_str(usage.transaction_id)},
        booked=booking)
    return _done(live, updated, entry, scope=SCOPE_USAGE_REVERSAL, key=command.event_id,
                 fingerprint=command.fingerprint)


def void_fingerprint(user_id: UserId, lot_id: int) -> bytes:
    # As bytes: a ULID is 128 bits, beyond what msgpack carries as an integer.
    return digest((user_id.bytes, "void", lot_id.to_bytes(16, "big")))


def debit_fingerprint(user_id: UserId, amount_cents: int) -> bytes:
    return digest((user_id.bytes, "debit", amount_cents))


def reversal_fingerprint(user_id: UserId, event_id: str) -> bytes:
    return digest((user_id.bytes, "reverse", event_id))


HANDLERS = {VoidLot: void_lot, DebitCredits: debit_credits, ReverseUsage: reverse_usage}
