"""Promotional grants, pure: each once per its key, the key stored with the entry."""

from __future__ import annotations

import uuid

import pytest
import trio

from actors.runtime import open_billing
from engine.account import Account, AccountStatus
from engine.audit import audit_account
from engine.commands import Context, KeyRecord, Reads
from engine.errors import AccountClosed, AccountNotFound, InvalidInput
from engine.export import AccountOpened
from engine.grants import (
    MS_PER_DAY,
    SCOPE_DAILY_GRANT,
    SCOPE_REFERRAL_GRANT,
    SCOPE_SIGNUP_GRANT,
    DailyGrant,
    GrantOutcome,
    GrantRefusal,
    ReferralGrant,
    ReferralSide,
    SignupGrant,
    utc_day,
)
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType, LedgerEntry
from engine.lots import LotCategory, LotDefaults, balance_as_lots
from engine.plans import Plans
from engine.transitions import apply
from tests.conftest import new_user

USER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000001"))
INVITER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000002"))
NOW = 1_700_000_000_000


def ctx(prior=None, others=(), tid: int = 7) -> Context:
    return Context(NOW, TransactionId(tid), prior, None, others)


def account(balance_cents: int = 0, plan: str = "free", user: UserId = USER) -> Account:
    lots, debt = balance_as_lots(balance_cents)
    return Account(user_id=user, created_at_ms=1, updated_at_ms=1, balance_cents=balance_cents,
                   plan=plan, lots=lots, debt_cents=debt)


def key_record(transition) -> KeyRecord:
    (record,) = [r for r in transition.records if isinstance(r, KeyRecord)]
    return record


def test_signup_grant_opens_the_account_and_credits_it_once():
    granted = apply(None, SignupGrant(USER, 5_000), ctx())
    assert granted.account.balance_cents == 5_000
    assert granted.account.lifetime_granted_cents == 5_000
    assert AccountOpened(USER) in granted.records
    (entry,) = [r for r in granted.records if isinstance(r, LedgerEntry)]
    assert (entry.entry_type, entry.amount) == (EntryType.SIGNUP_GRANT, 5_000)
    record = key_record(granted)
    assert (record.scope, record.key) == (SCOPE_SIGNUP_GRANT, str(USER))
    assert granted.keyed == (record,)
    assert granted.reply == GrantOutcome(USER, True, 5_000, 5_000,
                                         transaction_id=TransactionId(7))
    assert audit_account(granted.account, [entry]) == []

    again = apply(granted.account, SignupGrant(USER, 5_000), ctx(prior=record))
    assert again.records == ()
    assert again.account is granted.account
    assert again.reply == GrantOutcome(USER, False, 0, 5_000, GrantRefusal.ALREADY_GRANTED)


def test_signup_grant_of_zero_is_switched_off_and_records_no_key():
    off = apply(account(300), SignupGrant(USER, 0), ctx())
    assert off.records == ()
    assert off.reply.reason is GrantRefusal.DISABLED
    assert off.reply.balance_cents == 300


def test_signup_grant_refuses_a_closed_account():
    closed = Account(user_id=USER, created_at_ms=1, updated_at_ms=1,
                     status=AccountStatus.CLOSED)
    with pytest.raises(AccountClosed):
        apply(closed, SignupGrant(USER, 5_000), ctx())


def test_daily_grant_reads_its_day_key_and_the_signup_key():
    command = DailyGrant(USER, utc_day(NOW), {"pro": 100})
    assert command.reads() == Reads((SCOPE_DAILY_GRANT, f"{USER}:{NOW // MS_PER_DAY}"),
                                    other_keys=((SCOPE_SIGNUP_GRANT, str(USER)),))


def test_daily_grant_needs_the_signup_grant():
    refused = apply(account(plan="pro"), DailyGrant(USER, 19_675, {"pro": 100}),
                    ctx(others=(None,)))
    assert refused.reply.reason is GrantRefusal.NO_SIGNUP_GRANT
    assert refused.records == ()
    unknown = apply(None, DailyGrant(USER, 19_675, {"pro": 100}), ctx(others=(None,)))
    assert unknown.account is None
    assert unknown.reply.reason is GrantRefusal.NO_SIGNUP_GRANT


def test_daily_grant_pays_the_plan_amount_once_per_day():
    signup = key_record(apply(None, SignupGrant(USER, 5_000), ctx()))
    pro = account(5_000, plan="pro")
    granted = apply(pro, DailyGrant(USER, 19_675, {"pro": 100}), ctx(others=(signup,)))
    assert granted.reply.granted and granted.account.balance_cents == 5_100
    record = key_record(granted)
    assert record.key == f"{USER}:19675"
    again = apply(granted.account, DailyGrant(USER, 19_675, {"pro": 100}),
                  ctx(prior=record, others=(signup,)))
    assert again.reply.reason is GrantRefusal.ALREADY_GRANTED_TODAY
    assert again.account.balance_cents == 5_100


def test_daily_grant_of_a_plan_without_one_is_off():
    signup = key_record(apply(None, SignupGrant(USER, 5_000), ctx()))
    off = apply(account(5_000, plan="free"), DailyGrant(USER, 19_675, {"pro": 100}),
                ctx(others=(signup,)))
    assert off.reply.reason is GrantRefusal.DISABLED
    assert off.records == ()


