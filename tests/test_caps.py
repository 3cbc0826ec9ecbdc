"""Spend caps as pure rules: windows in a time zone, hard and soft limits, holds, headroom."""

from __future__ import annotations

import datetime
import uuid
from zoneinfo import ZoneInfo

import cbor2
import pytest

from engine.account import Account
from engine.caps import (
    CapPeriod,
    CapSetting,
    SpendLimitExceeded,
    validated_caps,
    window,
)
from engine.commands import BalanceCheck, CheckBalance, ReportUsage, usage_fingerprint
from engine.controls import SetSpendControls, max_output_tokens
from engine.errors import Conflict, InvalidInput
from engine.ids import TransactionId, UserId
from engine.lots import balance_as_lots
from engine.pricing import PricingConfig
from engine.reservations import (
    CommitReservation,
    ReleaseReservation,
    Reservation,
    Reserve,
    reserve_fingerprint,
)
from engine.transitions import Context, apply
from engine.usage import LlmTokens
from storage import codec
from tests.test_pricing import PRICING_TOML

USER = UserId(uuid.UUID(int=11))
MICROS = 1_000_000
# 2026-03-02 10:00 UTC, a Monday.
NOW = int(datetime.datetime(2026, 3, 2, 10, tzinfo=datetime.UTC).timestamp() * 1000)
HOUR_MS = 3_600_000


def ctx(now_ms: int = NOW, tid: int = 1, reservation: Reservation | None = None) -> Context:
    return Context(now_ms, TransactionId(tid), None, reservation)


def account(balance_cents: int = 10_000) -> Account:
    lots, debt = balance_as_lots(balance_cents)
    return Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=balance_cents,
                   lots=lots, debt_cents=debt)


def capped(*settings: CapSetting, timezone: str | None = None,
           balance_cents: int = 10_000) -> Account:
    transition = apply(account(balance_cents),
                       SetSpendControls(USER, validated_caps(settings), timezone), ctx())
    assert transition.account is not None
    return transition.account


def usage(cost_micros: int, event_id: str = "e1", agent: str | None = None,
          service: str | None = None) -> ReportUsage:
    return ReportUsage(USER, event_id, cost_micros, usage_fingerprint(USER, None, cost_micros),
                       NOW, agent_id=agent, service=service)  # type: ignore[arg-type]


def debit(state: Account, cost_micros: int, now_ms: int = NOW, tid: int = 2, **scope) -> Account:
    transition = apply(state, usage(cost_micros, f"e{tid}", **scope), ctx(now_ms, tid))
    assert transition.account is not None
    return transition.account


def test_day_week_and_month_windows_are_local_midnights():
    tokyo = "Asia/Tokyo"  # 10:00 UTC is 19:00 on Monday 2 March in Tokyo
    start, end = window(CapPeriod.DAY, tokyo, NOW)
    assert datetime.datetime.fromtimestamp(start / 1000, ZoneInfo(tokyo)).isoformat() == (
        "2026-03-02T00:00:00+09:00")
    assert end - start == 24 * HOUR_MS
    week_start, week_end = window(CapPeriod.WEEK, tokyo, NOW)
    assert week_start == start and week_end - week_start == 7 * 24 * HOUR_MS
    month_start, month_end = window(CapPeriod.MONTH, "UTC", NOW)
    assert month_start == int(datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC).timestamp()
                              * 1000)
    assert month_end == int(datetime.datetime(2026, 4, 1, tzinfo=datetime.UTC).timestamp()
                            * 1000)


def test_a_day_across_a_dst_change_is_23_hours():
    # Europe/Berlin springs forward on Sunday 29 March 2026.
    noon = int(datetime.datetime(2026, 3, 29, 12, tzinfo=datetime.UTC).timestamp() * 1000)
    start, end = window(CapPeriod.DAY, "Europe/Berlin", noon)
    assert end - start == 23 * HOUR_MS


def test_a_hard_cap_allows_spending_up_to_its_limit_and_refuses_past_it():
    state = capped(CapSetting("day", 100))
    state = debit(state, 60 * MICROS)
    state = debit(state, 40 * MICROS, tid=3)  # exactly the limit
    with pytest.raises(SpendLimitExceeded) as refused:
        debit(state, 1, tid=4)
    details = refused.value.details
    assert details["limit_cents"] == 100
    assert details["spent_cents"] == 100
    assert details["resets_at"] == "2026-03-03T00:00:00.000Z"
    assert refused.value.code == "spend_limit_exceeded"


