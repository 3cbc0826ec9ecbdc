"""`zbilling verify`: the ledger invariants over a whole data directory."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from engine.audit import audit_account
from engine.ids import UserId, transaction_id_str
from storage.store import Store


@dataclass(frozen=True, slots=True)
class Violation:
    subject: str
    problem: str


@dataclass(slots=True)
class VerifyReport:
    accounts: int = 0
    entries: int = 0
    outcomes: int = 0
    # The log: the position checkpointed into the indexes, the last record logged, and the
    # writes after the position (in the view checked, not yet in the indexes). Opening the
    # store already checked that the log is whole: every record after the position present
    # once, in order, its checksum right.
    log_position: int = 0
    log_last: int = 0
    log_writes_waiting: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def verify_store(store: Store) -> VerifyReport:
    """Check every account against its entries, and every stored outcome against the ledger."""
    report = VerifyReport()
    report.log_position, report.log_last, report.log_writes_waiting = store.log_report()
    if report.log_last < report.log_position:
        report.violations.append(Violation(
            "log", f"indexes claim record {report.log_position}, the log ends at "
                   f"{report.log_last}"))
    open_holds: dict[UserId, int] = defaultdict(int)
    open_ids: set[str] = set()
    for reservation in store.iter_reservations():
        if reservation.is_open:
            open_holds[reservation.user_id] += reservation.amount_cents
            open_ids.add(reservation.reservation_id)
    indexed_ids = {hold.reservation_id for hold in store.iter_open_holds()}
    if indexed_ids != open_ids:
        report.violations.append(
            Violation("open_holds", f"index lists {sorted(indexed_ids ^ open_ids)} wrongly")
        )
    indexed = 0
    for account in store.iter_accounts(checked=False):
        report.accounts += 1
        entries = list(store.iter_user_entries(account.user_id))
        indexed += len(entries)
        for problem in audit_account(account, entries, open_holds[account.user_id]):
            report.violations.append(Violation(f"account {account.user_id}", problem))
    report.entries = store.count_entries()
    if indexed != report.entries:
        report.violations.append(
            Violation("ledger", f"{report.entries} entries but {indexed} reachable by user")
        )
    for outcome in store.iter_outcomes():
        report.outcomes += 1
        subject = f"{outcome.scope} key {outcome.key!r}"
        recorded = outcome.result.transaction_id
        label = transaction_id_str(recorded)
        entry = store.get_entry(recorded)
        if entry is None:
            report.violations.append(Violation(subject, f"transaction {label} is missing"))
        elif entry.user_id != outcome.user_id or entry.source_key != outcome.key:
            report.violations.append(
                Violation(subject, f"transaction {label} was made by another key")
            )
        elif entry.balance_after != outcome.result.balance_cents:
            report.violations.append(
                Violation(subject, f"result balance differs from transaction {label}")
            )
    return report
