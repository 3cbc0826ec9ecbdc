"""The ledger invariants (README "Ledger invariants"), checked over one account and its entries."""

from __future__ import annotations

from collections.abc import Iterable

from engine.account import Account
from engine.ledger import GRANTED_TYPES, OTHER_CREDIT_TYPES, PURCHASED_TYPES, EntryType, LedgerEntry
from engine.money import MICROS_PER_CREDIT


def audit_account(
    account: Account, entries: Iterable[LedgerEntry], open_holds_cents: int = 0
) -> list[str]:
    """Every violation found, in words; an empty list means the account is sound.

    `entries` are the account's entries oldest first; `open_holds_cents` the sum of its open
    reservations, which must equal `held`.
    """
    problems: list[str] = []
    running = 0
    total = 0
    count = 0
    purchased = granted = used = other = 0
    owed_after_commit = False
    previous_id = -1
    for count, entry in enumerate(entries, 1):  # noqa: B007 - count is read after the loop
        if entry.user_id != account.user_id:
            problems.append(f"entry {entry.transaction_id} belongs to {entry.user_id}")
        if entry.transaction_id <= previous_id:
            problems.append(f"entry {entry.transaction_id} is out of order")
        previous_id = entry.transaction_id
        running += entry.amount
        total += entry.amount
        if entry.balance_after != running:
            problems.append(
                f"invariant 2: entry {entry.transaction_id} balance_after "
                f"{entry.balance_after} != previous + amount = {running}"
            )
            running = entry.balance_after
        if entry.entry_type is EntryType.USAGE:
            used -= entry.amount
            if entry.amount > 0:
                problems.append(f"usage entry {entry.transaction_id} credits the account")
            # A reservation commit is charged even past the limit (the service was delivered).
            if "reservation_id" in entry.metadata:
                owed_after_commit = True
            elif entry.balance_after < -account.overdraft_limit_cents:
                problems.append(
                    f"invariant 3: usage entry {entry.transaction_id} left the balance at "
                    f"{entry.balance_after}, below the overdraft limit"
                )
        elif entry.entry_type in PURCHASED_TYPES:
            purchased += entry.amount
        elif entry.entry_type in GRANTED_TYPES:
            granted += entry.amount
            # Subscription and promotional grants only ever add credits.
            if entry.amount <= 0:
                problems.append(f"{entry.entry_type.value} entry {entry.transaction_id} of "
                                f"{entry.amount} credits")
        elif entry.entry_type in OTHER_CREDIT_TYPES:
            other += entry.amount
            # A Stripe refund takes back credits the user may already have spent.
            owed_after_commit |= entry.amount < 0
    if account.balance_cents != total:
        problems.append(f"invariant 1: balance {account.balance_cents} != sum of entries {total}")
    if account.available < -account.overdraft_limit_cents and not owed_after_commit:
        problems.append(
            f"invariant 3: balance {account.balance_cents} less held {account.held_cents} is below "
            f"the overdraft limit {account.overdraft_limit_cents}"
        )
    if account.held_cents != open_holds_cents:
        problems.append(f"held {account.held_cents} != {open_holds_cents} in open reservations")
    problems.extend(_lifetime_problems(account, purchased, granted, used, other))
    if account.seq != count:
        problems.append(f"seq {account.seq} != {count} entries")
    if not 0 <= account.unbilled_micros < MICROS_PER_CREDIT:
        problems.append(f"unbilled_micros {account.unbilled_micros} out of range")
    if account.held_cents < 0:
        problems.append(f"held {account.held_cents} is negative")
    return problems


def _lifetime_problems(account: Account, purchased: int, granted: int, used: int, other: int
                       ) -> list[str]:
    """Invariant 4, and each lifetime counter against the sum of its entries."""
    problems = []
    lifetime = (account.lifetime_purchased_cents + account.lifetime_granted_cents + other
                - account.lifetime_used_cents)
    if lifetime != account.balance_cents:
        problems.append(
            f"invariant 4: purchased + granted + other - used = {lifetime} != balance "
            f"{account.balance_cents}"
        )
    for name, stored, derived in (
        ("lifetime_purchased", account.lifetime_purchased_cents, purchased),
        ("lifetime_granted", account.lifetime_granted_cents, granted),
        ("lifetime_used", account.lifetime_used_cents, used),
    ):
        if stored != derived:
            problems.append(f"{name} {stored} != {derived} from the entries")
    return problems
