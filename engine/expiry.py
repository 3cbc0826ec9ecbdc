"""Lot expiry at the instant: one deadline per account (`DeadlineKind.LOT_EXPIRY`) at its next
lot expiry, and the command the scheduler sends when it comes, which journals one `expiry`
entry for every lot whose time has come (its draws say how much of each). The command decides
from the lots and the clock alone, so a repeat or an early wake-up expires nothing twice, and
a lot that expired while the server was down expires when the scheduler loads the deadline at
start.
"""

from __future__ import annotations

from msgspec.structs import replace

from engine.account import Account, AccountStatus, live_account
from engine.commands import CommandBase, Context, Transition
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import LotCategory, expire_due, find, may_expire_sooner, next_expiry_ms
from engine.payments import refill_if_low
from engine.posting import post_entry


class ExpireLots(CommandBase):
    """Sent by the lot-expiry timer."""

    user_id: UserId


def rearm(before: Account | None, after: Account) -> Deadline | None:
    """The account's lot-expiry deadline when a transition brought the next expiry nearer (a
    new lot, credits given back, a hold ended over an expired lot). One that moved later is
    left armed: it wakes early, expires nothing, and `expire_lots` re-arms it."""
    if before is None or after.lots is before.lots or not may_expire_sooner(before.lots,
                                                                             after.lots):
        return None
    due = next_expiry_ms(after.lots)
    if due is None:
        return None
    armed = next_expiry_ms(before.lots)
    if armed is not None and armed <= due:
        return None
    return user_deadline(DeadlineKind.LOT_EXPIRY, after.user_id, due)


def expire_lots(account: Account | None, command: ExpireLots, context: Context) -> Transition:
    if account is not None and account.status is AccountStatus.CLOSED:
        # A closed account's ledger is kept as it was: nothing is due on it any more.
        return Transition(account, (user_deadline(DeadlineKind.LOT_EXPIRY, account.user_id,
                                                  None),), None)
    live = live_account(account, command.user_id)
    booking = expire_due(live.lots, live.debt_cents, context.now_ms)
    if not booking.draws:
        # Nothing due (woke early, or a debit spent it first): arm for the next one.
        # A capped rollover that kept all it had moves only the lot's expiry.
        updated = (live if booking.lots is live.lots else
                   replace(live, lots=booking.lots, updated_at_ms=context.now_ms))
        deadline = user_deadline(DeadlineKind.LOT_EXPIRY, live.user_id,
                                 next_expiry_ms(updated.lots))
        return Transition(updated, (deadline,), None)
    by_category = {category.value + "_cents": 0 for category in LotCategory}
    for lot_id, cents in booking.draws:
        by_category[find(live.lots, lot_id).category.value + "_cents"] += cents
    expired = sum(cents for _, cents in booking.draws)
    updated, entry = post_entry(
        live, context, EntryType.EXPIRY, -expired, source_key=None,
        description=f"{expired:,} credits expired", metadata=by_category, booked=booking)
    deadline = user_deadline(DeadlineKind.LOT_EXPIRY, live.user_id, next_expiry_ms(updated.lots))
    # Expired credits leave the balance like spent ones: below the trigger, refill.
    updated, refill = refill_if_low(updated)
    return Transition(updated, (entry, deadline, *refill), entry)


HANDLERS = {ExpireLots: expire_lots}
