"""`SpendControls`: reading and setting an account's spend caps and time zone. Like `Billing`,
each use case validates, builds the command, lets the account's actor decide and waits
until it is durable."""

from __future__ import annotations

from collections.abc import Sequence

from actors.system import ActorSystem, WallClock
from engine.account import Account, AccountAt
from engine.caps import CapSetting, validated_caps, validated_thresholds, zone
from engine.commands import GetAccount, OpenAccount
from engine.controls import SetSpendControls
from engine.ids import UserId


class SpendControls:
    def __init__(self, system: ActorSystem, wall_clock_ms: WallClock) -> None:
        self._system = system
        self._wall_clock_ms = wall_clock_ms

    async def get(self, user_id: UserId, *, open_on_first_use: bool = True) -> AccountAt:
        """The account with the engine's time: a cap's window and spending depend on it."""
        command = OpenAccount(user_id) if open_on_first_use else GetAccount(user_id)
        account = await self._system.call(command, Account)
        return AccountAt(account, self._wall_clock_ms())

    async def set(self, user_id: UserId, caps: Sequence[CapSetting], *,
                  timezone: str | None = None, low_balance_cents: Sequence[int] | None = None,
                  open_on_first_use: bool = True) -> AccountAt:
        """Replace the caps (what was spent in a cap's current window is kept); set the time
        zone and the `balance.low` thresholds when given."""
        wanted = validated_caps(caps)
        thresholds = (validated_thresholds(low_balance_cents)
                      if low_balance_cents is not None else None)
        if timezone is not None:
            zone(timezone)
        if open_on_first_use:
            await self._system.call(OpenAccount(user_id), Account)
        account = await self._system.call(
            SetSpendControls(user_id, wanted, timezone, thresholds), Account)
        return AccountAt(account, self._wall_clock_ms())
