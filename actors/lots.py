"""`CreditLots`: reading an account's lots at the engine's time, and the operators' undo tools
(void a lot, debit by hand, reverse a usage event). Each use case validates, builds the
command, lets the account's actor decide and waits until it is durable, like `Billing`."""

from __future__ import annotations

from actors.journal import Journal
from actors.system import ActorSystem, WallClock
from engine.account import Account, AccountAt
from engine.commands import SCOPE_USAGE, CreditResult, GetAccount, OpenAccount, UsageEventRecord
from engine.errors import InvalidInput, NotFound, NotYetApplicable
from engine.ids import UserId, parse_key, parse_transaction_id
from engine.money import require_amount_cents
from engine.undo import (
    DebitCredits,
    ReverseUsage,
    VoidLot,
    debit_fingerprint,
    reversal_fingerprint,
    void_fingerprint,
)
from storage.store import Store

DESCRIPTION_LENGTH_MAX = 500


def checked_reason(text: object) -> str:
    """An operator's reason, stored as the entry's description."""
    if not isinstance(text, str) or len(text) > DESCRIPTION_LENGTH_MAX:
        raise InvalidInput(
            f"reason must be a string of at most {DESCRIPTION_LENGTH_MAX} characters",
            {"field": "reason"})
    return text


def _key(idempotency_key: str | None) -> str | None:
    return parse_key("idempotency_key", idempotency_key) if idempotency_key else None


class CreditLots:
    def __init__(self, store: Store, journal: Journal, system: ActorSystem,
                 wall_clock_ms: WallClock) -> None:
        self._store = store
        self._journal = journal
        self._system = system
        self._wall_clock_ms = wall_clock_ms

    async def account_at(self, user_id: UserId, *, open_on_first_use: bool = True
                         ) -> AccountAt:
        """The account and the engine's time it was read at: which lots are in effect, what
        is available and what expires next all depend on it."""
        command = OpenAccount(user_id) if open_on_first_use else GetAccount(user_id)
        account = await self._system.call(command, Account)
        return AccountAt(account, self._wall_clock_ms())

    async def void(self, user_id: UserId, lot_id: str, *, reason: str = "",
                   idempotency_key: str | None = None) -> CreditResult:
        lot = parse_transaction_id(lot_id, "lot_id")
        command = VoidLot(user_id, lot, _key(idempotency_key), void_fingerprint(user_id, lot),
                          checked_reason(reason))
        return await self._system.call(command, CreditResult)

    async def debit(self, user_id: UserId, amount_cents: int, *, reason: str = "",
                    idempotency_key: str | None = None) -> CreditResult:
        amount = require_amount_cents("amount_cents", amount_cents)
        command = DebitCredits(user_id, amount, _key(idempotency_key),
                               debit_fingerprint(user_id, amount), checked_reason(reason))
        return await self._system.call(command, CreditResult)

    async def reverse_usage(self, event_id: str, *, reason: str = "") -> CreditResult:
        """Give back what a usage event debited, to the lots it came from; once per event."""
        event_id = parse_key("event_id", event_id)
        event = (self._journal.inflight_outcome(SCOPE_USAGE, event_id)
                 or self._store.get_outcome(SCOPE_USAGE, event_id))
        if not isinstance(event, UsageEventRecord):
            raise NotFound(f"no usage event {event_id!r}", {"event_id": event_id})
        # Entries never change once stored; one still committing is not readable yet.
        usage = self._store.get_entry(event.result.transaction_id)
        if usage is None:
            raise NotYetApplicable(f"usage event {event_id!r} is still being committed",
                                   {"event_id": event_id})
        command = ReverseUsage(event.user_id, event_id, usage,
                               reversal_fingerprint(event.user_id, event_id),
                               checked_reason(reason))
        return await self._system.call(command, CreditResult)
