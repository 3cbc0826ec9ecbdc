"""Spend caps: what an account, one of its agents or one service key may spend per calendar
day, week or month, in the account's time zone.

A cap counts the exact cost (micro-credits) of usage charged in its window plus the credits
that open holds of its scope keep. A hard cap refuses a debit or a hold that would pass its
limit; a soft one only records that the limit was reached (a notification). Checked by the
account's single writer in the same step as the balance, so parallel calls cannot overspend.
Pure: the clock is an argument, and windows are computed with `zoneinfo` (the calendar, not
I/O the engine depends on: the tz database ships with Python's tzdata).
"""

from __future__ import annotations

import datetime
import functools
import zoneinfo
from collections.abc import Sequence
from enum import StrEnum
from typing import TypeVar

import msgspec
from msgspec.structs import replace

from engine.errors import BillingError, Conflict, InvalidInput
from engine.money import AMOUNT_CENTS_MAX, MICROS_PER_CREDIT, micros_to_cents_ceil, require_int

CAPS_PER_ACCOUNT_MAX = 16
LOW_BALANCE_THRESHOLDS_MAX = 8
SCOPE_NAME_LENGTH_MAX = 64
TIMEZONE_DEFAULT = "UTC"


class CapPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"  # ISO weeks: Monday 00:00 local time
    MONTH = "month"


class CapScope(StrEnum):
    ACCOUNT = "account"
    AGENT = "agent"  # the usage's agent_id
    SERVICE = "service"  # the name of the service key that reported the usage


class SpendCap(msgspec.Struct, frozen=True, gc=False):
    """One cap and its current window: `resets_at_ms` is the window's end (0: no window
    yet), `spent_micros` what usage cost in it."""

    scope: CapScope
    name: str  # the agent id or service key name; "" for the account scope
    period: CapPeriod
    limit_cents: int
    hard: bool
    window_start_ms: int = 0
    resets_at_ms: int = 0
    spent_micros: int = 0
    # A limit reached in this window was announced (once per window).
    reached: bool = False

    @property
    def identity(self) -> tuple[CapScope, str, CapPeriod]:
        return (self.scope, self.name, self.period)

    def applies(self, agent_id: str | None, service: str | None) -> bool:
        if self.scope is CapScope.ACCOUNT:
            return True
        return self.name == (agent_id if self.scope is CapScope.AGENT else service)


class ScopeHold(msgspec.Struct, frozen=True, gc=False):
    """Credits held by open reservations of one agent or service key (the account scope's
    holds are `Account.held_cents`)."""

    scope: CapScope
    name: str
    held_cents: int


class Controls(msgspec.Struct, frozen=True, gc=False):
    """An account's spend controls: its time zone, caps, what open holds keep per scope, and
    the balances below which `balance.low` is announced (engine/notifications.py)."""

    timezone: str = TIMEZONE_DEFAULT
    caps: tuple[SpendCap, ...] = ()
    holds: tuple[ScopeHold, ...] = ()
    low_balance_cents: tuple[int, ...] = ()


NO_CONTROLS = Controls()
E = TypeVar("E", bound=StrEnum)


class SpendLimitExceeded(BillingError):
    """402: a hard cap would be passed. Carries the numbers a gateway needs to wait or ask."""

    code = "spend_limit_exceeded"

    def __init__(self, cap: SpendCap, held_cents: int, required_micros: int) -> None:
        super().__init__(
            f"{cap.period.value} spend limit of {cap.limit_cents} credits reached"
            + (f" for {cap.scope.value} {cap.name!r}" if cap.name else ""),
            {
                "scope": cap.scope.value,
                "name": cap.name or None,
                "period": cap.period.value,
                "limit_cents": cap.limit_cents,
                "spent_cents": micros_to_cents_ceil(cap.spent_micros),
                "spent_micros": cap.spent_micros,
                "held_cents": held_cents,
                "required_cents": micros_to_cents_ceil(required_micros),
                "resets_at": _iso(cap.resets_at_ms),
            },
        )


