"""Stripe payments as pure rules: prices, refunds, and the auto-refill state machine."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from msgspec.structs import replace

from engine.account import Account, AccountStatus, AutoRefillSettings
from engine.audit import audit_account
from engine.commands import AddCredits, KeyRecord, ReportUsage, SetAutoRefill, WebhookMarker
from engine.deadlines import DeadlineKind, user_deadline
from engine.errors import AccountClosed, DuplicateEvent, InvalidInput
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType, LedgerEntry
from engine.lots import balance_as_lots
from engine.notifications import EventType, Notification
from engine.payments import (
    REFILL_ATTEMPTS_MAX,
    SCOPE_STRIPE_PAYMENT,
    DeclineRefill,
    RefillDeclined,
    RefillIntent,
    RefillResolved,
    SetStripeCustomer,
    TakeBackCredits,
    payment_fingerprint,
    purchase_credits,
    refunded_credits,
)
from engine.plans import Plans
from engine.transitions import Context, apply

PLANS = Plans.from_config(None)

USER = UserId(uuid.UUID("00000000-0000-4000-8000-0000000000aa"))
NOW = 1_700_000_000_000


def ctx(tid: int = 1, prior=None) -> Context:
    return Context(now_ms=NOW, transaction_id=TransactionId(tid), prior=prior)


def account(**changes) -> Account:
    lots, debt = balance_as_lots(changes.get("balance_cents", 0))
    return replace(Account(user_id=USER, created_at_ms=0, updated_at_ms=0, lots=lots,
                           debt_cents=debt), **changes)


REFILLING = account(
    balance_cents=1_000, lifetime_granted_cents=1_000, seq=1, stripe_customer_id="cus_1",
    auto_refill=AutoRefillSettings(enabled=True, trigger_below_cents=500,
                                   refill_amount_cents=2_500),
)


def debit(state: Account, cents: int, event: str, tid: int = 2):
    command = ReportUsage(USER, event, cents * 1_000_000, b"f" + event.encode(), NOW)
    return apply(state, command, ctx(tid))


def payment(amount: int, key: str = "pi_1", *, refill: int | None = None,
            entry_type: EntryType = EntryType.PURCHASE) -> AddCredits:
    return AddCredits(USER, amount, entry_type, key, payment_fingerprint(USER, amount, entry_type),
                      scope=SCOPE_STRIPE_PAYMENT, refill_number=refill,
                      webhook=WebhookMarker("stripe", "evt_1", "payment_intent.succeeded", NOW))


# --- prices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("usd", "credits"), [("5", 500), ("50", 5_000), ("12.34", 1_234),
                                              ("1000", 100_000), ("5.00", 500)])
def test_a_purchase_buys_one_credit_per_cent(usd, credits):
    assert purchase_credits(Decimal(usd)) == credits


@pytest.mark.parametrize("usd", ["4.99", "1000.01", "10.001", "NaN", "-5", "Infinity"])
def test_purchases_out_of_range_or_finer_than_a_cent_are_refused(usd):
    with pytest.raises(InvalidInput) as refused:
        purchase_credits(Decimal(usd))
    assert refused.value.details == {"field": "amount_usd"}


@pytest.mark.parametrize(("plan", "price"), [("free", 5_000), ("standard", 4_500),
                                             ("pro", 4_000), ("enterprise", 5_000)])
def test_the_plan_discount_lowers_the_price_never_the_credits(plan, price):
    assert PLANS.price_usd_cents(5_000, plan) == price


def test_a_discounted_odd_price_rounds_half_even():
    assert PLANS.price_usd_cents(505, "standard") == 454  # 454.5 -> 454
    assert PLANS.price_usd_cents(515, "standard") == 464  # 463.5 -> 464


def test_the_config_file_changes_a_plan_and_refuses_typos():
    plans = Plans.from_config({"standard": {"name": "Standard", "monthly_price_usd_cents": 2_500,
                                            "monthly_credits": 3_000,
                                            "purchase_discount_percent": 15}})
    assert plans.price_usd_cents(1_000, "standard") == 850
    assert plans.get("pro").monthly_credits == 6_000
    with pytest.raises(InvalidInput):
        Plans.from_config({"gold": {"name": "Gold", "monthly_price": 1}})
    with pytest.raises(InvalidInput):
        plans.get("gold")


@pytest.mark.parametrize(("refunded", "taken"), [(0, 0), (1_000, 1_000), (2_000, 2_000),
                                                 (500, 500), (3_000, 2_000), (1, 1)])
def test_refunds_take_back_a_proportional_share_never_more(refunded, taken):
    assert refunded_credits(2_000, 2_000, refunded) == taken


def test_a_discounted_purchase_refunds_all_its_credits_at_a_full_refund():
    assert refunded_credits(5_000, 4_000, 4_000) == 5_000
    assert refunded_credits(5_000, 4_000, 1_000) == 1_250


# --- payments -------------------------------------------------------------------------------


def test_a_payment_is_credited_once_with_its_webhook_marker():
    state = account()
    done = apply(state, payment(5_000), ctx())
    assert done.account.balance_cents == 5_000
    assert done.account.lifetime_purchased_cents == 5_000
    kinds = {type(record) for record in done.records}
    assert kinds == {LedgerEntry, KeyRecord, WebhookMarker, Notification}
    events = [record.event_type for record in done.records if isinstance(record, Notification)]
    assert events == [EventType.PAYMENT_SUCCEEDED, EventType.BALANCE_RECOVERED]
    key = next(record for record in done.records if isinstance(record, KeyRecord))
    assert (key.scope, key.key) == (SCOPE_STRIPE_PAYMENT, "pi_1")
    with pytest.raises(DuplicateEvent) as again:
        apply(done.account, payment(5_000), ctx(2, prior=key))
    assert again.value.original["amount_cents"] == 5_000


def test_a_refund_takes_back_credits_cumulatively_and_may_leave_a_debt():
    state = account(balance_cents=300, lifetime_purchased_cents=5_000,
                    lifetime_used_cents=4_700, seq=2)
    first = apply(state, TakeBackCredits(USER, "ch_1", 2_000), ctx(5))
    assert first.account.balance_cents == -1_700
    assert first.reply.amount_cents == -2_000
    record = next(record for record in first.records if isinstance(record, KeyRecord))
    second = apply(first.account, TakeBackCredits(USER, "ch_1", 5_000), ctx(6, prior=record))
    assert second.account.balance_cents == -4_700
    assert second.reply.amount_cents == -3_000
    latest = next(record for record in second.records if isinstance(record, KeyRecord))
    for replayed in (5_000, 2_000):  # a repeat, and an older event arriving late
        with pytest.raises(DuplicateEvent):
            apply(second.account, TakeBackCredits(USER, "ch_1", replayed), ctx(7, prior=latest))


def test_a_refund_to_a_closed_account_is_refused():
    with pytest.raises(AccountClosed):
        apply(account(status=AccountStatus.CLOSED), TakeBackCredits(USER, "ch_1", 10), ctx())


def test_the_auditor_accepts_the_debt_a_refund_leaves():
    entries = [
        LedgerEntry(TransactionId(1), USER, EntryType.PURCHASE, 500, 500, 0, "pi_1"),
        LedgerEntry(TransactionId(2), USER, EntryType.USAGE, -400, 100, 0, "e1"),
        LedgerEntry(TransactionId(3), USER, EntryType.REFUND, -500, -400, 0, "ch_1"),
    ]
    state = account(balance_cents=-400, lifetime_purchased_cents=500,
                    lifetime_used_cents=400, seq=3)
    assert audit_account(state, entries) == []


def test_the_stripe_customer_is_stored_once():
    stored = apply(account(), SetStripeCustomer(USER, "cus_9"), ctx())
    assert stored.account.stripe_customer_id == "cus_9"
    again = apply(stored.account, SetStripeCustomer(USER, "cus_9"), ctx(2))
    assert again.account is stored.account
    assert again.records == ()


# --- auto-refill ----------------------------------------------------------------------------


def test_a_debit_below_the_trigger_raises_exactly_one_refill():
    crossed = debit(REFILLING, 600, "e1")
    assert crossed.account.balance_cents == 400
    assert (crossed.account.refill_pending, crossed.account.refill_count) == (True, 1)
    intents = [record for record in crossed.records if isinstance(record, RefillIntent)]
    assert intents == [RefillIntent(USER, 1, 2_500, "free", "cus_1")]
    # The refill is due at once, in the same commit.
    assert user_deadline(DeadlineKind.AUTO_REFILL, USER, 0) in crossed.records
    again = debit(crossed.account, 100, "e2", 3)
    assert not [record for record in again.records if isinstance(record, RefillIntent)]
    assert again.account.refill_count == 1


@pytest.mark.parametrize("change", [
    {"auto_refill": AutoRefillSettings(enabled=False)},
    {"stripe_customer_id": None},
])
def test_no_refill_without_the_setting_or_a_customer(change):
    crossed = debit(replace(REFILLING, **change), 600, "e1")
    assert not crossed.account.refill_pending
    assert not [record for record in crossed.records if isinstance(record, RefillIntent)]


def test_the_refill_is_priced_with_the_accounts_plan():
    crossed = debit(replace(REFILLING, plan="pro"), 600, "e1")
    intent = next(record for record in crossed.records if isinstance(record, RefillIntent))
    assert (intent.amount_cents, intent.plan) == (2_500, "pro")
    assert PLANS.price_usd_cents(intent.amount_cents, intent.plan) == 2_000


def test_a_credited_refill_ends_the_refill_in_flight():
    crossed = debit(REFILLING, 600, "e1").account
    paid = apply(crossed, payment(2_500, refill=1, entry_type=EntryType.AUTO_REFILL), ctx(3))
    assert paid.account.balance_cents == 2_900
    assert not paid.account.refill_pending
    assert RefillResolved(USER) in paid.records
    assert user_deadline(DeadlineKind.AUTO_REFILL, USER, None) in paid.records
    stale = apply(paid.account, payment(2_500, "pi_old", refill=0,
                                        entry_type=EntryType.AUTO_REFILL), ctx(4))
    assert stale.account.balance_cents == 5_400  # money taken is always credited
    assert not [record for record in stale.records if isinstance(record, RefillResolved)]


def test_declines_are_counted_then_auto_refill_switches_off_with_the_reason():
    state = debit(REFILLING, 600, "e1").account
    for attempt in range(1, REFILL_ATTEMPTS_MAX):
        declined = apply(state, DeclineRefill(USER, 1, "card_declined"), ctx(attempt + 2))
        assert declined.reply == RefillDeclined(attempt, False)
        intent = next(record for record in declined.records if isinstance(record, RefillIntent))
        assert intent.declines == attempt  # a new attempt, a new Stripe idempotency key
        state = declined.account
        assert state.refill_pending
    final = apply(state, DeclineRefill(USER, 1, "card_declined"), ctx(9))
    assert final.reply == RefillDeclined(REFILL_ATTEMPTS_MAX, True)
    # Resolved, and nothing is due for it any more.
    resolved, deadline, *events = final.records
    assert (resolved, deadline) == (RefillResolved(USER),
                                    user_deadline(DeadlineKind.AUTO_REFILL, USER, None))
    assert [event.event_type for event in events] == [EventType.AUTO_REFILL_FAILED,
                                                      EventType.AUTO_REFILL_DISABLED]
    assert not final.account.auto_refill.enabled
    assert not final.account.refill_pending
    assert "card_declined" in final.account.auto_refill_error
    assert not debit(final.account, 100, "e9", 10).account.refill_pending
    enabled = apply(final.account, SetAutoRefill(USER, REFILLING.auto_refill), ctx(11))
    assert enabled.account.auto_refill_error is None


def test_a_decline_of_another_refill_changes_nothing():
    state = debit(REFILLING, 600, "e1").account
    stale = apply(state, DeclineRefill(USER, 7, "card_declined"), ctx(3))
    assert stale.account is state
    assert stale.records == ()
