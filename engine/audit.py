"""The ledger invariants (README "Ledger invariants"), checked over one account and its entries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from engine.account import Account
from engine.ids import transaction_id_str
from engine.ledger import GRANTED_TYPES, OTHER_CREDIT_TYPES, PURCHASED_TYPES, EntryType, LedgerEntry
from engine.lots import MIGRATED_LOT_ID, lots_problems, order_problems
from engine.money import MICROS_PER_CREDIT


def audit_account(
    account: Account, entries: Iterable[LedgerEntry], open_holds_cents: int = 0
) -> list[str]:
    """Every violation found, in words; an empty list means the account is sound.

    `entries` are the account's entries oldest first; `open_holds_cents` the sum of its open
    reservations, which must equal `held`.
    """
    ledger_lots = LedgerLots()
    problems = _audit_balance(account, ledger_lots.watch(entries), open_holds_cents)
    problems.extend(lots_problems(account.lots, account.balance_cents, account.debt_cents,
                                  account.held_cents))
    problems.extend(order_problems(account.lots))
    problems.extend(ledger_lots.problems(account))
    return problems


def _audit_balance(
    account: Account, entries: Iterable[LedgerEntry], open_holds_cents: int
) -> list[str]:
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
        elif entry.entry_type in OTHER_CREDIT_TYPES:
            other += entry.amount
            # A Stripe refund takes back credits the user may already have spent.
            owed_after_commit |= entry.amount < 0
    if account.balance_cents != total:
        problems.append(f"invariant 1: balance {account.balance_cents} != sum of entries {total}")
    if (account.balance_cents - account.held_cents < -account.overdraft_limit_cents
            and not owed_after_commit):
        problems.append(
            f"invariant 3: balance {account.balance_cents} less held {account.held_cents} is below "
            f"the overdraft limit {account.overdraft_limit_cents}"
        )
    if account.held_cents != open_holds_cents:
        problems.append(f"held {account.held_cents} != {open_holds_cents} in open reservations")
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
    if account.seq != count:
        problems.append(f"seq {account.seq} != {count} entries")
    if not 0 <= account.unbilled_micros < MICROS_PER_CREDIT:
        problems.append(f"unbilled_micros {account.unbilled_micros} out of range")
    if account.held_cents < 0:
        problems.append(f"held {account.held_cents} is negative")
    return problems


class LedgerLots:
    """Each lot as the ledger tells it: what opened it and what every entry took from it."""

    def __init__(self) -> None:
        self.opened: dict[int, int] = {}  # lot id -> credits it opened with
        self.taken: dict[tuple[EntryType, int], int] = defaultdict(int)

    def watch(self, entries: Iterable[LedgerEntry]) -> Iterator[LedgerEntry]:
        """`entries`, each noted on its way through."""
        for entry in entries:
            self.add(entry)
            yield entry

    def add(self, entry: LedgerEntry) -> None:
        kind = entry.entry_type if entry.entry_type in _OWN_COUNTER else EntryType.USAGE
        for lot_id, cents in entry.draws:
            self.taken[kind, lot_id] += cents
        if entry.amount > 0:
            # What a credit gave back to other lots (a reversal) did not open its own lot.
            returned = sum(cents for lot_id, cents in entry.draws
                           if lot_id != entry.transaction_id)
            if entry.amount + returned > 0:
                self.opened[entry.transaction_id] = entry.amount + returned

    def problems(self, account: Account) -> list[str]:
        found: list[str] = []
        for lot in account.lots:
            name = transaction_id_str(lot.lot_id)
            opened = self.opened.get(lot.lot_id)
            if lot.lot_id != MIGRATED_LOT_ID and opened != lot.original_cents:
                found.append(f"lot {name} holds {lot.original_cents} but its entry opened "
                             f"{opened}")
            for kind, counted in ((EntryType.EXPIRY, lot.expired_cents),
                                  (EntryType.VOID, lot.voided_cents),
                                  (EntryType.USAGE, lot.drawn_cents)):
                if self.taken[kind, lot.lot_id] != counted:
                    found.append(f"lot {name}: {kind.value} draws in the ledger "
                                 f"{self.taken[kind, lot.lot_id]} != {counted} on the lot")
        return found


# Entry types whose draws a lot counts apart from its ordinary draws.
_OWN_COUNTER = frozenset({EntryType.EXPIRY, EntryType.VOID})
