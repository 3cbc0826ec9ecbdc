"""The auto-refill worker: charges the refills accounts raise, off the debit path.

An account raises a refill in the commit of the debit that took it below its trigger (the
`refills` index holds it until it is resolved), so nothing is lost across a crash and debits
never wait for Stripe. The same commit makes an auto-refill deadline due (the one deadline
scheduler, actors/deadlines.py, also finds it at start); the worker charges each due refill
with an off-session PaymentIntent and reports the outcome to the account's actor:
- succeeded: credited once (keyed on the PaymentIntent, so the webhook can come first);
- declined: recorded; tried again after a backoff; after REFILL_ATTEMPTS_MAX declines the
  account switches auto-refill off and shows why;
- Stripe unreachable or failing: not a decline; tried again later, with backoff.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

import stripe
import trio

from actors.payments import Payments
from engine.errors import BillingError, DuplicateEvent
from engine.ids import UserId
from engine.ledger import EntryType
from engine.payments import RefillIntent
from engine.plans import Plans
from integrations.stripe.gateway import StripeGateway

log = logging.getLogger("zbilling.refill")

DECLINE_BACKOFF_BASE_S = 30.0
UNREACHABLE_BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 600.0
ATTEMPTS_IN_FLIGHT_MAX = 8

AttemptKey = tuple[UserId, int, int]


class RefillWorker:
    def __init__(self, gateway: StripeGateway, payments: Payments, plans: Plans, *,
                 decline_backoff_s: float = DECLINE_BACKOFF_BASE_S,
                 unreachable_backoff_s: float = UNREACHABLE_BACKOFF_BASE_S,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._gateway = gateway
        self._payments = payments
        self._plans = plans
        self._decline_backoff_s = decline_backoff_s
        self._unreachable_backoff_s = unreachable_backoff_s
        self._clock = clock
        self._not_before: dict[AttemptKey, float] = {}
        self._unreachable_streak: dict[AttemptKey, int] = {}
        self._running: set[UserId] = set()
        self._limiter = trio.CapacityLimiter(ATTEMPTS_IN_FLIGHT_MAX)
        self._nursery: trio.Nursery | None = None
        # outcome -> count; exported as zbilling_auto_refill_attempts_total.
        self.outcomes: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._payments.on_refill_due(self._due)
            task_status.started()
            await trio.sleep_forever()

    def _due(self, user_id: UserId) -> None:
        """The account's refill is due: attempt it, unless its backoff says later."""
        assert self._nursery is not None
        intent = self._payments.pending_refill(user_id)
        current = (user_id, intent.number, intent.declines) if intent is not None else None
        for table in (self._not_before, self._unreachable_streak):
            for key in [key for key in table if key[0] == user_id and key != current]:
                del table[key]  # earlier attempts of a refill that moved on or ended
        if intent is None or user_id in self._running:
            return  # resolved meanwhile, or an attempt is running (it re-arms if needed)
        current = (user_id, intent.number, intent.declines)
        wait_s = self._not_before.get(current, 0) - self._clock()
        if wait_s > 0:
            self._payments.retry_refill_after(user_id, wait_s)
            return
        self._running.add(user_id)
        self._nursery.start_soon(self._attempt, intent)

    def _retry_after(self, key: AttemptKey, delay_s: float) -> None:
        self._not_before[key] = self._clock() + delay_s
        self._payments.retry_refill_after(key[0], delay_s)

    async def _attempt(self, intent: RefillIntent) -> None:
        key = (intent.user_id, intent.number, intent.declines)
        try:
            async with self._limiter:
                outcome = await self._charge(intent)
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError,
                stripe.AuthenticationError) as error:
            streak = self._unreachable_streak.get(key, 0) + 1
            self._unreachable_streak[key] = streak
            self._retry_after(key, _backoff(self._unreachable_backoff_s, streak))
            log.warning("auto-refill %s #%d: Stripe unavailable (%s); retrying later",
                        intent.user_id, intent.number, type(error).__name__)
            outcome = "stripe_unavailable"
        except BillingError as error:  # the account closed meanwhile, the engine stopped, …
            log.warning("auto-refill %s #%d not recorded: %s", intent.user_id, intent.number,
                        error.message)
            self._retry_after(key, self._decline_backoff_s)
            outcome = "not_recorded"
        except Exception:
            # Supervision: a surprise in one attempt (say, an odd Stripe answer) must not stop
            # refills, nor the server; this refill is tried again later.
            log.exception("auto-refill %s #%d failed", intent.user_id, intent.number)
            self._retry_after(key, self._decline_backoff_s)
            outcome = "error"
        finally:
            self._running.discard(intent.user_id)
        self.outcomes[outcome] += 1

    async def _charge(self, intent: RefillIntent) -> str:
        method = await self._gateway.default_payment_method(intent.customer_id)
        if method is None:
            return await self._declined(intent, "no default payment method")
        try:
            payment = await self._gateway.charge_refill(
                intent, method, self._plans.price_usd_cents(intent.amount_cents, intent.plan))
        except stripe.CardError as error:
            return await self._declined(intent, error.code or "card_declined")
        except stripe.InvalidRequestError as error:
            return await self._declined(intent, error.user_message or "invalid_request")
        status = payment.get("status")
        if status == "succeeded":
            try:
                await self._payments.credit_payment(
                    intent.user_id, str(payment["id"]), intent.amount_cents,
                    entry_type=EntryType.AUTO_REFILL,
                    description=f"Auto-refill of {intent.amount_cents:,} credits",
                    metadata={"payment_intent": str(payment["id"])},
                    refill_number=intent.number,
                    paid_usd_cents=payment.get("amount"),
                )
            except DuplicateEvent:
                return "succeeded_webhook_first"
            return "succeeded"
        if status in ("requires_action", "requires_payment_method", "canceled"):
            return await self._declined(intent, f"payment {status}")
        # processing: the payment_intent.succeeded webhook will credit it.
        self._retry_after((intent.user_id, intent.number, intent.declines),
                          self._decline_backoff_s)
        return "processing"

    async def _declined(self, intent: RefillIntent, reason: str) -> str:
        result = await self._payments.decline_refill(intent.user_id, intent.number, reason)
        log.info("auto-refill %s #%d declined (%s), %d so far%s", intent.user_id,
                 intent.number, reason, result.declines,
                 "; auto-refill switched off" if result.gave_up else "")
        if result.gave_up:
            return "gave_up"
        self._retry_after((intent.user_id, intent.number, result.declines),
                          _backoff(self._decline_backoff_s, result.declines))
        return "declined"


def _backoff(base_s: float, attempt: int) -> float:
    """Exponential with full jitter, capped."""
    return random.uniform(0, min(BACKOFF_MAX_S, base_s * 2 ** (attempt - 1)))