def _iso(epoch_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- calendar windows -----------------------------------------------------------------------


@functools.cache
def timezone_names() -> frozenset[str]:
    """The IANA names this Python's tz database knows: what a cap's time zone may be (the
    API document lists the same set)."""
    return frozenset(zoneinfo.available_timezones())


@functools.lru_cache(maxsize=256)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """A time zone by IANA name, or InvalidInput."""
    if not isinstance(name, str) or name not in timezone_names():
        raise InvalidInput(f"unknown time zone {name!r}: an IANA name such as Europe/Berlin",
                           {"field": "timezone"})
    return zoneinfo.ZoneInfo(name)


def window(period: CapPeriod, timezone: str, now_ms: int) -> tuple[int, int]:
    """The calendar period containing `now_ms` in `timezone`: [start, end) in epoch ms.
    Local midnights are computed as wall times, so a DST change makes a day 23 or 25 hours."""
    tz = zone(timezone)
    today = datetime.datetime.fromtimestamp(now_ms / 1000, tz).date()
    if period is CapPeriod.DAY:
        start, end = today, today + datetime.timedelta(days=1)
    elif period is CapPeriod.WEEK:
        start = today - datetime.timedelta(days=today.weekday())
        end = start + datetime.timedelta(days=7)
    else:
        start = today.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    return _local_midnight_ms(start, tz), _local_midnight_ms(end, tz)


def _local_midnight_ms(day: datetime.date, tz: zoneinfo.ZoneInfo) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def current(cap: SpendCap, timezone: str, now_ms: int) -> SpendCap:
    """The cap in the window of `now_ms`: a window that ended starts afresh. One compare on
    the hot path; the calendar is consulted once per window."""
    if cap.window_start_ms <= now_ms < cap.resets_at_ms:
        return cap
    start, end = window(cap.period, timezone, now_ms)
    return replace(cap, window_start_ms=start, resets_at_ms=end, spent_micros=0, reached=False)


# --- the rules ------------------------------------------------------------------------------


def scope_held(controls: Controls, cap: SpendCap, account_held_cents: int) -> int:
    if cap.scope is CapScope.ACCOUNT:
        return account_held_cents
    for hold in controls.holds:
        if hold.scope is cap.scope and hold.name == cap.name:
            return hold.held_cents
    return 0


def check(controls: Controls, account_held_cents: int, agent_id: str | None,
          service: str | None, required_micros: int, *, now_ms: int) -> None:
    """Raise SpendLimitExceeded if `required_micros` more (a debit's cost, or a hold) would
    pass a hard cap that applies; spending exactly up to the limit is allowed."""
    for stored in controls.caps:
        if not stored.hard or not stored.applies(agent_id, service):
            continue
        cap = current(stored, controls.timezone, now_ms)
        held = scope_held(controls, cap, account_held_cents)
        used = cap.spent_micros + held * MICROS_PER_CREDIT
        if used + required_micros > cap.limit_cents * MICROS_PER_CREDIT:
            raise SpendLimitExceeded(cap, held, required_micros)


def headroom_micros(controls: Controls, account_held_cents: int, agent_id: str | None,
                    service: str | None, now_ms: int) -> int | None:
    """What the hard caps that apply still allow (None: no hard cap applies)."""
    least: int | None = None
    for stored in controls.caps:
        if not stored.hard or not stored.applies(agent_id, service):
            continue
        cap = current(stored, controls.timezone, now_ms)
        held = scope_held(controls, cap, account_held_cents)
        left = cap.limit_cents * MICROS_PER_CREDIT - cap.spent_micros - held * MICROS_PER_CREDIT
        least = left if least is None else min(least, left)
    return None if least is None else max(least, 0)


def charge(controls: Controls, account_held_cents: int, agent_id: str | None,
           service: str | None, cost_micros: int, *, now_ms: int, enforce: bool) -> Controls:
    """Count a charged usage against every cap that applies, in one pass (this runs on
    every debit of a capped account): with `enforce`, first refuse it if it would pass a
    hard cap (SpendLimitExceeded); without (a commit of delivered service), count it even
    above a limit. A limit the spending and holds reach is marked reached."""
    caps: list[SpendCap] = []
    for stored in controls.caps:
        cap = stored
        scope = cap.scope
        if scope is CapScope.ACCOUNT or cap.name == (
                agent_id if scope is CapScope.AGENT else service):
            if not cap.window_start_ms <= now_ms < cap.resets_at_ms:
                cap = current(cap, controls.timezone, now_ms)
            held_micros = (account_held_cents if scope is CapScope.ACCOUNT
                           else scope_held(controls, cap, account_held_cents)
                           ) * MICROS_PER_CREDIT
            limit_micros = cap.limit_cents * MICROS_PER_CREDIT
            spent = cap.spent_micros + cost_micros
            if enforce and cap.hard and spent + held_micros > limit_micros:
                raise SpendLimitExceeded(cap, held_micros // MICROS_PER_CREDIT, cost_micros)
            cap = replace(cap, spent_micros=spent,
                          reached=cap.reached or spent + held_micros >= limit_micros)
        caps.append(cap)
    return replace(controls, caps=tuple(caps))


def roll(controls: Controls, now_ms: int) -> Controls:
    """Every cap in the window of `now_ms`."""
    caps = tuple(current(cap, controls.timezone, now_ms) for cap in controls.caps)
    return controls if caps == controls.caps else replace(controls, caps=caps)


def mark_reached(controls: Controls, account_held_cents: int, now_ms: int
                 ) -> tuple[Controls, tuple[SpendCap, ...]]:
    """Caps of the current window whose limit its spending and holds reached, not announced
    before: the controls with them marked, and the caps (for `spend_limit.reached`)."""
    reached = tuple(
        cap for cap in controls.caps
        if not cap.reached and cap.window_start_ms <= now_ms < cap.resets_at_ms
        and cap.spent_micros + scope_held(controls, cap, account_held_cents) * MICROS_PER_CREDIT
        >= cap.limit_cents * MICROS_PER_CREDIT)
    if not reached:
        return controls, ()
    caps = tuple(replace(cap, reached=True) if cap in reached else cap for cap in controls.caps)
    return replace(controls, caps=caps), reached


def hold_scopes(controls: Controls, agent_id: str | None, service: str | None,
                delta_cents: int) -> Controls:
    """Move the per-scope hold totals of a reservation's agent and service by `delta_cents`
    (a hold opening is positive, one closing negative); empty totals are dropped."""
    named = [(CapScope.AGENT, agent_id), (CapScope.SERVICE, service)]
    holds = list(controls.holds)
    for scope, name in named:
        if name is None:
            continue
        for index, hold in enumerate(holds):
            if hold.scope is scope and hold.name == name:
                holds[index] = replace(hold, held_cents=hold.held_cents + delta_cents)
                break
        else:
            holds.append(ScopeHold(scope, name, delta_cents))
    return replace(controls, holds=tuple(hold for hold in holds if hold.held_cents != 0))


def holds_problems(controls: Controls) -> list[str]:
    return [f"{hold.scope.value} {hold.name!r} holds {hold.held_cents}"
            for hold in controls.holds if hold.held_cents < 0]


# --- settings -------------------------------------------------------------------------------


class CapSetting(msgspec.Struct, frozen=True, gc=False):
    """A cap as a caller asks for it (the API body and the facade's argument)."""

    period: str
    limit_cents: int
    hard: bool = True
    scope: str = CapScope.ACCOUNT.value
    name: str | None = None


def validated_caps(settings: Sequence[CapSetting]) -> tuple[SpendCap, ...]:
    """Caps from a caller's settings, or InvalidInput naming the field at fault."""
    if len(settings) > CAPS_PER_ACCOUNT_MAX:
        raise InvalidInput(f"at most {CAPS_PER_ACCOUNT_MAX} caps per account",
                           {"field": "caps"})
    caps: list[SpendCap] = []
    for index, setting in enumerate(settings):
        field = f"caps[{index}]"
        period = _member(CapPeriod, setting.period, f"{field}.period")
        scope = _member(CapScope, setting.scope, f"{field}.scope")
        limit = require_int(f"{field}.limit_cents", setting.limit_cents, 1, AMOUNT_CENTS_MAX)
        if type(setting.hard) is not bool:
            raise InvalidInput("hard must be a boolean", {"field": f"{field}.hard"})
        name = setting.name or ""
        if (scope is CapScope.ACCOUNT) != (name == ""):
            raise InvalidInput("agent and service caps name their agent_id or service key; "
                               "account caps name nothing", {"field": f"{field}.name"})
        if len(name) > SCOPE_NAME_LENGTH_MAX:
            raise InvalidInput(f"name is at most {SCOPE_NAME_LENGTH_MAX} characters",
                               {"field": f"{field}.name"})
        cap = SpendCap(scope, name, period, limit, setting.hard)
        if any(other.identity == cap.identity for other in caps):
            # 409: each cap is well formed; together they contradict each other.
            raise Conflict("two caps for the same scope, name and period", {"field": field})
        caps.append(cap)
    return tuple(caps)


def _member(kind: type[E], value: object, field: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InvalidInput(f"{field} must be one of {choices}", {"field": field}) from None


def validated_thresholds(thresholds: Sequence[int]) -> tuple[int, ...]:
    """`balance.low` thresholds: distinct credits amounts, highest first."""
    if len(thresholds) > LOW_BALANCE_THRESHOLDS_MAX:
        raise InvalidInput(f"at most {LOW_BALANCE_THRESHOLDS_MAX} low-balance thresholds",
                           {"field": "low_balance_cents"})
    checked = {require_int(f"low_balance_cents[{index}]", value, 1, AMOUNT_CENTS_MAX)
               for index, value in enumerate(thresholds)}
    return tuple(sorted(checked, reverse=True))


def replace_caps(controls: Controls, timezone: str, caps: tuple[SpendCap, ...]) -> Controls:
    """New settings keep what was spent in the current window of a cap that stays (same
    scope, name and period): raising a limit or moving the time zone must not forgive this
    month's spending. A new time zone shapes the windows that start after the current one."""
    zone(timezone)
    kept = {cap.identity: cap for cap in controls.caps}
    merged = tuple(
        replace(cap, window_start_ms=old.window_start_ms, resets_at_ms=old.resets_at_ms,
                spent_micros=old.spent_micros,
                reached=old.reached and old.limit_cents == cap.limit_cents)
        if (old := kept.get(cap.identity)) is not None else cap
        for cap in caps
    )
    return replace(controls, timezone=timezone, caps=merged)
