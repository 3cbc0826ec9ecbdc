"""`Subscriptions`: the engine side of plan subscriptions.

Providers (Stripe, Lago, an admin) announce what happened; this facade turns each into a
command for the account's actor. The deadlines a subscription sets (a cancelled one's period
end, a past_due one's grace end, an admin plan's renewal) are kept by the one scheduler,
actors/deadlines.py, which sweeps the subscription when one comes.
"""

from __future__ import annotations

from actors.system import ActorSystem, WallClock
from engine.account import Account
from engine.commands import CreditResult
from engine.ids import UserId
from engine.lots import GrantRollover
from engine.subscription_state import Manager
from engine.subscriptions import (
    CancelSubscription,
    EndSubscription,
    GrantPeriod,
    PaymentFailed,
    Subscribe,
)
from storage.store import Store


class Subscriptions:
    def __init__(self, store: Store, system: ActorSystem, wall_clock_ms: WallClock) -> None:
        self._store = store
        self._system = system
        self._wall_clock_ms = wall_clock_ms

    async def _account(self, command: object) -> Account:
        account = await self._system.call(command, Account)  # type: ignore[arg-type]
        return account

    async def subscribe(self, user_id: UserId, subscription_id: str, plan: str, *,
                        monthly_credits: int, managed_by: Manager, period_start_ms: int,
                        period_end_ms: int, lago_plan_code: str | None,
                        grant_rollover: GrantRollover = "none") -> Account:
        return await self._account(Subscribe(user_id, subscription_id, plan, monthly_credits,
                                             managed_by, period_start_ms, period_end_ms,
                                             lago_plan_code, grant_rollover))

    async def grant(self, user_id: UserId, subscription_id: str, period_start_ms: int,
                    period_end_ms: int, source: str) -> CreditResult:
        """The period's credits, once; a repeat raises DuplicateEvent."""
        command = GrantPeriod(user_id, subscription_id, period_start_ms, period_end_ms, source)
        return await self._system.call(command, CreditResult)

    async def cancel(self, user_id: UserId) -> Account:
        return await self._account(CancelSubscription(user_id))

    async def payment_failed(self, user_id: UserId, subscription_id: str) -> Account:
        return await self._account(PaymentFailed(user_id, subscription_id))

    async def end(self, user_id: UserId, subscription_id: str) -> Account:
        return await self._account(EndSubscription(user_id, subscription_id))
