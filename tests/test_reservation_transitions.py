"""Reservation transitions, every path, pure (no trio, no disk)."""

from __future__ import annotations

import uuid

import pytest

from engine.account import Account
from engine.commands import CloseAccount, ReportUsage, UsageEventRecord, usage_fingerprint
from engine.deadlines import Deadline, DeadlineKind
from engine.errors import (
    AccountClosed,
    DuplicateEvent,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    ReservationClosed,
    ReservationExpired,
)
from engine.ids import TransactionId, UserId
from engine.ledger import LedgerEntry
from engine.lots import balance_as_lots
from engine.reservations import (
    CommitReservation,
    ExpireReservation,
    ReleaseReservation,
    Reservation,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    ReservationStatus,
    Reserve,
    reserve_fingerprint,
)
from engine.transitions import Context, apply

USER = UserId(uuid.UUID(int=7))
NOW = 1_700_000_000_000


def account(balance_cents: int = 100, **fields) -> Account:
    lots, debt = balance_as_lots(balance_cents)
    return Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=balance_cents,
                   lots=lots, debt_cents=debt, **fields)


def ctx(now_ms: int = NOW, reservation=None, prior=None, tid: int = 1) -> Context:
    return Context(now_ms, TransactionId(tid), prior, reservation)


def reserve(amount: int, rid: str = "r1", ttl_s: int = 300, user: UserId = USER) -> Reserve:
    return Reserve(user, rid, amount, ttl_s, reserve_fingerprint(user, amount))


def commit(cost_micros: int, rid: str = "r1", event_id: str | None = None) -> CommitReservation:
    usage = ReportUsage(
        user_id=USER,
        event_id=event_id or rid,
        cost_micros=cost_micros,
        fingerprint=usage_fingerprint(USER, None, cost_micros),
        occurred_at_ms=NOW,
    )
    return CommitReservation(rid, usage)


def held(amount: int = 10, balance_cents: int = 100) -> tuple[Account, Reservation]:
    transition = apply(account(balance_cents), reserve(amount), ctx())
    reservation = transition.records[0]
    assert isinstance(reservation, Reservation)
    return transition.account, reservation


def test_reserve_holds_credits_and_records_the_reservation():
    transition = apply(account(100), reserve(30, ttl_s=60), ctx())
    assert transition.account.held_cents == 30
    assert transition.account.available_cents(NOW) == 70
    reply = transition.reply
    assert isinstance(reply, ReservationHeld)
    assert reply.reservation.expires_at_ms == NOW + 60_000
    assert reply.to_dict()["available_cents"] == 70
    # The hold is looked up by its id before its commit, and its expiry is scheduled in the
    # same commit.
    assert transition.keyed == (reply.reservation,)
    assert transition.records == (reply.reservation, Deadline(
        DeadlineKind.RESERVATION_EXPIRY, "r1", reply.reservation.user_id, NOW + 60_000))


def test_reserve_fails_when_available_credits_do_not_cover_it():
    with pytest.raises(InsufficientCredits) as refused:
        apply(account(100, held_cents=80), reserve(21), ctx())
    assert refused.value.details == {
        "balance_cents": 100, "available_cents": 20, "required_cents": 21,
    }
    assert apply(account(100, held_cents=80), reserve(20), ctx()).account.held_cents == 100


def test_overdraft_limit_extends_what_can_be_reserved():
    assert apply(account(0, overdraft_limit_cents=10), reserve(10), ctx()).account.held_cents == 10
    with pytest.raises(InsufficientCredits):
        apply(account(0, overdraft_limit_cents=10), reserve(11), ctx())


def test_repeated_reserve_returns_the_original_and_a_different_one_conflicts():
    state, reservation = held(10)
    with pytest.raises(DuplicateEvent) as duplicate:
        apply(state, reserve(10), ctx(reservation=reservation))
    assert duplicate.value.original["held_cents"] == 10
    with pytest.raises(IdempotencyConflict):
        apply(state, reserve(11), ctx(reservation=reservation))
    other = UserId(uuid.UUID(int=8))
    with pytest.raises(IdempotencyConflict):
        apply(state, reserve(10, user=other), ctx(reservation=reservation))


def test_reserve_validates_ttl_and_the_account():
    with pytest.raises(InvalidInput):
        apply(account(), reserve(1, ttl_s=3601), ctx())
    with pytest.raises(InvalidInput):
        apply(account(), reserve(1, ttl_s=0), ctx())
    closed = apply(account(), CloseAccount(USER), ctx()).account
    with pytest.raises(AccountClosed):
        apply(closed, reserve(1), ctx())


def test_commit_below_the_hold_charges_the_cost_and_releases_the_rest():
    state, reservation = held(10)
    transition = apply(state, commit(3_500_000), ctx(reservation=reservation, tid=2))
    updated = transition.account
    assert (updated.balance_cents, updated.held_cents, updated.unbilled_micros) == (97, 0, 500_000)
    entry, event, expiry, closed = transition.records
    assert expiry == Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", USER, None)
    assert isinstance(entry, LedgerEntry)
    assert entry.amount == -3
    assert entry.metadata["reservation_id"] == "r1"
    assert isinstance(event, UsageEventRecord)
    assert closed.status is ReservationStatus.COMMITTED
    reply = transition.reply
    assert isinstance(reply, ReservationCommitted)
    assert (reply.released_cents, reply.above_hold) == (7, False)
    assert reply.to_dict()["cost_cents"] == 3


