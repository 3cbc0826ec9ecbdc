"""`Payments`: the engine side of Stripe payments (credits, refunds, auto-refill state).

Stripe itself is called by integrations/stripe; this facade only turns what Stripe said into
commands for the account's actor, and waits until they are durable, like `Billing` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from actors.deadlines import Deadlines
from actors.journal import OPERATOR, Journal
from actors.system import ActorSystem, WallClock
from engine.account import Account
from engine.commands import AddCredits, CreditResult, KeyRecord, WebhookMarker
from engine.deadlines import DeadlineKind, user_deadline
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import LotDefaults, LotRequest
from engine.payments import (
    SCOPE_STRIPE_PAYMENT,
    DeclineRefill,
    RefillDeclined,
    RefillIntent,
    SetStripeCustomer,
    TakeBackCredits,
    payment_fingerprint,
)
from storage.store import Store


class Payments:
    def __init__(self, store: Store, journal: Journal, system: ActorSystem,
                 deadlines: Deadlines, wall_clock_ms: WallClock, *,
                 lot_defaults: LotDefaults) -> None:
        self._lot_defaults = lot_defaults
        self._store = store
        self._journal = journal
        self._system = system
        self._deadlines = deadlines
        self._wall_clock_ms = wall_clock_ms

    def marker(self, provider: str, event_id: str, event_type: str) -> WebhookMarker:
        return WebhookMarker(provider, event_id, event_type, self._wall_clock_ms())

    async def record_webhook(self, marker: WebhookMarker) -> None:
        """Remember an event that changed no ledger entry (its marker alone is committed)."""
        await self._journal.submit(OPERATOR, None, [marker]).wait()

    def webhook_applied(self, provider: str, event_id: str) -> bool:
        return self._store.get_webhook(provider, event_id) is not None

    def credited_payment(self, payment_intent_id: str) -> KeyRecord | None:
        """What a PaymentIntent credited (committed or about to be), or None."""
        found = (self._journal.inflight_outcome(SCOPE_STRIPE_PAYMENT, payment_intent_id)
                 or self._store.get_outcome(SCOPE_STRIPE_PAYMENT, payment_intent_id))
        return found if isinstance(found, KeyRecord) else None

    def pending_refill(self, user_id: UserId) -> RefillIntent | None:
        """The account's auto-refill in flight, if any (as committed)."""
        return self._store.get_refill(user_id)

    def on_refill_due(self, due: Callable[[UserId], None]) -> None:
        """Call `due` for each account whose auto-refill should be attempted now: once its
        refill is committed (or found at start), and again after each `retry_refill_after`."""
        self._deadlines.handle(DeadlineKind.AUTO_REFILL, lambda deadline: due(deadline.user_id))

    def retry_refill_after(self, user_id: UserId, delay_s: float) -> None:
        due_ms = self._wall_clock_ms() + int(delay_s * 1000)
        self._deadlines.remind(user_deadline(DeadlineKind.AUTO_REFILL, user_id, due_ms))

    async def set_customer(self, user_id: UserId, customer_id: str) -> Account:
        account = await self._system.call(SetStripeCustomer(user_id, customer_id), Account)
        return account

    async def credit_payment(
        self,
        user_id: UserId,
        payment_intent_id: str,
        amount_cents: int,
        *,
        entry_type: EntryType,
        description: str,
        metadata: Mapping[str, Any],
        webhook: WebhookMarker | None = None,
        refill_number: int | None = None,
        paid_usd_cents: int | None = None,
    ) -> CreditResult:
        """Credit a paid PaymentIntent once; a second arrival raises DuplicateEvent. Its lot
        records `paid_usd_cents`, what the credits cost."""
        command = AddCredits(
            user_id=user_id,
            amount_cents=amount_cents,
            entry_type=entry_type,
            key=payment_intent_id,
            fingerprint=payment_fingerprint(user_id, amount_cents, entry_type),
            description=description,
            metadata=metadata,
            scope=SCOPE_STRIPE_PAYMENT,
            webhook=webhook,
            refill_number=refill_number,
            lot=self._lot_defaults.terms(entry_type, self._wall_clock_ms(),
                                         LotRequest(paid_usd_cents=paid_usd_cents)),
        )
        result = await self._system.call(command, CreditResult)
        return result

    async def take_back(self, user_id: UserId, charge_id: str, total_cents: int, *,
                        description: str, metadata: Mapping[str, Any],
                        webhook: WebhookMarker | None = None,
                        lot_id: int | None = None) -> CreditResult:
        """Take back refunded credits, from the refunded payment's lot (`lot_id`) first."""
        command = TakeBackCredits(user_id, charge_id, total_cents, description, metadata,
                                  webhook, lot_id)
        result = await self._system.call(command, CreditResult)
        return result

    async def decline_refill(self, user_id: UserId, number: int, reason: str) -> RefillDeclined:
        result = await self._system.call(DeclineRefill(user_id, number, reason), RefillDeclined)
        return result
