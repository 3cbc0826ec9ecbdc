"""The one door for balance changes, and the one rule for a key seen before.

Every ledger entry is built by `post_entry`, which moves the balance, `seq`, the update time,
the lifetime counter of the entry's type and the credit lots together, so no feature can
forget one of them: a credit opens a lot, a debit burns lots in burn order (engine/lots.py).
Every idempotency key that was used before is answered by `repeat_or_conflict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from msgspec.structs import replace

from engine.account import Account
from engine.commands import Context, PriorOutcome
from engine.errors import DuplicateEvent, IdempotencyConflict, require
from engine.ledger import GRANTED_TYPES, PURCHASED_TYPES, EntryType, LedgerEntry
from engine.lots import Booking, Draw, LotTerms, burn, default_terms, open_lot

_NO_METADATA: Mapping[str, Any] = {}


def post_entry(
    account: Account,
    context: Context,
    entry_type: EntryType,
    amount_cents: int,
    *,
    source_key: str | None,
    description: str = "",
    metadata: Mapping[str, Any] = _NO_METADATA,
    terms: LotTerms | None = None,
    first: tuple[Draw, ...] = (),
    booked: Booking | None = None,
    **changes: Any,
) -> tuple[Account, LedgerEntry]:
    """The account after one signed entry of `amount_cents`, and the entry (its
    `balance_after` is the new balance: invariant 2 holds by construction). `changes` are
    other fields the same transition sets on the account.

    Lots: a credit opens one on `terms` (default: its type's); a debit burns the lots `first`
    names, then the rest in burn order; `booked` is a lot change decided by the caller
    (expiry, void, reversal)."""
    balance = account.balance_cents + amount_cents
    if booked is None:
        if amount_cents > 0:
            booked = open_lot(account.lots, account.debt_cents, amount_cents,
                              lot_id=context.transaction_id, source=entry_type.value,
                              terms=terms or default_terms(entry_type))
        elif amount_cents < 0:
            booked = burn(account.lots, account.debt_cents, -amount_cents, context.now_ms,
                          first)
    if booked is not None:
        changes["lots"], changes["debt_cents"], draws = booked
    else:
        draws = ()
    entry = LedgerEntry(
        transaction_id=context.transaction_id,
        user_id=account.user_id,
        entry_type=entry_type,
        amount=amount_cents,
        balance_after=balance,
        created_at_ms=context.now_ms,
        source_key=source_key,
        description=description,
        metadata=metadata,
        draws=draws,
    )
    # The lifetime counters only grow (invariant 4 sums them with the other entry types).
    if entry_type is EntryType.USAGE:
        require(amount_cents <= 0, "usage entry of %d credits", amount_cents)
        changes["lifetime_used_cents"] = account.lifetime_used_cents - amount_cents
    elif entry_type in PURCHASED_TYPES:
        require(amount_cents >= 0, "%s entry of %d credits", entry_type.value, amount_cents)
        changes["lifetime_purchased_cents"] = account.lifetime_purchased_cents + amount_cents
    elif entry_type in GRANTED_TYPES:
        require(amount_cents >= 0, "%s entry of %d credits", entry_type.value, amount_cents)
        changes["lifetime_granted_cents"] = account.lifetime_granted_cents + amount_cents
    updated = replace(account, balance_cents=balance, seq=account.seq + 1,
                      updated_at_ms=context.now_ms, **changes)
    return updated, entry


def repeat_or_conflict(
    key: str, fingerprint: bytes, prior_fingerprint: bytes | None, original: Mapping[str, Any]
) -> NoReturn:
    """A key used before: the same request is a retry and gets the original result
    (`DuplicateEvent`); another request under the same key is a client bug."""
    if prior_fingerprint != fingerprint:
        raise IdempotencyConflict(key)
    raise DuplicateEvent(key, original)


def check_prior(key: str, fingerprint: bytes, prior: PriorOutcome | None) -> None:
    """Refuse a command whose key produced an outcome before (see `repeat_or_conflict`)."""
    if prior is not None:
        repeat_or_conflict(key, fingerprint, prior.fingerprint, prior.result.to_dict())
