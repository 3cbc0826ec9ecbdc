"""`credits.expiring`: a lot with an expiry is announced EXPIRING_NOTICE_MS before it expires
(at once when it expires sooner), once, with what is left in it then.

Each lot that opens with an expiry gets its own notice timer (`DeadlineKind.LOT_EXPIRY_NOTICE`,
keyed by account and lot), written in the commit that opened the lot; the command the timer
sends writes the notification and drops the timer in one commit, so the event is generated
once. A lot spent, voided or expired before its notice is announced by nothing; one whose
expiry moved later (a capped rollover) waits for its new notice time.
"""

from __future__ import annotations

from engine.account import Account, AccountStatus
from engine.commands import CommandBase, Context, Transition
from engine.deadlines import Deadline, DeadlineKind
from engine.ids import UserId, transaction_id_str
from engine.notifications import EventType, Notification

# How long before a lot expires `credits.expiring` is sent.
EXPIRING_NOTICE_MS = 3 * 86_400_000


class NoticeExpiringLot(CommandBase):
    """Sent by a lot's notice timer."""

    user_id: UserId
    lot_id: int


def notice_key(user_id: UserId, lot_id: int) -> str:
    return f"{user_id}:{lot_id}"


def lot_of_notice(key: str) -> int:
    return int(key.rpartition(":")[2])


def _notice(user_id: UserId, lot_id: int, due_ms: int | None) -> Deadline:
    return Deadline(DeadlineKind.LOT_EXPIRY_NOTICE, notice_key(user_id, lot_id), user_id, due_ms)


def notice_deadline(after: Account, context: Context) -> Deadline | None:
    """The notice timer of the lot this transition opened, if it opened one with an expiry (a
    new lot's id is the transaction id of the entry that opened it)."""
    for lot in after.lots:
        if lot.lot_id == context.transaction_id and lot.expires_at_ms is not None:
            return _notice(after.user_id, lot.lot_id,
                           max(context.now_ms, lot.expires_at_ms - EXPIRING_NOTICE_MS))
    return None


def notice_expiring_lot(account: Account | None, command: NoticeExpiringLot, context: Context
                        ) -> Transition:
    done = _notice(command.user_id, command.lot_id, None)
    lot = next((lot for lot in account.lots if lot.lot_id == command.lot_id), None) if (
        account is not None and account.status is AccountStatus.ACTIVE) else None
    if (lot is None or lot.expires_at_ms is None or lot.remaining_cents <= 0
            or lot.expires_at_ms <= context.now_ms):
        return Transition(account, (done,), None)
    notice_at = lot.expires_at_ms - EXPIRING_NOTICE_MS
    if notice_at > context.now_ms:  # its expiry moved later since the timer was set
        return Transition(account, (_notice(command.user_id, lot.lot_id, notice_at),), None)
    assert account is not None
    event = Notification(
        f"evt_expiring_{transaction_id_str(lot.lot_id)}_{lot.expires_at_ms}", account.user_id,
        EventType.CREDITS_EXPIRING, context.now_ms,
        {"lot_id": transaction_id_str(lot.lot_id), "category": lot.category.value,
         "remaining_cents": lot.remaining_cents, "expires_at_ms": lot.expires_at_ms,
         "balance_cents": account.balance_cents})
    return Transition(account, (done, event), None)


HANDLERS = {NoticeExpiringLot: notice_expiring_lot}
