"""Subscriptions as pure rules: every transition of the state machine, and grants that come
once per paid period whatever the order, the source or the number of deliveries."""

from __future__ import annotations

import itertools
import uuid

import pytest
from msgspec.structs import replace

from engine.account import Account
from engine.commands import KeyRecord
from engine.deadlines import DeadlineKind, user_deadline
from engine.errors import DuplicateEvent, InvalidInput, NotYetApplicable
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType, LedgerEntry
from engine.subscription_state import GRACE_PERIOD_MS, Manager, SubscriptionStatus
from engine.subscriptions import (
    MONTH_MS,
    CancelSubscription,
    EndSubscription,
    GrantPeriod,
    LagoMirror,
    PaymentFailed,
    Subscribe,
    SweepSubscription,
    grant_key,
)
from engine.transitions import Context, apply

USER = UserId(uuid.UUID("00000000-0000-4000-8000-0000000000bb"))
DAY_MS = 24 * 3600 * 1000
START = 1_700_000_000_000
END = START + MONTH_MS
SUB = "sub_1"


def ctx(now_ms: int = START, prior=None, tid: int = 1) -> Context:
    return Context(now_ms=now_ms, transaction_id=TransactionId(tid), prior=prior)


def fresh() -> Account:
    return Account(user_id=USER, created_at_ms=0, updated_at_ms=0)


def subscribed(managed_by: Manager = Manager.STRIPE) -> Account:
    command = Subscribe(USER, SUB, "standard", 2_500, managed_by, START, END, "standard")
    return apply(fresh(), command, ctx()).account


