"""Pure transitions: no trio, no disk. Names say the rule, bodies show the numbers."""

from __future__ import annotations

import uuid
from fractions import Fraction

import pytest
from msgspec.structs import replace

from engine.account import Account, AccountStatus, AutoRefillSettings
from engine.commands import (
    AddCredits,
    BalanceCheck,
    CheckBalance,
    CloseAccount,
    CreditResult,
    GetAccount,
    KeyRecord,
    OpenAccount,
    ReportUsage,
    SetAutoRefill,
    UsageEventRecord,
    UsageResult,
    credits_fingerprint,
    usage_fingerprint,
)
from engine.errors import (
    AccountClosed,
    AccountExists,
    AccountNotFound,
    DuplicateEvent,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    InvariantViolation,
)
from engine.export import AccountOpened
from engine.ids import (
    TransactionId,
    UserId,
    next_transaction_id,
    parse_agent_id,
    parse_key,
    parse_transaction_id,
    parse_user_id,
    transaction_id_ms,
    transaction_id_str,
)
from engine.ledger import EntryType, LedgerEntry
from engine.lots import balance_as_lots
from engine.money import format_usd, require_amount_cents, round_half_even, split_micros
from engine.notifications import Notification
from engine.transitions import Context, apply

USER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000001"))
OTHER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000002"))


def ctx(tid: int = 1, prior=None) -> Context:
    return Context(now_ms=1_700_000_000_000, transaction_id=TransactionId(tid), prior=prior)


def account(balance_cents: int = 0, **fields) -> Account:
    lots, debt = balance_as_lots(balance_cents)
    return Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=balance_cents,
                   lots=lots, debt_cents=debt, **fields)


def usage(event_id: str, cost_micros: int, user: UserId = USER) -> ReportUsage:
    return ReportUsage(
        user_id=user,
        event_id=event_id,
        cost_micros=cost_micros,
        fingerprint=usage_fingerprint(user, None, cost_micros),
        occurred_at_ms=5,
    )


def grant(amount: int, key: str | None = None, kind: EntryType = EntryType.BONUS) -> AddCredits:
    return AddCredits(
        user_id=USER,
        amount_cents=amount,
        entry_type=kind,
        key=key,
        fingerprint=credits_fingerprint(USER, amount, kind),
    )


# --- money and ids -------------------------------------------------------------------------


def test_format_usd_positive_negative_and_thousands():
    assert format_usd(4500) == "$45.00"
    assert format_usd(5) == "$0.05"
    assert format_usd(0) == "$0.00"
    assert format_usd(-5) == "-$0.05"
    assert format_usd(-123456) == "-$1,234.56"


@pytest.mark.parametrize("bad", [True, 1.0, "5", None, 0, -1, 10**12 + 1])
def test_amounts_refuse_bools_floats_strings_and_out_of_range(bad):
    with pytest.raises(InvalidInput):
        require_amount_cents("amount_cents", bad)


def test_round_half_even_is_exact():
    assert round_half_even(Fraction(5, 2)) == 2
    assert round_half_even(Fraction(7, 2)) == 4
    assert round_half_even(Fraction(-5, 2)) == -2
    assert round_half_even(Fraction(10**30 + 1, 2)) == (10**30) // 2
    assert round_half_even(Fraction(3, 1)) == 3


def test_carry_splits_whole_credits_and_remainder():
    assert split_micros(0, 450_000) == (0, 450_000)
    assert split_micros(900_000, 450_000) == (1, 350_000)
    assert split_micros(0, 10_500_000) == (10, 500_000)


def test_transaction_ids_strictly_increase_within_one_millisecond_and_when_clock_steps_back():
    first = next_transaction_id(0, 1000, 2**80 - 1)
    second = next_transaction_id(first, 1000, 0)
    third = next_transaction_id(second, 999, 5)
    assert first < second < third
    assert transaction_id_ms(first) == 1000
    text = transaction_id_str(third)
    assert len(text) == 26
    assert parse_transaction_id(text) == third


def test_parsing_errors_are_domain_errors():
    with pytest.raises(InvalidInput):
        parse_user_id("not-a-uuid")
    with pytest.raises(InvalidInput):
        parse_user_id(42)
    with pytest.raises(InvalidInput):
        parse_transaction_id("x" * 26)
    with pytest.raises(InvalidInput):
        parse_agent_id("has space")
    with pytest.raises(InvalidInput):
        parse_key("event_id", "")
    with pytest.raises(InvalidInput):
        parse_key("event_id", "a" * 257)
    assert parse_user_id(str(USER)) == USER
    assert parse_agent_id("agent-7") == "agent-7"


