"""The Store contract, checked against every implementation (LMDB today)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import cbor2
import lmdb
import pytest

from engine.account import Account, AutoRefillSettings
from engine.commands import (
    CreditResult,
    KeyRecord,
    UsageEventRecord,
    UsageResult,
    WebhookMarker,
)
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.errors import InvariantViolation
from engine.ids import TransactionId
from engine.ledger import EntryType, LedgerEntry
from engine.lots import balance_as_lots
from engine.payments import RefillIntent, RefillResolved
from engine.records import StoredRecord
from engine.subscription_state import Manager, Subscription, SubscriptionStatus
from engine.usage import LlmTokens
from storage import codec
from storage.lmdb_store import _WRITERS, LmdbStore
from storage.store import CommitBatch, Store, StoreError
from tests.conftest import new_user


class CheckpointedLmdbStore(LmdbStore):
    """Every commit checkpointed at once, so reads come from LMDB rather than the overlay."""

    def commit(self, batch: CommitBatch) -> None:
        super().commit(batch)
        self.checkpoint()


# The log-backed store is checked with its writes waiting in the overlay and checkpointed.
IMPLEMENTATIONS: dict[str, Callable[[Path], Store]] = {
    "lmdb-log": LmdbStore, "lmdb-checkpointed": CheckpointedLmdbStore}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request, tmp_path) -> Iterator[Store]:
    opened = IMPLEMENTATIONS[request.param](tmp_path / "store")
    yield opened
    opened.close()


def entry(user, transaction_id: int, amount: int, balance_after: int, key=None) -> LedgerEntry:
    return LedgerEntry(
        transaction_id=TransactionId(transaction_id),
        user_id=user,
        entry_type=EntryType.USAGE if amount < 0 else EntryType.BONUS,
        amount=amount,
        balance_after=balance_after,
        created_at_ms=1_700_000_000_000,
        source_key=key,
        metadata={"cost_micros": 1},
    )


def test_every_record_round_trips(store):
    user = new_user()
    account = Account(
        user_id=user, created_at_ms=1, updated_at_ms=2, balance_cents=5, unbilled_micros=7,
        held_cents=1,
        lifetime_purchased_cents=3, lifetime_granted_cents=2, lifetime_used_cents=0, plan="pro",
        auto_refill=AutoRefillSettings(True, 700, 3000), stripe_customer_id="cus_1",
        lago_customer_id=None, overdraft_limit_cents=4, seq=2,
        lots=balance_as_lots(5)[0],
    )
    first = entry(user, 10, 5, 5, key="grant")
    usage = entry(user, 11, 0, 5, key="evt")
    result = UsageResult("evt", user, TransactionId(11), 0, 900, 5, 1)
    event = UsageEventRecord(
        event_id="evt", user_id=user, fingerprint=b"f" * 16, occurred_at_ms=3,
        metric=LlmTokens("openai", "gpt-4o", 1, 2), agent_id="agent-1", result=result,
    )
    grant = KeyRecord(
        scope="credits_add", key="grant", user_id=user, fingerprint=b"g" * 16,
        result=CreditResult(user, TransactionId(10), EntryType.BONUS, 5, 5),
    )
    store.commit(CommitBatch([account], [first, usage, event, grant]))
    assert store.get_account(user) == account
    assert store.get_entry(TransactionId(10)) == first
    assert store.get_outcome("usage", "evt") == event
    assert store.get_outcome("credits_add", "grant") == grant
    assert store.get_outcome("usage", "missing") is None
    assert store.get_outcome("credits_add", "evt") is None
    assert list(store.iter_user_entries(user)) == [first, usage]
    assert list(store.iter_accounts()) == [account]
    assert sorted(o.key for o in store.iter_outcomes()) == ["evt", "grant"]
    assert store.count_entries() == 2
    assert store.last_transaction_id() == 11


def test_entries_page_newest_first_per_user(store):
    alice, bob = new_user(), new_user()
    records = [entry(alice, i, 1, i) for i in range(1, 6)] + [entry(bob, 100, 1, 1)]
    store.commit(CommitBatch([], records))
    page = store.list_entries(alice, limit=2)
    assert [e.transaction_id for e in page.entries] == [5, 4]
    assert page.has_more
    page = store.list_entries(alice, limit=10, offset=3)
    assert [e.transaction_id for e in page.entries] == [2, 1]
    assert not page.has_more
    page = store.list_entries(alice, limit=10, before=TransactionId(3))
    assert [e.transaction_id for e in page.entries] == [2, 1]
    assert store.list_entries(new_user(), limit=5).entries == []
    assert [e.transaction_id for e in store.list_entries(bob, limit=5).entries] == [100]


def test_a_failed_commit_writes_nothing(store):
    user = new_user()
    bad = LedgerEntry(
        transaction_id=TransactionId(1), user_id=user, entry_type=EntryType.BONUS, amount=1,
        balance_after=1, created_at_ms=1, metadata={"unencodable": object()},
    )
    account = Account(user_id=user, created_at_ms=1, updated_at_ms=1, balance_cents=1, seq=1,
                      lots=balance_as_lots(1)[0])
    with pytest.raises(Exception):  # noqa: B017 - any failure, as long as nothing is written
        store.commit(CommitBatch([account], [entry(user, 2, 1, 1), bad]))
    assert store.get_account(user) is None
    assert store.count_entries() == 0


def test_growth_makes_room(tmp_path):
    small = LmdbStore(tmp_path / "small", map_size_bytes=64 * 1024)
    try:
        before = small.map_size_bytes()
        small.grow()
        assert small.map_size_bytes() == 2 * before
    finally:
        small.close()


def test_schema_version_mismatch_is_refused(tmp_path):
    path = tmp_path / "old"
    LmdbStore(path).close()
    env = lmdb.open(str(path), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True, db=meta) as txn:
        txn.put(b"schema_version", b"99")
    env.close()
    with pytest.raises(StoreError, match="schema version 99"):
        LmdbStore(path)


def test_readonly_open_reads_beside_a_live_writer(tmp_path):
    """Another process (verify, backup) reads a consistent snapshot while the writer runs."""
    writer = LmdbStore(tmp_path / "live")
    user = new_user()
    try:
        writer.commit(CommitBatch([Account(user_id=user, created_at_ms=1, updated_at_ms=1)],
                                  [entry(user, 1, 3, 3)]))
        writer.checkpoint()
        # In the log only, not yet checkpointed: the reader sees it all the same.
        writer.commit(CommitBatch([], [entry(user, 2, 4, 7)]))
        reader = subprocess.run(
            [sys.executable, "-c",
             "import sys, uuid; from pathlib import Path; "
             "from storage.lmdb_store import LmdbStore; "
             "s = LmdbStore(Path(sys.argv[1]), readonly=True); "
             "print(s.count_entries(), s.get_account(uuid.UUID(sys.argv[2])).balance_cents)",
             str(tmp_path / "live"), str(user)],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
        )
        assert reader.stdout.split() == ["2", "0"]
    finally:
        writer.close()


def test_readonly_open_needs_an_existing_directory(tmp_path):
    with pytest.raises(StoreError):
        LmdbStore(tmp_path / "nothing", readonly=True)


def test_unknown_record_format_is_an_error():
    with pytest.raises(codec.CodecError):
        codec.decode_account(codec.cbor2.dumps([99, b""]))


def test_payment_and_subscription_records_round_trip(store):
    user = new_user()
    subscription = Subscription("sub_1", "pro", SubscriptionStatus.PAST_DUE, Manager.STRIPE,
                                6_000, 1_000, 2_000, 1_000, 1_500)
    account = Account(user_id=user, created_at_ms=1, updated_at_ms=2, plan="pro",
                      stripe_customer_id="cus_1", refill_count=3, refill_pending=True,
                      refill_declines=2, auto_refill_error="card_declined",
                      subscription=subscription)
    marker = WebhookMarker("stripe", "evt_1", "invoice.paid", 5)
    refill = RefillIntent(user, 3, 2_500, "pro", "cus_1", 2)
    renewal = user_deadline(DeadlineKind.SUBSCRIPTION, user, 9_000)
    store.commit(CommitBatch([account], [marker, refill, renewal]))
    assert store.get_account(user) == account
    assert store.get_webhook("stripe", "evt_1") == marker
    assert store.get_webhook("lago", "evt_1") is None
    assert store.get_refill(user) == refill
    assert list(store.iter_deadlines(10_000)) == [renewal]
    store.commit(CommitBatch([], [RefillResolved(user),
                                  user_deadline(DeadlineKind.SUBSCRIPTION, user, None)]))
    assert store.get_refill(user) is None
    assert list(store.iter_deadlines(10_000)) == []


def test_an_account_of_the_first_format_reads_with_the_new_fields_at_rest():
    user = new_user()
    fields = cbor2.loads(codec.encode_account(Account(user_id=user, created_at_ms=1,
                                                      updated_at_ms=2, balance_cents=7)))
    first_format = cbor2.dumps([codec.ACCOUNT_FORMAT_V1, *fields[1:17]])
    assert codec.decode_account(first_format) == Account(user_id=user, created_at_ms=1,
                                                         updated_at_ms=2, balance_cents=7,
                                                         lots=balance_as_lots(7)[0])


def test_a_record_type_without_a_writer_is_refused_and_nothing_is_written(store):
    """An unknown record must stop the commit (fail-stop), not land in some database."""
    user = new_user()
    account = Account(user_id=user, created_at_ms=1, updated_at_ms=1, balance_cents=3, seq=1,
                      lots=balance_as_lots(3)[0])
    stray = CreditResult(user, TransactionId(1), EntryType.BONUS, 3, 3)
    with pytest.raises(StoreError, match="no writer for record type CreditResult"):
        store.commit(CommitBatch([account], [entry(user, 1, 3, 3), stray]))  # type: ignore[list-item]
    assert store.get_account(user) is None
    assert store.count_entries() == 0


def test_every_stored_record_type_has_a_writer():
    assert set(_WRITERS) == set(get_args(StoredRecord))


def test_an_account_read_from_storage_is_checked_like_one_after_a_transition():
    user = new_user()
    fields = cbor2.loads(codec.encode_account(Account(user_id=user, created_at_ms=1,
                                                      updated_at_ms=2, balance_cents=7)))
    fields[1 + codec.ACCOUNT_FIELDS_V2.index("held_cents")] = -1
    with pytest.raises(InvariantViolation, match="held"):
        codec.decode_account(cbor2.dumps(fields))


def test_deadlines_come_earliest_first_one_per_kind_and_key_up_to_the_limit(store):
    alice, bob = new_user(), new_user()
    expiry = Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", alice, 5_000)
    store.commit(CommitBatch([], [
        user_deadline(DeadlineKind.SUBSCRIPTION, alice, 9_000), expiry,
        user_deadline(DeadlineKind.AUTO_REFILL, bob, 0),
        # A later deadline of the same kind and key replaces the earlier one.
        user_deadline(DeadlineKind.SUBSCRIPTION, alice, 7_000),
    ]))
    assert [(d.kind, d.due_ms) for d in store.iter_deadlines(1 << 62)] == [
        (DeadlineKind.AUTO_REFILL, 0), (DeadlineKind.RESERVATION_EXPIRY, 5_000),
        (DeadlineKind.SUBSCRIPTION, 7_000)]
    assert list(store.iter_deadlines(5_000)) == [user_deadline(DeadlineKind.AUTO_REFILL, bob, 0)]
    store.commit(CommitBatch([], [Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", alice, None)]))
    assert [d.due_ms for d in store.iter_deadlines(1 << 62)] == [0, 7_000]


def test_a_directory_of_the_layout_before_deadlines_gets_them_indexed_once(tmp_path):
    """Open holds, refills in flight and the old `subscription_deadlines` rows become
    deadlines the first time a newer build opens the directory."""
    path = tmp_path / "old"
    user = new_user()
    LmdbStore(path).close()
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.delete(b"deadlines_indexed", db=meta)
        old = env.open_db(b"subscription_deadlines", txn=txn)
        txn.put(user.bytes, (9_000).to_bytes(8, "big"), db=old)
        txn.put(user.bytes, codec.encode_refill(RefillIntent(user, 1, 2_500, "free", "cus_1")),
                db=env.open_db(b"refills", txn=txn))
    env.close()
    reopened = LmdbStore(path)
    try:
        assert list(reopened.iter_deadlines(1 << 62)) == [
            user_deadline(DeadlineKind.AUTO_REFILL, user, 0),
            user_deadline(DeadlineKind.SUBSCRIPTION, user, 9_000)]
    finally:
        reopened.close()
    again = LmdbStore(path)
    try:
        assert len(list(again.iter_deadlines(1 << 62))) == 2
    finally:
        again.close()
