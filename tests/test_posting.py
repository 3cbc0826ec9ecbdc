"""The one door for balance changes, the one rule for a key seen before, declared reads, and
the one dispatch: pure, no trio, no disk."""

from __future__ import annotations

import uuid
from typing import get_args

import pytest

from engine.account import Account
from engine.commands import (
    NO_READS,
    SCOPE_CREDITS_ADD,
    SCOPE_USAGE,
    AddCredits,
    CommandBase,
    Context,
    GetAccount,
    Reads,
    ReportUsage,
)
from engine.errors import DuplicateEvent, IdempotencyConflict, InvariantViolation
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType
from engine.lots import balance_as_lots
from engine.payments import SCOPE_STRIPE_REFUND, TakeBackCredits
from engine.posting import post_entry, repeat_or_conflict
from engine.reservations import CommitReservation, ExpireReservation, Reserve
from engine.subscriptions import SCOPE_SUBSCRIPTION_GRANT, GrantPeriod, grant_key
from engine.transitions import _HANDLERS, AnyCommand

USER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000001"))
NOW = 1_700_000_000_000
CONTEXT = Context(NOW, TransactionId(42))


def account(**fields) -> Account:
    lots, debt = balance_as_lots(fields.get("balance_cents", 0))
    return Account(user_id=USER, created_at_ms=1, updated_at_ms=1, lots=lots, debt_cents=debt,
                   **fields)


@pytest.mark.parametrize(
    ("entry_type", "amount", "counter", "expected"),
    [
        (EntryType.PURCHASE, 300, "lifetime_purchased_cents", 1_300),
        (EntryType.AUTO_REFILL, 300, "lifetime_purchased_cents", 1_300),
        (EntryType.SUBSCRIPTION_GRANT, 300, "lifetime_granted_cents", 1_300),
        (EntryType.USAGE, -300, "lifetime_used_cents", 1_300),
    ],
)
def test_post_entry_moves_balance_seq_time_and_the_types_lifetime_counter(
    entry_type, amount, counter, expected
):
    before = account(balance_cents=500, seq=7, lifetime_purchased_cents=1_000,
                     lifetime_granted_cents=1_000, lifetime_used_cents=1_000)
    after, entry = post_entry(before, CONTEXT, entry_type, amount, source_key="k",
                              description="d", metadata={"m": 1})
    assert (after.balance_cents, after.seq, after.updated_at_ms) == (500 + amount, 8, NOW)
    assert getattr(after, counter) == expected
    others = {"lifetime_purchased_cents", "lifetime_granted_cents", "lifetime_used_cents"}
    assert all(getattr(after, name) == 1_000 for name in others - {counter})
    assert (entry.transaction_id, entry.user_id, entry.entry_type) == (42, USER, entry_type)
    assert (entry.amount, entry.balance_after, entry.created_at_ms) == (amount, 500 + amount, NOW)
    assert (entry.source_key, entry.description, entry.metadata) == ("k", "d", {"m": 1})


@pytest.mark.parametrize("entry_type", [EntryType.BONUS, EntryType.REFUND,
                                        EntryType.ADJUSTMENT])
def test_post_entry_of_other_credit_types_feeds_no_lifetime_counter(entry_type):
    after, _ = post_entry(account(balance_cents=10), CONTEXT, entry_type, -4, source_key=None)
    assert after.balance_cents == 6
    assert (after.lifetime_purchased_cents, after.lifetime_granted_cents,
            after.lifetime_used_cents) == (0, 0, 0)


def test_post_entry_sets_the_other_changes_of_the_same_transition():
    after, _ = post_entry(account(balance_cents=10, held_cents=5), CONTEXT, EntryType.USAGE, -2,
                          source_key="e", held_cents=0, unbilled_micros=3)
    assert (after.balance_cents, after.held_cents, after.unbilled_micros) == (8, 0, 3)


@pytest.mark.parametrize(("entry_type", "amount"), [
    (EntryType.USAGE, 1), (EntryType.PURCHASE, -1), (EntryType.SUBSCRIPTION_GRANT, -1)])
def test_post_entry_refuses_a_lifetime_counter_going_down(entry_type, amount):
    with pytest.raises(InvariantViolation):
        post_entry(account(balance_cents=10), CONTEXT, entry_type, amount, source_key=None)


def test_a_repeat_gets_the_original_result_and_another_request_a_conflict():
    with pytest.raises(DuplicateEvent) as repeat:
        repeat_or_conflict("k", b"same", b"same", {"cost_cents": 3})
    assert repeat.value.original == {"cost_cents": 3}
    with pytest.raises(IdempotencyConflict):
        repeat_or_conflict("k", b"this", b"that", {"cost_cents": 3})


def test_commands_declare_what_the_actor_reads_before_deciding():
    usage = ReportUsage(USER, "evt-1", 5, b"f", NOW)
    assert usage.reads() == Reads((SCOPE_USAGE, "evt-1"))
    assert AddCredits(USER, 5, EntryType.BONUS, "idem", b"f").reads() == Reads(
        (SCOPE_CREDITS_ADD, "idem"))
    assert AddCredits(USER, 5, EntryType.BONUS, None, b"f").reads() is NO_READS
    assert TakeBackCredits(USER, "ch_1", 5).reads() == Reads((SCOPE_STRIPE_REFUND, "ch_1"))
    grant = GrantPeriod(USER, "sub_1", NOW, NOW + 1, "invoice.paid")
    assert grant.reads() == Reads((SCOPE_SUBSCRIPTION_GRANT, grant_key("sub_1", NOW)))
    assert Reserve(USER, "r1", 5, 60, b"f").reads() == Reads(reservation_id="r1")
    assert CommitReservation("r1", usage).reads() == Reads((SCOPE_USAGE, "evt-1"), "r1")
    assert ExpireReservation(USER, "r1").reads() == Reads(reservation_id="r1")
    assert GetAccount(USER).reads() is NO_READS


def test_every_command_is_a_command_base_with_exactly_one_handler():
    commands = set(get_args(AnyCommand))
    assert commands == set(_HANDLERS)
    assert all(issubclass(command, CommandBase) for command in commands)
