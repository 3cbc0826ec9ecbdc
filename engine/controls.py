"""Spend-control commands: set an account's caps and time zone, and ask what a caller can
still spend (the balance and every hard cap that applies, in one step of the actor)."""

from __future__ import annotations

import msgspec
from msgspec.structs import replace

from engine import caps
from engine.account import Account, live_account
from engine.caps import NO_CONTROLS, SpendCap
from engine.commands import CommandBase, Context, Transition
from engine.ids import UserId
from engine.money import MICROS_PER_CREDIT


class SetSpendControls(CommandBase):
    """Replace the account's caps; `timezone` None keeps the one set."""

    user_id: UserId
    caps: tuple[SpendCap, ...]
    timezone: str | None = None


class GetHeadroom(CommandBase):
    """What `agent_id` through service key `service` may still spend now."""

    user_id: UserId
    agent_id: str | None = None
    service: str | None = None


ControlsCommand = SetSpendControls | GetHeadroom


class Headroom(msgspec.Struct, frozen=True, gc=False):
    """`balance_micros`: what the balance allows (holds, unbilled fractions and the overdraft
    counted); `caps_micros`: what the hard caps allow (None: none applies)."""

    balance_cents: int
    available_cents: int
    balance_micros: int
    caps_micros: int | None

    @property
    def spendable_micros(self) -> int:
        capped = self.balance_micros if self.caps_micros is None else min(
            self.balance_micros, self.caps_micros)
        return max(capped, 0)


def _set(account: Account | None, command: SetSpendControls, context: Context) -> Transition:
    live = live_account(account, command.user_id)
    controls = live.controls or NO_CONTROLS
    timezone = command.timezone if command.timezone is not None else controls.timezone
    updated = replace(live, controls=caps.replace_caps(controls, timezone, command.caps),
                      updated_at_ms=context.now_ms)
    return Transition(updated, (), updated)


def _headroom(account: Account | None, command: GetHeadroom, context: Context) -> Transition:
    live = live_account(account, command.user_id)
    available = live.available_cents(context.now_ms)
    balance_micros = ((available + live.overdraft_limit_cents) * MICROS_PER_CREDIT
                      - live.unbilled_micros)
    capped = (None if live.controls is None else caps.headroom_micros(
        live.controls, live.held_cents, command.agent_id, command.service, context.now_ms))
    return Transition(live, (), Headroom(live.balance_cents, available, balance_micros, capped))


HANDLERS = {SetSpendControls: _set, GetHeadroom: _headroom}