# --- accounts ------------------------------------------------------------------------------


def test_open_creates_an_empty_active_account():
    transition = apply(None, OpenAccount(USER), ctx())
    created = transition.account
    assert created is not None
    assert created.balance_cents == 0
    assert created.status is AccountStatus.ACTIVE
    # A domain event for integrations (the Lago customer), not a stored record.
    assert transition.records == (AccountOpened(USER),)
    assert transition.reply == created


def test_open_returns_the_existing_account_unless_it_must_be_new():
    existing = account(balance_cents=7)
    assert apply(existing, OpenAccount(USER), ctx()).reply == existing
    with pytest.raises(AccountExists):
        apply(existing, OpenAccount(USER, must_be_new=True), ctx())


def test_get_unknown_account_is_not_found():
    with pytest.raises(AccountNotFound):
        apply(None, GetAccount(USER), ctx())


def test_closed_account_refuses_usage_and_credits_but_can_be_read():
    closed = apply(account(balance_cents=10), CloseAccount(USER), ctx()).account
    assert closed is not None
    assert closed.status is AccountStatus.CLOSED
    assert closed.balance_cents == 10
    with pytest.raises(AccountClosed):
        apply(closed, usage("e1", 1_000_000), ctx())
    with pytest.raises(AccountClosed):
        apply(closed, grant(5), ctx())
    assert apply(closed, GetAccount(USER), ctx()).reply == closed


def test_auto_refill_settings_are_validated_and_stored():
    settings = AutoRefillSettings.validated(True, 100, 500)
    updated = apply(account(), SetAutoRefill(USER, settings), ctx()).account
    assert updated is not None
    assert updated.auto_refill == settings
    for bad in [("yes", 500, 2500), (True, 99, 2500), (True, 500, 499), (True, 500.0, 2500)]:
        with pytest.raises(InvalidInput):
            AutoRefillSettings.validated(*bad)


# --- credits -------------------------------------------------------------------------------


def test_add_credits_writes_an_entry_and_feeds_the_right_lifetime_counter():
    for kind, field in [
        (EntryType.PURCHASE, "lifetime_purchased_cents"),
        (EntryType.AUTO_REFILL, "lifetime_purchased_cents"),
        (EntryType.SUBSCRIPTION_GRANT, "lifetime_granted_cents"),
    ]:
        transition = apply(account(balance_cents=100), grant(50, kind=kind), ctx(tid=9))
        updated = transition.account
        assert updated is not None
        assert updated.balance_cents == 150
        assert getattr(updated, field) == 50
        assert updated.seq == 1
        entry, *events = transition.records
        assert isinstance(entry, LedgerEntry)
        assert (entry.amount, entry.balance_after, entry.entry_type) == (50, 150, kind)
        assert all(isinstance(event, Notification) for event in events)
        assert isinstance(transition.reply, CreditResult)
    bonus = apply(account(), grant(5, kind=EntryType.BONUS), ctx()).account
    assert bonus is not None
    assert (bonus.lifetime_purchased_cents, bonus.lifetime_granted_cents,
            bonus.balance_cents) == (0, 0, 5)


def test_add_credits_with_a_key_records_it_and_a_retry_gets_the_original():
    first = apply(account(), grant(50, key="grant-1"), ctx(tid=3))
    key_record = next(record for record in first.records if isinstance(record, KeyRecord))
    with pytest.raises(DuplicateEvent) as duplicate:
        apply(first.account, grant(50, key="grant-1"), ctx(tid=4, prior=key_record))
    assert duplicate.value.original["transaction_id"] == transaction_id_str(3)
    assert duplicate.value.original["balance_cents"] == 50
    with pytest.raises(IdempotencyConflict):
        apply(first.account, grant(51, key="grant-1"), ctx(tid=5, prior=key_record))


def test_usage_is_not_a_credit_type():
    with pytest.raises(InvalidInput):
        apply(account(), grant(5, kind=EntryType.USAGE), ctx())


# --- usage ---------------------------------------------------------------------------------


