"""`Subscriptions`: the engine side of plan subscriptions, and the deadline sweeper.

Providers (Stripe, Lago, an admin) announce what happened; this facade turns each into a
command for the account's actor. The sweeper wakes for the deadlines the subscriptions set
(a cancelled one's period end, a past_due one's grace end, an admin plan's renewal).
"""

from __future__ import annotations

import logging

import trio

from actors.system import ActorSystem, WallClock
from engine.account import Account
from engine.commands import CreditResult
from engine.errors import BillingError, EngineStopped
from engine.ids import UserId
from engine.subscription_state import Manager
from engine.subscriptions import (
    CancelSubscription,
    EndSubscription,
    GrantPeriod,
    PaymentFailed,
    Subscribe,
    SweepSubscription,
)
from storage.store import Store

log = logging.getLogger("zbilling.subscriptions")

SWEEP_S = 1.0


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
                        period_end_ms: int, lago_plan_code: str | None) -> Account:
        return await self._account(Subscribe(user_id, subscription_id, plan, monthly_credits,
                                             managed_by, period_start_ms, period_end_ms,
                                             lago_plan_code))

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

    async def run_sweeper(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        task_status.started()
        while True:
            now_ms = self._wall_clock_ms()
            for user_id, deadline_ms in list(self._store.iter_subscription_deadlines()):
                if deadline_ms > now_ms:
                    continue
                try:
                    await self._system.execute(SweepSubscription(user_id))
                except EngineStopped:
                    log.error("engine stopped: the subscription sweeper halts")
                    return
                except BillingError as error:
                    log.warning("subscription of %s not swept: %s", user_id, error.message)
            await trio.sleep(SWEEP_S)