def test_a_soft_cap_allows_and_marks_the_limit_reached_once():
    state = capped(CapSetting("day", 100, hard=False))
    state = debit(state, 150 * MICROS)
    assert state.controls is not None
    (cap,) = state.controls.caps
    assert cap.spent_micros == 150 * MICROS and cap.reached


def test_the_window_resets_at_the_time_zones_midnight_not_utcs():
    # New York: 10:00 UTC is 05:00 local; local midnight is 04:00 UTC of the next day.
    state = capped(CapSetting("day", 100), timezone="America/New_York")
    state = debit(state, 100 * MICROS)
    before_midnight = int(datetime.datetime(2026, 3, 3, 4, 59, tzinfo=datetime.UTC)
                          .timestamp() * 1000)
    with pytest.raises(SpendLimitExceeded):
        debit(state, MICROS, before_midnight, tid=3)  # 23:59 in New York: same day
    after_midnight = before_midnight + 60_000 * 2
    state = debit(state, 100 * MICROS, after_midnight, tid=4)  # 00:01: a new day
    assert state.controls is not None
    assert state.controls.caps[0].spent_micros == 100 * MICROS


def test_agent_and_service_caps_apply_only_to_their_scope():
    state = capped(CapSetting("day", 10, scope="agent", name="bot-1"),
                   CapSetting("month", 20, scope="service", name="gateway"))
    state = debit(state, 10 * MICROS, agent="bot-1")
    with pytest.raises(SpendLimitExceeded) as refused:
        debit(state, 1, tid=3, agent="bot-1")
    assert refused.value.details["scope"] == "agent"
    state = debit(state, 500 * MICROS, tid=4, agent="bot-2")  # another agent: no cap
    state = debit(state, 20 * MICROS, tid=5, service="gateway")
    with pytest.raises(SpendLimitExceeded):
        debit(state, 1, tid=6, service="gateway")


def test_an_open_hold_counts_against_the_cap_until_it_closes():
    state = capped(CapSetting("day", 100), CapSetting("day", 50, scope="agent", name="a"))
    reserve = Reserve(USER, "r1", 40, 300, reserve_fingerprint(USER, 40), agent_id="a")
    held = apply(state, reserve, ctx())
    reservation = held.records[0]
    assert isinstance(reservation, Reservation) and held.account is not None
    with pytest.raises(SpendLimitExceeded):
        debit(held.account, 11 * MICROS, tid=3, agent="a")  # 40 held + 11 > 50
    released = apply(held.account, ReleaseReservation(USER, "r1"), ctx(tid=4,
                                                                        reservation=reservation))
    assert released.account is not None and released.account.controls is not None
    assert released.account.controls.holds == ()
    debit(released.account, 50 * MICROS, tid=5, agent="a")


def test_a_commit_is_charged_to_the_cap_even_above_its_limit():
    state = capped(CapSetting("day", 10))
    held = apply(state, Reserve(USER, "r1", 10, 300, reserve_fingerprint(USER, 10)), ctx())
    reservation = held.records[0]
    assert isinstance(reservation, Reservation) and held.account is not None
    committed = apply(held.account, CommitReservation("r1", usage(25 * MICROS, "r1")),
                      ctx(tid=3, reservation=reservation))
    assert committed.account is not None and committed.account.controls is not None
    assert committed.account.controls.caps[0].spent_micros == 25 * MICROS
    assert committed.account.held_cents == 0


def test_a_clamped_hold_holds_what_the_caps_leave():
    state = debit(capped(CapSetting("day", 100)), 70 * MICROS)
    command = Reserve(USER, "r1", 50, 300, reserve_fingerprint(USER, 50), clamp=True)
    held = apply(state, command, ctx(tid=3))
    assert held.reply.reservation.amount_cents == 30
    assert held.reply.requested_cents == 50
    with pytest.raises(SpendLimitExceeded):
        apply(state, Reserve(USER, "r1", 50, 300, reserve_fingerprint(USER, 50)), ctx(tid=3))


