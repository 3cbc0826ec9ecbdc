"""Notifications: the events outbound webhooks announce, derived in one place.

`derive` compares an account before and after one command, with the records the command
stores, and returns the events it caused. `transitions.apply` calls it once for every command,
so no feature has to remember to emit anything, and each event is stored in the same commit
as the change that caused it: generated exactly once, with an id that never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from engine.account import Account
from engine.caps import SpendCap
from engine.ids import TransactionId, UserId, transaction_id_str
from engine.ledger import EntryType, LedgerEntry
from engine.subscription_state import SubscriptionStatus


class EventType(StrEnum):
    BALANCE_LOW = "balance.low"
    BALANCE_DEPLETED = "balance.depleted"
    BALANCE_RECOVERED = "balance.recovered"
    SPEND_LIMIT_REACHED = "spend_limit.reached"
    AUTO_REFILL_SUCCEEDED = "auto_refill.succeeded"
    AUTO_REFILL_FAILED = "auto_refill.failed"
    AUTO_REFILL_DISABLED = "auto_refill.disabled"
    SUBSCRIPTION_RENEWED = "subscription.renewed"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due"
    SUBSCRIPTION_ENDED = "subscription.ended"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_REFUNDED = "payment.refunded"
    CREDITS_EXPIRING = "credits.expiring"  # engine/expiring.py, by its own timer
    CREDITS_EXPIRED = "credits.expired"


class Notification(msgspec.Struct, frozen=True, gc=False):
    """One event, as stored in the webhook outbox and sent to every endpoint that wants it.
    `event_id` is the command's transaction id and the event's place among its events."""

    event_id: str
    user_id: UserId
    event_type: EventType
    created_at_ms: int
    data: Mapping[str, Any]


def webhook_event(notification: Notification) -> dict[str, Any]:
    """The event as endpoints receive it (JSON): the same bytes on every attempt."""
    return {"id": notification.event_id, "type": notification.event_type.value,
            "created_at_ms": notification.created_at_ms,
            "user_id": str(notification.user_id), "data": dict(notification.data)}


# Entry types that are an event by themselves.
_ENTRY_EVENTS = {
    EntryType.PURCHASE: EventType.PAYMENT_SUCCEEDED,
    EntryType.AUTO_REFILL: EventType.AUTO_REFILL_SUCCEEDED,
    EntryType.SUBSCRIPTION_GRANT: EventType.SUBSCRIPTION_RENEWED,
    EntryType.EXPIRY: EventType.CREDITS_EXPIRED,
}


def derive(before: Account | None, after: Account | None, records: tuple[object, ...],
           now_ms: int, transaction_id: TransactionId) -> tuple[Notification, ...]:
    """The events of one command (most commands cause none: the checks are cheap)."""
    if after is None or before is None:
        return ()
    found: list[tuple[EventType, dict[str, Any]]] = []
    for record in records:
        if type(record) is LedgerEntry:
            _entry_events(record, found)
    if before.balance_cents != after.balance_cents:
        _balance_events(before, after, found)
    if after.controls is not None and after.controls is not before.controls:
        _cap_events(before, after, found)
    if after.refill_declines > before.refill_declines:
        found.append((EventType.AUTO_REFILL_FAILED, {
            "declines": after.refill_declines, "reason": after.auto_refill_error}))
    if before.auto_refill.enabled and not after.auto_refill.enabled and (
            after.auto_refill_error is not None):
        found.append((EventType.AUTO_REFILL_DISABLED, {"reason": after.auto_refill_error}))
    if before.subscription is not after.subscription:
        _subscription_events(before, after, found)
    if not found:
        return ()
    prefix = transaction_id_str(transaction_id)
    return tuple(
        Notification(f"evt_{prefix}_{index}", after.user_id, kind, now_ms,
                     {**data, "balance_cents": after.balance_cents})
        for index, (kind, data) in enumerate(found)
    )


def _entry_events(entry: LedgerEntry, found: list[tuple[EventType, dict[str, Any]]]) -> None:
    kind = _ENTRY_EVENTS.get(entry.entry_type)
    if entry.entry_type is EntryType.REFUND and entry.amount < 0:
        kind = EventType.PAYMENT_REFUNDED  # a Stripe refund takes credits back
    if kind is not None:
        found.append((kind, {"transaction_id": transaction_id_str(entry.transaction_id),
                             "amount_cents": entry.amount}))


def _balance_events(before: Account, after: Account,
                    found: list[tuple[EventType, dict[str, Any]]]) -> None:
    old, new = before.balance_cents, after.balance_cents
    controls = after.controls
    # A threshold fires when the balance crosses it going down; rising above it re-arms it.
    for threshold in controls.low_balance_cents if controls is not None else ():
        if new < threshold <= old:
            found.append((EventType.BALANCE_LOW, {"threshold_cents": threshold}))
    if old > 0 >= new:
        found.append((EventType.BALANCE_DEPLETED, {}))
    elif old <= 0 < new:
        found.append((EventType.BALANCE_RECOVERED, {}))


def _cap_events(before: Account, after: Account,
                found: list[tuple[EventType, dict[str, Any]]]) -> None:
    assert after.controls is not None
    reached = [cap for cap in after.controls.caps if cap.reached]
    if not reached:
        return  # the common case on a capped account's debit: one pass, nothing to compare
    announced = {cap.identity for cap in before.controls.caps if cap.reached} if (
        before.controls is not None) else set()
    for cap in reached:
        if cap.identity not in announced:
            found.append((EventType.SPEND_LIMIT_REACHED, _cap_data(cap)))


def _cap_data(cap: SpendCap) -> dict[str, Any]:
    return {"scope": cap.scope.value, "name": cap.name or None, "period": cap.period.value,
            "limit_cents": cap.limit_cents, "hard": cap.hard,
            "spent_micros": cap.spent_micros, "resets_at_ms": cap.resets_at_ms}


def _subscription_events(before: Account, after: Account,
                         found: list[tuple[EventType, dict[str, Any]]]) -> None:
    old, new = before.subscription, after.subscription
    if new is None:
        if old is not None:
            found.append((EventType.SUBSCRIPTION_ENDED, {"plan": old.plan}))
        return
    if new.status is SubscriptionStatus.PAST_DUE and (
            old is None or old.status is not SubscriptionStatus.PAST_DUE):
        found.append((EventType.SUBSCRIPTION_PAST_DUE, {"plan": new.plan}))
