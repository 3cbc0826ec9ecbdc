"""The storage contract every implementation keeps; tests check it against each of them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.account import Account
from engine.commands import PriorOutcome, WebhookMarker
from engine.deadlines import Deadline
from engine.export import ParkedEvent
from engine.ids import TransactionId, UserId
from engine.ledger import LedgerEntry
from engine.payments import RefillIntent
from engine.records import StoredRecord
from engine.reports import Totals
from engine.reservations import OpenHold, Reservation
from engine.webhooks import ParkedWebhook, WebhookEndpoint


class StoreError(RuntimeError):
    """Storage cannot go on (bad schema, I/O failure). The engine stops taking writes."""


class MapFull(StoreError):
    """The memory map is too small for this batch; grow it and write the batch again."""


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Everything one group commit writes: the latest state of each touched account and the
    records of every command in the batch, in order."""

    accounts: Sequence[Account]
    records: Sequence[StoredRecord]
    # Lago events appended to the outbox in the same transaction (transactional outbox).
    outbox: Sequence[dict[str, Any]] = ()


@dataclass(frozen=True, slots=True)
class EntryPage:
    entries: list[LedgerEntry]
    has_more: bool


class Store(Protocol):
    def commit(self, batch: CommitBatch) -> None:
        """Write the whole batch in one durable transaction, or nothing (raise StoreError)."""
        ...

    def get_account(self, user_id: UserId) -> Account | None: ...

    def get_outcome(self, scope: str, key: str) -> PriorOutcome | None:
        """What an idempotency key produced, if it was used before."""
        ...

    def list_entries(
        self,
        user_id: UserId,
        limit: int,
        offset: int = 0,
        before: TransactionId | None = None,
    ) -> EntryPage:
        """A user's entries newest first: skip `offset`, start below `before` when given."""
        ...

    def iter_accounts(self, *, checked: bool = True) -> Iterator[Account]:
        """Every account; `checked=False` reads one that breaks an invariant as it is (for
        `zbilling verify`, which reports what is wrong instead of stopping)."""
        ...

    def iter_user_entries(self, user_id: UserId) -> Iterator[LedgerEntry]:
        """A user's entries oldest first."""
        ...

    def iter_outcomes(self) -> Iterator[PriorOutcome]: ...

    def count_entries(self) -> int: ...

    def last_transaction_id(self) -> int:
        """The highest transaction id stored (0 when empty): new ids must sort after it."""
        ...

    def get_entry(self, transaction_id: TransactionId) -> LedgerEntry | None: ...

    def get_reservation(self, reservation_id: str) -> Reservation | None: ...

    def iter_reservations(self) -> Iterator[Reservation]: ...

    def iter_open_holds(self) -> Iterator[OpenHold]:
        """Reservations still holding credits (cheap: closed ones are not visited)."""
        ...

    def get_webhook(self, provider: str, event_id: str) -> WebhookMarker | None:
        """The marker of a webhook event already applied."""
        ...

    def get_refill(self, user_id: UserId) -> RefillIntent | None:
        """The account's auto-refill in flight, if any."""
        ...

    def iter_deadlines(self, due_before_ms: int) -> Iterator[Deadline]:
        """Deadlines due before `due_before_ms`, earliest first (cheap: a prefix scan of an
        index ordered by due time)."""
        ...

    def checkpoint_due(self) -> bool:
        """Writes are waiting and the checkpoint interval passed, or too many are waiting."""
        ...

    def checkpoint(self) -> int:
        """Write what the log holds beyond the indexes into them; return how many writes.
        Raises MapFull: grow, then call again. Runs beside commits, never blocking one for
        longer than one log append."""
        ...

    def checkpoint_lag_s(self) -> float:
        """Seconds the oldest write not yet checkpointed has waited (0: none waits)."""
        ...

    def log_report(self) -> tuple[int, int, int]:
        """(checkpointed log position, last logged sequence, writes not yet checkpointed)."""
        ...

    def grow(self) -> None:
        """Make room after MapFull; called with no transaction open in this process."""
        ...

    def needs_growth(self) -> bool: ...

    def backup(self, destination: Path) -> None: ...

    def read_outbox(self, after_sequence: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        ...

    def outbox_depth(self) -> int: ...

    def export_cursor(self) -> int: ...

    def dead_letters(self) -> list[ParkedEvent]: ...

    # --- outbound webhooks (engine/webhooks.py) ---------------------------------------------

    def webhook_endpoints(self) -> list[WebhookEndpoint]:
        """Every registered endpoint with its cursor, as last committed."""
        ...

    def read_webhooks(self, after_sequence: int, limit: int
                      ) -> list[tuple[int, dict[str, Any]]]:
        """Webhook outbox rows `{event, only}` after `after_sequence`, oldest first."""
        ...

    def last_webhook_sequence(self) -> int: ...

    def webhook_dead_letters(self, endpoint_id: str | None = None) -> list[ParkedWebhook]: ...

    def usage_aggregates(self, user_id: UserId, from_day: int, to_day: int
                         ) -> Iterator[tuple[int, str, str, Totals]]:
        """The user's usage aggregates of those UTC days: (day, group kind, group, totals)."""
        ...

    def close(self) -> None: ...