def test_headroom_is_the_least_of_the_balance_and_every_hard_cap():
    state = capped(CapSetting("day", 100), CapSetting("week", 80, hard=False),
                   balance_cents=500)
    state = debit(state, 30 * MICROS + 5)
    reply = apply(state, CheckBalance(USER, 70), ctx(tid=3)).reply
    assert isinstance(reply, BalanceCheck)
    assert reply.caps_micros == 70 * MICROS - 5
    assert reply.spendable_micros == 70 * MICROS - 5
    assert not reply.sufficient and not reply.within_caps
    assert apply(state, CheckBalance(USER, 69), ctx(tid=3)).reply.sufficient


def test_new_settings_keep_what_was_spent_in_the_window():
    state = debit(capped(CapSetting("day", 100)), 90 * MICROS)
    raised = apply(state, SetSpendControls(USER, validated_caps([CapSetting("day", 200)])),
                   ctx(tid=3)).account
    assert raised is not None and raised.controls is not None
    assert raised.controls.caps[0].spent_micros == 90 * MICROS


@pytest.mark.parametrize(("setting", "field"), [
    (CapSetting("day", 0), "caps[0].limit_cents"),
    (CapSetting("day", -5), "caps[0].limit_cents"),
    (CapSetting("year", 10), "caps[0].period"),
    (CapSetting("day", 10, scope="team"), "caps[0].scope"),
    (CapSetting("day", 10, scope="agent"), "caps[0].name"),
    (CapSetting("day", 10, name="x"), "caps[0].name"),
])
def test_bad_caps_are_refused_naming_the_field(setting, field):
    with pytest.raises(InvalidInput) as refused:
        validated_caps([setting])
    assert refused.value.details["field"] == field


def test_duplicate_caps_and_unknown_time_zones_are_refused():
    with pytest.raises(Conflict):
        validated_caps([CapSetting("day", 10), CapSetting("day", 20)])
    with pytest.raises(InvalidInput) as refused:
        capped(CapSetting("day", 10), timezone="Mars/Olympus")
    assert refused.value.details["field"] == "timezone"



def test_a_format_3_account_opens_without_controls_and_round_trips_with_them():
    """Built the way the lots release wrote it: format 3, the v3 field list."""
    plain = account(250)
    stored = cbor2.loads(codec.encode_account(plain))
    assert stored[0] == codec.ACCOUNT_FORMAT
    format_3 = cbor2.dumps([codec.ACCOUNT_FORMAT_V3, *stored[1:-1]])
    assert len(stored[1:-1]) == len(codec.ACCOUNT_FIELDS_V3)
    assert codec.decode_account(format_3) == plain
    spent = debit(capped(CapSetting("day", 100), CapSetting("week", 5, scope="agent",
                                                            name="a"),
                         timezone="Asia/Tokyo"), 3 * MICROS, agent="a")
    assert codec.decode_account(codec.encode_account(spent)) == spent


def test_a_format_2_reservation_opens_counting_against_no_agent_or_service():
    reservation = apply(account(), Reserve(USER, "r1", 5, 300, reserve_fingerprint(USER, 5),
                                           agent_id="a", service="gw"), ctx()).records[0]
    assert isinstance(reservation, Reservation)
    stored = cbor2.loads(codec.encode_reservation(reservation))
    assert codec.decode_reservation("r1", cbor2.dumps(stored)) == reservation
    format_2 = cbor2.dumps([codec.RESERVATION_FORMAT_V2, *stored[1:-2]])
    old = codec.decode_reservation("r1", format_2)
    assert (old.agent_id, old.service, old.amount_cents) == (None, None, 5)


def test_max_output_tokens_is_what_the_budget_pays_for_after_the_prompt():
    pricing = PricingConfig.from_toml(PRICING_TOML.read_text(encoding="utf-8"))
    prompt = LlmTokens("openai", "gpt-4o", input_tokens=1_000)  # 250 micros a token
    assert max_output_tokens(pricing, prompt, MICROS) == 750  # 1000 micros per output token
    assert max_output_tokens(pricing, prompt, MICROS + 999) == 750
    assert max_output_tokens(pricing, prompt, 250_000) == 0
    assert max_output_tokens(pricing, prompt, 249_999) == 0
