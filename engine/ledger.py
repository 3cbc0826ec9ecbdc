"""Ledger entries: every balance change is one immutable, time-ordered entry."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from engine.ids import TransactionId, UserId


class EntryType(StrEnum):
    PURCHASE = "purchase"
    USAGE = "usage"
    SUBSCRIPTION_GRANT = "subscription_grant"
    REFUND = "refund"
    BONUS = "bonus"
    AUTO_REFILL = "auto_refill"
    ADJUSTMENT = "adjustment"
    # Credit lots (engine/lots.py): a lot's remainder expired or voided, an operator's debit,
    # a usage event given back.
    EXPIRY = "expiry"
    VOID = "void"
    DEBIT = "debit"
    REVERSAL = "reversal"
    # Promotional grants (engine/grants.py).
    SIGNUP_GRANT = "signup_grant"
    DAILY_GRANT = "daily_grant"
    REFERRAL_GRANT = "referral_grant"


# Which lifetime counter each entry type feeds (invariant 4, README "Ledger invariants").
PURCHASED_TYPES = frozenset({EntryType.PURCHASE, EntryType.AUTO_REFILL})
GRANTED_TYPES = frozenset({EntryType.SUBSCRIPTION_GRANT, EntryType.SIGNUP_GRANT,
                           EntryType.DAILY_GRANT, EntryType.REFERRAL_GRANT})
# Types an operator may grant by hand through the admin API.
ADMIN_GRANT_TYPES = frozenset({EntryType.REFUND, EntryType.BONUS, EntryType.ADJUSTMENT})
OTHER_CREDIT_TYPES = ADMIN_GRANT_TYPES | {EntryType.EXPIRY, EntryType.VOID, EntryType.DEBIT,
                                          EntryType.REVERSAL}


class LedgerEntry(msgspec.Struct, frozen=True, gc=False):
    """`amount` is signed credits; `source_key` is the event or idempotency key behind it."""

    transaction_id: TransactionId
    user_id: UserId
    entry_type: EntryType
    amount: int
    balance_after: int
    created_at_ms: int
    source_key: str | None = None
    description: str = ""
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    # (lot id, credits) the entry took from each lot (negative: gave back); a credit's draw
    # on its own lot is the debt it paid off (engine/lots.py).
    draws: tuple[tuple[int, int], ...] = ()