def test_usage_debits_whole_credits_and_carries_the_fraction():
    transition = apply(account(balance_cents=100), usage("e1", 10_500_000), ctx(tid=7))
    updated = transition.account
    assert updated is not None
    assert (updated.balance_cents, updated.unbilled_micros,
            updated.lifetime_used_cents) == (90, 500_000, 10)
    entry, event = transition.records
    assert isinstance(entry, LedgerEntry)
    assert isinstance(event, UsageEventRecord)
    assert (entry.amount, entry.balance_after, entry.entry_type) == (-10, 90, EntryType.USAGE)
    assert entry.metadata["cost_micros"] == 10_500_000
    reply = transition.reply
    assert isinstance(reply, UsageResult)
    assert (reply.cost_cents, reply.cost_micros, reply.balance_cents) == (10, 10_500_000, 90)
    assert event.result == reply


def test_one_thousand_calls_of_045_credits_debit_exactly_450():
    state = account(balance_cents=1000)
    debited = 0
    for index in range(1000):
        transition = apply(state, usage(f"e{index}", 450_000), ctx(tid=index + 1))
        assert isinstance(transition.reply, UsageResult)
        debited += transition.reply.cost_cents
        state = transition.account
    assert debited == 450
    assert state.balance_cents == 550
    assert state.unbilled_micros == 0
    assert state.seq == 1000


def test_fractions_count_against_the_balance_before_they_become_credits():
    # Balance 1, 0.6 already consumed: a further 0.5 would need 1.1 credits.
    state = account(balance_cents=1, unbilled_micros=600_000)
    with pytest.raises(InsufficientCredits) as refused:
        apply(state, usage("e1", 500_000), ctx())
    assert refused.value.details == {
        "balance_cents": 1, "available_cents": 1, "required_cents": 2,
    }
    ok = apply(state, usage("e2", 400_000), ctx()).account
    assert ok is not None
    assert (ok.balance_cents, ok.unbilled_micros) == (0, 0)


def test_insufficient_credits_carries_balance_available_and_required():
    with pytest.raises(InsufficientCredits) as refused:
        apply(account(balance_cents=5, held_cents=3), usage("e1", 4_000_000), ctx())
    assert refused.value.balance_cents == 5
    assert refused.value.available_cents == 2
    assert refused.value.required_cents == 4


def test_overdraft_limit_lets_the_balance_go_that_far_below_zero():
    state = account(balance_cents=2, overdraft_limit_cents=3)
    updated = apply(state, usage("e1", 5_000_000), ctx()).account
    assert updated is not None
    assert updated.balance_cents == -3
    with pytest.raises(InsufficientCredits):
        apply(updated, usage("e2", 1), ctx())


def test_zero_cost_usage_is_recorded_with_a_zero_entry():
    transition = apply(account(balance_cents=0), usage("free", 0), ctx())
    entry = transition.records[0]
    assert isinstance(entry, LedgerEntry)
    assert entry.amount == 0
    assert transition.account.seq == 1


def test_usage_on_unknown_account_is_not_found():
    with pytest.raises(AccountNotFound):
        apply(None, usage("e1", 1), ctx())


def test_repeated_event_id_returns_the_original_result():
    first = apply(account(balance_cents=100), usage("e1", 2_000_000), ctx(tid=11))
    event = first.records[1]
    with pytest.raises(DuplicateEvent) as duplicate:
        apply(first.account, usage("e1", 2_000_000), ctx(tid=12, prior=event))
    assert duplicate.value.original == first.reply.to_dict()
    assert duplicate.value.original["balance_cents"] == 98


def test_same_event_id_for_another_user_or_cost_is_an_idempotency_conflict():
    first = apply(account(balance_cents=100), usage("e1", 2_000_000), ctx(tid=11))
    event = first.records[1]
    with pytest.raises(IdempotencyConflict):
        apply(first.account, usage("e1", 3_000_000), ctx(prior=event))
    other = replace(account(balance_cents=100), user_id=OTHER)
    with pytest.raises(IdempotencyConflict):
        apply(other, usage("e1", 2_000_000, user=OTHER), ctx(prior=event))


def test_balance_check_uses_available_credits_and_changes_nothing():
    state = account(balance_cents=10, held_cents=4)
    transition = apply(state, CheckBalance(USER, 6), ctx())
    assert transition.account is state
    assert transition.records == ()
    assert transition.reply == BalanceCheck(True, 10, 6, 6, 6_000_000)
    assert apply(state, CheckBalance(USER, 7), ctx()).reply.sufficient is False


def test_a_state_breaking_an_invariant_is_refused():
    with pytest.raises(InvariantViolation):
        apply(account(unbilled_micros=1_000_000), CheckBalance(USER, 0), ctx())
