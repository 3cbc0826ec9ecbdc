"""Spend controls: the command that sets an account's caps and time zone, and what a budget
buys (affordability: the output tokens a model call may have within what may be spent)."""

from __future__ import annotations

from msgspec.structs import replace

from engine import caps
from engine.account import Account, live_account
from engine.caps import NO_CONTROLS, SpendCap
from engine.commands import CommandBase, Context, Transition
from engine.ids import UserId
from engine.pricing import PricingConfig, price_micros
from engine.usage import TOKENS_MAX, LlmTokens


class SetSpendControls(CommandBase):
    """Replace the account's caps; `timezone` and `low_balance_cents` None keep what is set."""

    user_id: UserId
    caps: tuple[SpendCap, ...]
    timezone: str | None = None
    low_balance_cents: tuple[int, ...] | None = None


ControlsCommand = SetSpendControls


def _set(account: Account | None, command: SetSpendControls, context: Context) -> Transition:
    live = live_account(account, command.user_id)
    controls = live.controls or NO_CONTROLS
    timezone = command.timezone if command.timezone is not None else controls.timezone
    if command.low_balance_cents is not None:
        controls = replace(controls, low_balance_cents=command.low_balance_cents)
    # Windows start now: the calendar is consulted here, not on the next debit.
    chosen = caps.roll(caps.replace_caps(controls, timezone, command.caps), context.now_ms)
    updated = replace(live, controls=chosen, updated_at_ms=context.now_ms)
    return Transition(updated, (), updated)


def max_output_tokens(pricing: PricingConfig, estimate: LlmTokens, budget_micros: int) -> int:
    """The most output tokens a call with `estimate`'s prompt can have within `budget_micros`
    (0 when the prompt alone is more). Found by bisection over the price table's own rule,
    so minimum charges and long-context prices count exactly as a debit would."""
    def cost(output_tokens: int) -> int:
        return price_micros(pricing, replace(estimate, output_tokens=output_tokens))

    if cost(0) > budget_micros:
        return 0
    low, high = 0, TOKENS_MAX  # cost(low) fits; find the last that does
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget_micros:
            low = middle
        else:
            high = middle - 1
    return low


HANDLERS = {SetSpendControls: _set}