def test_commit_above_the_hold_still_charges_and_may_leave_the_account_owing():
    state, reservation = held(10, balance_cents=10)
    transition = apply(state, commit(25_000_000), ctx(reservation=reservation, tid=2))
    owing = transition.account
    assert (owing.balance_cents, owing.held_cents) == (-15, 0)
    assert transition.reply.above_hold
    assert transition.reply.released_cents == 0
    # Owing blocks new debits and reservations until topped up.
    with pytest.raises(InsufficientCredits):
        apply(owing, ReportUsage(USER, "next", 1, b"f", NOW), ctx())
    with pytest.raises(InsufficientCredits):
        apply(owing, reserve(1, rid="r2"), ctx())


def test_commit_after_expiry_is_refused_and_debits_nothing():
    state, reservation = held(10)
    with pytest.raises(ReservationExpired):
        apply(state, commit(1_000_000), ctx(now_ms=reservation.expires_at_ms,
                                            reservation=reservation))
    expired = apply(state, ExpireReservation(USER, "r1"),
                    ctx(now_ms=reservation.expires_at_ms, reservation=reservation))
    gone = expired.records[-1]
    with pytest.raises(ReservationExpired):
        apply(expired.account, commit(1_000_000), ctx(reservation=gone))


def test_commit_after_release_and_release_after_commit_conflict():
    state, reservation = held(10)
    released = apply(state, ReleaseReservation(USER, "r1"), ctx(reservation=reservation))
    with pytest.raises(ReservationClosed) as refused:
        apply(released.account, commit(1), ctx(reservation=released.records[-1]))
    assert refused.value.code == "conflict"
    committed = apply(state, commit(1), ctx(reservation=reservation))
    with pytest.raises(ReservationClosed):
        apply(committed.account, ReleaseReservation(USER, "r1"),
              ctx(reservation=committed.records[-1]))


def test_double_commit_returns_the_same_result_and_a_different_commit_conflicts():
    state, reservation = held(10)
    first = apply(state, commit(2_000_000), ctx(reservation=reservation, tid=5))
    closed = first.records[-1]
    with pytest.raises(DuplicateEvent) as duplicate:
        apply(first.account, commit(2_000_000), ctx(reservation=closed))
    assert duplicate.value.original == first.reply.to_dict()
    with pytest.raises(IdempotencyConflict):
        apply(first.account, commit(3_000_000), ctx(reservation=closed))


def test_commit_event_id_already_used_by_another_event_conflicts():
    state, reservation = held(10)
    other_event = apply(state, ReportUsage(USER, "e9", 0, b"x", NOW), ctx()).records[1]
    with pytest.raises(IdempotencyConflict):
        apply(state, commit(1, event_id="e9"), ctx(reservation=reservation, prior=other_event))


def test_release_returns_the_hold_and_a_repeat_gets_the_original():
    state, reservation = held(10)
    transition = apply(state, ReleaseReservation(USER, "r1"), ctx(reservation=reservation))
    assert transition.account.held_cents == 0
    reply = transition.reply
    assert isinstance(reply, ReservationReleased)
    assert (reply.released_cents, reply.status) == (10, ReservationStatus.RELEASED)
    with pytest.raises(DuplicateEvent) as duplicate:
        apply(transition.account, ReleaseReservation(USER, "r1"),
              ctx(reservation=transition.records[-1]))
    assert duplicate.value.original["status"] == "released"


def test_unknown_reservation_is_not_found():
    with pytest.raises(NotFound):
        apply(account(), commit(1), ctx())
    with pytest.raises(NotFound):
        apply(account(), ReleaseReservation(USER, "nope"), ctx())


def test_expiry_releases_only_a_hold_whose_time_has_come():
    state, reservation = held(10)
    early = apply(state, ExpireReservation(USER, "r1"),
                  ctx(now_ms=reservation.expires_at_ms - 1, reservation=reservation))
    assert early.records == () and early.account is state
    due = apply(state, ExpireReservation(USER, "r1"),
                ctx(now_ms=reservation.expires_at_ms, reservation=reservation))
    assert due.account.held_cents == 0
    assert due.records[-1].status is ReservationStatus.EXPIRED
    again = apply(due.account, ExpireReservation(USER, "r1"),
                  ctx(now_ms=reservation.expires_at_ms + 5, reservation=due.records[-1]))
    assert again.records == ()
    with pytest.raises(ReservationExpired):
        apply(due.account, ReleaseReservation(USER, "r1"), ctx(reservation=due.records[-1]))


def test_plain_usage_respects_holds():
    state, _ = held(95)
    with pytest.raises(InsufficientCredits) as refused:
        apply(state, ReportUsage(USER, "u", 6_000_000, b"f", NOW), ctx())
    assert refused.value.available_cents == 5
    debited = apply(state, ReportUsage(USER, "u", 5_000_000, b"f", NOW), ctx()).account
    assert debited.balance_cents == 95
