"""Pure transitions `(account, command, context) → Transition`. No I/O, no clock, no trio.

This module holds `apply`, the one dispatch, and the account and credit rules; each other
feature is one module exporting its `HANDLERS` (usage: `metering`, `reservations`,
`payments`, `subscriptions`, `grants`). Domain errors are raised; an actor turns them into replies.
Nothing is recorded for a command that raised, so a rejected event id may be retried after
the cause is fixed (say, a top-up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec.structs import replace

from engine import (
    controls,
    expiring,
    expiry,
    grants,
    metering,
    payments,
    reservations,
    subscriptions,
    undo,
)
from engine.account import Account, AccountStatus, live_account
from engine.caps import headroom_micros
from engine.commands import (
    AddCredits,
    BalanceCheck,
    CheckBalance,
    CloseAccount,
    Command,
    Context,
    CreditResult,
    GetAccount,
    KeyRecord,
    OpenAccount,
    SetAutoRefill,
    Transition,
)
from engine.controls import ControlsCommand
from engine.errors import AccountExists, AccountNotFound, InvalidInput, require
from engine.expiring import NoticeExpiringLot, notice_deadline
from engine.expiry import ExpireLots, rearm
from engine.export import AccountOpened
from engine.grants import GrantCommand
from engine.ledger import EntryType
from engine.lots import validate_terms
from engine.money import MICROS_PER_CREDIT
from engine.notifications import derive
from engine.payments import PaymentCommand, enabling_clears_error, settle_refill
from engine.posting import check_prior, post_entry
from engine.reservations import ReservationCommand
from engine.subscriptions import SubscriptionCommand
from engine.undo import UndoCommand

AnyCommand = (Command | ReservationCommand | PaymentCommand | SubscriptionCommand | ExpireLots
              | UndoCommand | GrantCommand | ControlsCommand | NoticeExpiringLot)
Handler = Callable[[Account | None, Any, Context], Transition]


def apply(account: Account | None, command: AnyCommand, context: Context) -> Transition:
    transition = _HANDLERS[type(command)](account, command, context)
    if transition.account is not None:
        transition.account.check_invariants()
        expiry_due = rearm(account, transition.account)
        notice_due = notice_deadline(transition.account, context)
        if expiry_due is not None or notice_due is not None:  # a transition that changed lots
            transition = replace(transition, records=(
                *transition.records,
                *(due for due in (expiry_due, notice_due) if due is not None)))
        events = derive(account, transition.account, transition.records, context.now_ms,
                        context.transaction_id)
        if events:
            transition = replace(transition, records=(*transition.records, *events))
    # Records looked up by key before their commit must be among those stored.
    for record in transition.keyed:
        require(record in transition.records, "%s keyed a record it does not store",
                type(command).__name__)
    return transition


def _open(account: Account | None, command: OpenAccount, context: Context) -> Transition:
    if account is not None:
        if command.must_be_new:
            raise AccountExists(
                f"account {command.user_id} already exists", {"user_id": str(command.user_id)}
            )
        return Transition(account, (), account)
    created = Account(
        user_id=command.user_id, created_at_ms=context.now_ms, updated_at_ms=context.now_ms
    )
    return Transition(created, (AccountOpened(command.user_id, email=command.email),), created)


def _get(account: Account | None, command: GetAccount, context: Context) -> Transition:
    if account is None:
        raise AccountNotFound(
            f"no account for user {command.user_id}", {"user_id": str(command.user_id)}
        )
    return Transition(account, (), account)


def _close(account: Account | None, command: CloseAccount, context: Context) -> Transition:
    live = live_account(account, command.user_id)
    closed = replace(live, status=AccountStatus.CLOSED, updated_at_ms=context.now_ms)
    return Transition(closed, (), closed)


def _set_auto_refill(
    account: Account | None, command: SetAutoRefill, context: Context
) -> Transition:
    live = enabling_clears_error(command.settings, live_account(account, command.user_id))
    updated = replace(live, auto_refill=command.settings, updated_at_ms=context.now_ms)
    return Transition(updated, (), updated)


def _check_balance(
    account: Account | None, command: CheckBalance, context: Context
) -> Transition:
    live = live_account(account, command.user_id)
    required_micros = command.required_cents * MICROS_PER_CREDIT
    available = live.available_cents(context.now_ms)
    spendable = ((available + live.overdraft_limit_cents) * MICROS_PER_CREDIT
                 - live.unbilled_micros)
    capped = None if live.controls is None else headroom_micros(
        live.controls, live.held_cents, command.agent_id, command.service, context.now_ms)
    within_caps = capped is None or required_micros <= capped
    reply = BalanceCheck(
        sufficient=spendable >= required_micros and within_caps,
        balance_cents=live.balance_cents,
        available_cents=available,
        required_cents=command.required_cents,
        spendable_micros=max(0, spendable if capped is None else min(spendable, capped)),
        within_caps=within_caps,
        caps_micros=capped,
    )
    return Transition(live, (), reply)


def _add_credits(account: Account | None, command: AddCredits, context: Context) -> Transition:
    check_prior(command.key or "", command.fingerprint, context.prior)
    live = live_account(account, command.user_id)
    if command.entry_type is EntryType.USAGE:
        raise InvalidInput("credits added must be of a credit type, not usage",
                           {"field": "type"})
    if command.amount_cents <= 0:
        raise InvalidInput("credits added must be a positive amount", {"field": "amount_cents"})
    if command.lot is not None:
        validate_terms(command.lot, context.now_ms)
    updated, entry = post_entry(live, context, command.entry_type, command.amount_cents,
                                source_key=command.key, description=command.description,
                                metadata=command.metadata, terms=command.lot)
    updated, settled = settle_refill(updated, command.refill_number)
    reply = CreditResult(
        user_id=live.user_id,
        transaction_id=context.transaction_id,
        entry_type=command.entry_type,
        amount_cents=command.amount_cents,
        balance_cents=updated.balance_cents,
    )
    marker = (command.webhook,) if command.webhook is not None else ()
    if command.key is None:
        return Transition(updated, (entry, *settled, *marker), reply)
    key_record = KeyRecord(
        scope=command.scope,
        key=command.key,
        user_id=live.user_id,
        fingerprint=command.fingerprint,
        result=reply,
    )
    return Transition(updated, (entry, key_record, *settled, *marker), reply, (key_record,))


_ACCOUNT_HANDLERS: dict[type, Handler] = {
    OpenAccount: _open,
    GetAccount: _get,
    CloseAccount: _close,
    AddCredits: _add_credits,
    CheckBalance: _check_balance,
    SetAutoRefill: _set_auto_refill,
}
_FEATURE_HANDLERS: tuple[dict[type, Handler], ...] = (
    _ACCOUNT_HANDLERS,
    metering.HANDLERS,  # type: ignore[dict-item]
    reservations.HANDLERS,  # type: ignore[dict-item]
    payments.HANDLERS,  # type: ignore[dict-item]
    subscriptions.HANDLERS,  # type: ignore[dict-item]
    expiry.HANDLERS,  # type: ignore[dict-item]
    undo.HANDLERS,  # type: ignore[dict-item]
    grants.HANDLERS,  # type: ignore[dict-item]
    controls.HANDLERS,  # type: ignore[dict-item]
    expiring.HANDLERS,  # type: ignore[dict-item]
)
_HANDLERS: dict[type, Handler] = {
    command: handler for handlers in _FEATURE_HANDLERS for command, handler in handlers.items()
}
assert len(_HANDLERS) == sum(map(len, _FEATURE_HANDLERS)), "a command is handled twice"