def test_referral_sides_are_keyed_on_the_invitee_and_the_side():
    invitee = ReferralGrant(USER, USER, ReferralSide.INVITEE, 5_000)
    inviter = ReferralGrant(INVITER, USER, ReferralSide.INVITER, 5_000)
    assert invitee.reads().key == (SCOPE_REFERRAL_GRANT, f"{USER}:invitee")
    assert inviter.reads().key == (SCOPE_REFERRAL_GRANT, f"{USER}:inviter")
    granted = apply(account(10, user=INVITER), inviter, ctx())
    (entry,) = [r for r in granted.records if isinstance(r, LedgerEntry)]
    assert (entry.entry_type, entry.amount, entry.balance_after) == (
        EntryType.REFERRAL_GRANT, 5_000, 5_010)
    assert apply(granted.account, inviter, ctx(prior=key_record(granted))).reply.reason \
        is GrantRefusal.ALREADY_GRANTED


def test_audit_refuses_a_grant_entry_that_debits():
    entry = LedgerEntry(TransactionId(1), USER, EntryType.DAILY_GRANT, -5, -5, NOW)
    broken = Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=-5,
                     lifetime_granted_cents=-5, seq=1)
    assert any("daily_grant entry" in problem for problem in audit_account(broken, [entry]))


# --- on the real engine (LMDB, journal, actors) ----------------------------------------------

CONCURRENT_CALLS = 20


async def _all(calls) -> list:
    results: list = []

    async def one(call) -> None:
        results.append(await call())

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)
    return results


async def test_concurrent_signup_grants_grant_once_and_survive_a_restart(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        outcomes = await _all([lambda: billing.signup_grant(user, 5_000)] * CONCURRENT_CALLS)
        assert sorted(outcome.granted for outcome in outcomes) == [False] * 19 + [True]
        assert {outcome.balance_cents for outcome in outcomes} == {5_000}
    async with open_billing(data_dir, pricing=pricing) as billing:
        again = await billing.signup_grant(user, 5_000)
        assert (again.granted, again.reason, again.balance_cents) == (
            False, GrantRefusal.ALREADY_GRANTED, 5_000)
        assert (await billing.get_account(user)).lifetime_granted_cents == 5_000
        assert (await billing.verify()).violations == []


async def test_daily_grant_once_per_utc_day_after_the_signup_grant(data_dir, pricing):
    user = new_user()
    clock = [NOW]
    plans = Plans.from_config({"free": {"name": "Free", "monthly_price_usd_cents": 0,
                                        "monthly_credits": 0, "daily_grant_credits": 100}})
    async with open_billing(data_dir, pricing=pricing, plans=plans,
                            wall_clock_ms=lambda: clock[0]) as billing:
        await billing.open_account(user)
        first = await billing.daily_grant(user)
        assert first.reason is GrantRefusal.NO_SIGNUP_GRANT
        await billing.signup_grant(user, 5_000)
        outcomes = await _all([lambda: billing.daily_grant(user)] * CONCURRENT_CALLS)
        assert sum(outcome.granted for outcome in outcomes) == 1
        assert {o.reason for o in outcomes if not o.granted} == {
            GrantRefusal.ALREADY_GRANTED_TODAY}
        clock[0] += 3 * MS_PER_DAY  # missed days are not back-filled
        later = await billing.daily_grant(user)
        assert (later.granted, later.balance_cents) == (True, 5_200)


async def test_referral_credits_both_sides_once_in_one_commit(data_dir, pricing):
    invitee, inviter = new_user(), new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        batches: list[list[LedgerEntry]] = []
        billing._journal.listeners.append(lambda batch, _s: batches.append(
            [r for r in batch.records if isinstance(r, LedgerEntry)]))
        outcomes = await _all(
            [lambda: billing.referral_grant(inviter, invitee, 5_000)] * CONCURRENT_CALLS)
        granted = [o for o in outcomes if o.invitee.granted]
        assert len(granted) == 1
        assert granted[0].inviter.granted
        assert all(not o.inviter.granted for o in outcomes if not o.invitee.granted)
        (pair,) = [entries for entries in batches if entries]
        assert sorted(entry.user_id for entry in pair) == sorted([invitee, inviter])
        assert (await billing.get_account(invitee)).balance_cents == 5_000
        assert (await billing.get_account(inviter)).balance_cents == 5_000
        assert (await billing.verify()).violations == []


async def test_referral_refused_on_one_side_credits_neither(data_dir, pricing):
    invitee, inviter = new_user(), new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(inviter)
        await billing.close_account(inviter)
        with pytest.raises(AccountClosed):
            await billing.referral_grant(inviter, invitee, 5_000)
        with pytest.raises(AccountNotFound):
            await billing.get_account(invitee)  # not even opened
        with pytest.raises(InvalidInput):
            await billing.referral_grant(invitee, invitee, 5_000)
        assert (await billing.verify()).violations == []


async def test_promotional_grants_open_lots_by_their_configured_defaults(data_dir, pricing):
    """A trial's credits that expire: `[lot_defaults.signup_grant]` in the config file; the
    referral grant keeps the built-in default (promotional, never expires)."""
    defaults = LotDefaults.from_config({"signup_grant": {"category": "promotional",
                                                         "priority": 10,
                                                         "expires_after_days": 30}})
    inviter, invitee = new_user(), new_user()
    async with open_billing(data_dir, pricing=pricing, lot_defaults=defaults) as billing:
        granted_at_ms = billing.wall_clock_ms()
        assert (await billing.signup_grant(inviter, 5_000)).granted
        assert (await billing.referral_grant(inviter, invitee, 700)).inviter.granted
        lots = (await billing.get_account(inviter)).lots
    by_source = {lot.source: lot for lot in lots}
    signup, referral = by_source["signup_grant"], by_source["referral_grant"]
    assert (signup.category, signup.priority, signup.original_cents) == (
        LotCategory.PROMOTIONAL, 10, 5_000)
    assert signup.expires_at_ms is not None
    assert 0 <= signup.expires_at_ms - (granted_at_ms + 30 * 86_400_000) < 60_000
    assert (referral.category, referral.expires_at_ms, referral.original_cents) == (
        LotCategory.PROMOTIONAL, None, 700)