class Ledger:
    """Applies commands the way the actor system does: the prior outcome of a keyed command
    comes from the records already produced."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.keys: dict[tuple[str, str], KeyRecord] = {}
        self.tid = 10

    def run(self, command, now_ms: int = START):
        key = command.reads().key
        prior = self.keys.get(key) if key is not None else None
        self.tid += 1
        transition = apply(self.account, command, ctx(now_ms, prior, self.tid))
        self.account = transition.account
        for record in transition.records:
            if isinstance(record, KeyRecord):
                self.keys[record.scope, record.key] = record
        return transition


def grants(ledger: Ledger) -> int:
    return ledger.account.lifetime_granted_cents // 2_500


def test_subscribing_sets_the_plan_and_mirrors_it_to_lago():
    done = apply(fresh(), Subscribe(USER, SUB, "standard", 2_500, Manager.STRIPE, START, END,
                                    "standard"), ctx())
    assert done.account.plan == "standard"
    assert done.account.subscription.status is SubscriptionStatus.ACTIVE
    assert done.account.balance_cents == 0  # Stripe's first invoice grants the first period
    assert LagoMirror(USER, SUB, "standard") in done.records
    # Stripe renews, not our timer.
    assert user_deadline(DeadlineKind.SUBSCRIPTION, USER, None) in done.records


def test_a_plan_change_terminates_the_old_lago_subscription():
    changed = apply(subscribed(), Subscribe(USER, "sub_2", "pro", 6_000, Manager.STRIPE, START,
                                            END, "pro"), ctx())
    assert changed.account.plan == "pro"
    assert [r for r in changed.records if isinstance(r, LagoMirror)] == [
        LagoMirror(USER, SUB, None), LagoMirror(USER, "sub_2", "pro")]


def test_the_same_subscription_on_another_plan_grants_that_plans_credits_from_then_on():
    ledger = Ledger(subscribed())
    changed = ledger.run(Subscribe(USER, SUB, "pro", 6_000, Manager.STRIPE, START, END, "pro"))
    assert (ledger.account.plan, ledger.account.subscription.monthly_credits) == ("pro", 6_000)
    assert LagoMirror(USER, SUB, "pro") in changed.records  # Lago: same id, new plan code
    ledger.run(GrantPeriod(USER, SUB, END, END + MONTH_MS, "invoice.paid"))
    assert ledger.account.balance_cents == 6_000


def test_an_admin_plan_grants_its_first_period_at_once_and_arms_the_renewal():
    done = apply(fresh(), Subscribe(USER, "zb-1", "enterprise", 90_000, Manager.ADMIN, START,
                                    END, "enterprise"), ctx())
    assert done.account.balance_cents == 90_000
    assert done.account.lifetime_granted_cents == 90_000
    assert user_deadline(DeadlineKind.SUBSCRIPTION, USER, END) in done.records


def test_periods_must_end_after_they_start():
    with pytest.raises(InvalidInput):
        apply(fresh(), Subscribe(USER, SUB, "pro", 6_000, Manager.STRIPE, END, START), ctx())


SOURCES = ("invoice.paid", "customer.subscription.updated", "lago:subscription.started")


@pytest.mark.parametrize("order", list(itertools.permutations(SOURCES)))
def test_a_renewal_from_three_sources_in_any_order_twice_each_grants_once(order):
    ledger = Ledger(subscribed())
    next_start = END
    outcomes = []
    for source in (*order, *order):
        # Lago says milliseconds, Stripe seconds: the same instant, the same key.
        start = next_start + (123 if source.startswith("lago") else 0)
        try:
            ledger.run(GrantPeriod(USER, SUB, start, start + MONTH_MS, source), END + 5)
            outcomes.append("granted")
        except DuplicateEvent:
            outcomes.append("duplicate")
    assert outcomes.count("granted") == 1
    assert grants(ledger) == 1
    assert ledger.account.subscription.period_start_ms == END


def test_a_renewal_a_month_late_grants_that_period_and_the_next_once_each():
    ledger = Ledger(subscribed())
    first, second = END, END + MONTH_MS
    ledger.run(GrantPeriod(USER, SUB, second, second + MONTH_MS, "invoice.paid"))
    ledger.run(GrantPeriod(USER, SUB, first, second, "invoice.paid"))  # late
    with pytest.raises(DuplicateEvent):
        ledger.run(GrantPeriod(USER, SUB, first, second, "customer.subscription.updated"))
    assert grants(ledger) == 2
    assert ledger.account.subscription.period_start_ms == second  # the late one does not rewind


def test_a_grant_for_an_unknown_subscription_waits_for_its_start():
    with pytest.raises(NotYetApplicable):
        apply(fresh(), GrantPeriod(USER, SUB, START, END, "invoice.paid"), ctx())


def test_cancel_keeps_the_plan_until_the_period_ends_then_removes_it():
    ledger = Ledger(subscribed())
    cancelled = ledger.run(CancelSubscription(USER))
    assert ledger.account.subscription.status is SubscriptionStatus.CANCELLED
    assert ledger.account.plan == "standard"
    assert user_deadline(DeadlineKind.SUBSCRIPTION, USER, END) in cancelled.records
    assert ledger.run(SweepSubscription(USER), END - 1).records == ()  # not yet
    ended = ledger.run(SweepSubscription(USER), END)
    assert ledger.account.subscription is None
    assert ledger.account.plan == "free"
    assert LagoMirror(USER, SUB, None) in ended.records
    assert user_deadline(DeadlineKind.SUBSCRIPTION, USER, None) in ended.records
    assert grants(ledger) == 0
    with pytest.raises(NotYetApplicable):  # nothing more is granted for it
        ledger.run(GrantPeriod(USER, SUB, END, END + MONTH_MS, "invoice.paid"))


def test_cancelling_nothing_is_refused_and_cancelling_twice_changes_nothing():
    with pytest.raises(InvalidInput):
        apply(fresh(), CancelSubscription(USER), ctx())
    ledger = Ledger(subscribed())
    ledger.run(CancelSubscription(USER))
    assert ledger.run(CancelSubscription(USER)).records == ()


def test_past_due_grants_nothing_until_paid_then_is_active_again():
    ledger = Ledger(subscribed())
    failed = ledger.run(PaymentFailed(USER, SUB), END + DAY_MS)
    assert ledger.account.subscription.status is SubscriptionStatus.PAST_DUE
    grace_end = END + DAY_MS + GRACE_PERIOD_MS
    assert user_deadline(DeadlineKind.SUBSCRIPTION, USER, grace_end) in failed.records
    assert ledger.run(SweepSubscription(USER), END + 2 * DAY_MS).records == ()
    assert grants(ledger) == 0
    ledger.run(GrantPeriod(USER, SUB, END, END + MONTH_MS, "invoice.paid"), END + 3 * DAY_MS)
    assert ledger.account.subscription.status is SubscriptionStatus.ACTIVE
    assert ledger.account.subscription.past_due_since_ms is None
    assert grants(ledger) == 1


def test_past_due_past_the_grace_period_ends_the_subscription():
    ledger = Ledger(subscribed())
    ledger.run(PaymentFailed(USER, SUB), END)
    ledger.run(SweepSubscription(USER), END + GRACE_PERIOD_MS)
    assert ledger.account.subscription is None
    assert ledger.account.plan == "free"


def test_the_provider_ending_it_removes_the_plan_once():
    ledger = Ledger(subscribed())
    ledger.run(EndSubscription(USER, SUB))
    assert ledger.account.subscription is None
    assert ledger.run(EndSubscription(USER, SUB)).records == ()  # again: nothing


def test_an_admin_plan_renews_itself_every_period_even_after_downtime():
    ledger = Ledger(replace(fresh()))
    ledger.run(Subscribe(USER, "zb-1", "enterprise", 9_000, Manager.ADMIN, START, END))
    three_periods_later = END + 2 * MONTH_MS + DAY_MS
    for _ in range(5):  # the sweeper ticks; each tick grants at most the next due period
        ledger.run(SweepSubscription(USER), three_periods_later)
    assert ledger.account.lifetime_granted_cents == 4 * 9_000  # the first, then three renewals
    assert ledger.account.subscription.period_start_ms == END + 2 * MONTH_MS
    entries = [record for record in ledger.keys.values()]
    assert len({record.key for record in entries}) == 4
    assert grant_key("zb-1", END) in {record.key for record in entries}


def test_a_grant_is_a_subscription_grant_entry():
    ledger = Ledger(subscribed())
    granted = ledger.run(GrantPeriod(USER, SUB, END, END + MONTH_MS, "invoice.paid"))
    [entry] = [record for record in granted.records if isinstance(record, LedgerEntry)]
    assert (entry.entry_type, entry.amount) == (EntryType.SUBSCRIPTION_GRANT, 2_500)
    assert entry.metadata == {"subscription_id": SUB, "source": "invoice.paid"}
