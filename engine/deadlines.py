"""Time-driven work as records: a transition that makes something due later emits a
`Deadline` in the same commit as the state change, so the schedule survives a crash exactly
as the state does, and nothing outside the engine arms a timer by hand.

One scheduler (actors/deadlines.py) keeps the deadlines near in time in a heap, loaded from
an index ordered by due time, and turns each due one into work for its kind.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.ids import UserId


class DeadlineKind(StrEnum):
    RESERVATION_EXPIRY = "reservation_expiry"  # key: the reservation id
    SUBSCRIPTION = "subscription"  # key: the user id (period end, grace end, renewal)
    AUTO_REFILL = "auto_refill"  # key: the user id; due at once, retried by the worker
    LOT_EXPIRY = "lot_expiry"  # key: the user id (its next lot expiry, engine/expiry.py)
    LOT_EXPIRY_NOTICE = "lot_expiry_notice"  # key: user id ":" lot id (engine/expiring.py)


class Deadline(msgspec.Struct, frozen=True, gc=False):
    """A record: `(kind, key)` is due at `due_ms` (epoch ms); None: nothing is due any more.
    A later deadline of the same `(kind, key)` replaces the earlier one."""

    kind: DeadlineKind
    key: str
    user_id: UserId
    due_ms: int | None


def user_deadline(kind: DeadlineKind, user_id: UserId, due_ms: int | None) -> Deadline:
    """A deadline keyed on the account itself (one of its kind per account)."""
    return Deadline(kind, str(user_id), user_id, due_ms)
