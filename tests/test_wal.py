"""The write-ahead log and the checkpoint: a commit is one durable append, every read sees it
at once, a checkpoint moves it into LMDB, start-up replays what a crash left in the log, and a
torn last record is discarded."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from engine.account import Account
from engine.ids import TransactionId
from engine.ledger import EntryType, LedgerEntry
from engine.lots import balance_as_lots
from storage.lmdb_store import LmdbStore
from storage.store import CommitBatch, StoreError
from storage.verify import verify_store
from storage.wal import LogCorrupt, WriteAheadLog
from tests.conftest import new_user


def test_appended_records_come_back_in_order_after_a_reopen(tmp_path):
    log = WriteAheadLog(tmp_path)
    assert list(log.recover(0)) == []
    assert [log.append(b"a"), log.append(b"bb")] == [1, 2]
    log.rotate()
    assert log.append(b"ccc") == 3
    log.close()
    again = WriteAheadLog(tmp_path)
    assert list(again.recover(0)) == [(1, b"a"), (2, b"bb"), (3, b"ccc")]
    assert list(WriteAheadLog(tmp_path).recover(2)) == [(3, b"ccc")]
    assert again.next_sequence == 4


@pytest.mark.parametrize("tail", [b"\x5a\x42", os.urandom(40), b"\x00" * 100])
def test_a_torn_last_record_is_cut_off_and_appending_goes_on(tmp_path, tail):
    log = WriteAheadLog(tmp_path)
    list(log.recover(0))
    log.append(b"kept")
    log.close()
    (_, segment), = log.segments()
    good_size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(tail)  # a crash in the middle of the next append
    again = WriteAheadLog(tmp_path)
    assert list(again.recover(0)) == [(1, b"kept")]
    assert segment.stat().st_size == good_size
    assert again.append(b"next") == 2
    again.close()
    assert list(WriteAheadLog(tmp_path).recover(0)) == [(1, b"kept"), (2, b"next")]


def test_a_record_whose_checksum_fails_at_the_end_was_never_acknowledged(tmp_path):
    log = WriteAheadLog(tmp_path)
    list(log.recover(0))
    log.append(b"first")
    log.append(b"second")
    log.close()
    (_, segment), = log.segments()
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert list(WriteAheadLog(tmp_path).recover(0)) == [(1, b"first")]


def test_damage_before_the_end_is_refused(tmp_path):
    log = WriteAheadLog(tmp_path)
    list(log.recover(0))
    log.append(b"first")
    log.rotate()
    log.append(b"second")
    log.close()
    (_, first), _ = log.segments()
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt):
        list(WriteAheadLog(tmp_path).recover(0))


def test_a_missing_segment_is_refused(tmp_path):
    log = WriteAheadLog(tmp_path)
    list(log.recover(0))
    for payload in (b"1", b"2", b"3"):
        log.append(payload)
        log.rotate()
    log.close()
    log.segments()[1][1].unlink()
    with pytest.raises(LogCorrupt, match="jumps from record 1 to 3"):
        list(WriteAheadLog(tmp_path).recover(0))


def test_trim_deletes_only_segments_wholly_applied(tmp_path):
    log = WriteAheadLog(tmp_path)
    list(log.recover(0))
    for payload in (b"1", b"2", b"3"):
        log.append(payload)
        log.rotate()
    log.trim(1)
    assert [first for first, _ in log.segments()] == [2, 3]
    log.trim(3)  # the newest segment stays: the next append may follow it
    assert [first for first, _ in log.segments()] == [3]


# --- the store over the log -----------------------------------------------------------------


def grant(user, transaction_id: int, balance: int) -> CommitBatch:
    account = Account(user_id=user, created_at_ms=1, updated_at_ms=1, balance_cents=balance,
                      lifetime_purchased_cents=balance, seq=transaction_id,
                      lots=balance_as_lots(balance)[0])
    entry = LedgerEntry(TransactionId(transaction_id), user, EntryType.PURCHASE, 1, balance, 1)
    return CommitBatch([account], [entry])


def test_a_commit_is_visible_at_once_and_after_its_checkpoint(tmp_path):
    store = LmdbStore(tmp_path / "data")
    user = new_user()
    store.commit(grant(user, 1, 1))
    assert store.get_account(user).balance_cents == 1
    assert [e.transaction_id for e in store.list_entries(user, 10).entries] == [1]
    # The account, the entry and its index row wait in the overlay.
    assert store.log_report() == (0, 1, 3)
    assert store.checkpoint() == 3
    assert store.log_report() == (1, 1, 0)
    store.commit(grant(user, 2, 2))  # one entry in LMDB, one in the overlay
    assert [e.transaction_id for e in store.list_entries(user, 10).entries] == [2, 1]
    assert store.count_entries() == 2
    assert store.last_transaction_id() == 2
    store.close()


def test_start_up_replays_what_a_crash_left_in_the_log(tmp_path):
    path = tmp_path / "data"
    store = LmdbStore(path)
    user = new_user()
    for n in range(1, 6):
        store.commit(grant(user, n, n))
    store.checkpoint()
    for n in range(6, 11):
        store.commit(grant(user, n, n))
    # No checkpoint and no close: what a SIGKILL leaves.
    crashed_copy = tmp_path / "crashed"
    shutil.copytree(path, crashed_copy)
    store.close()
    reopened = LmdbStore(crashed_copy)
    try:
        assert reopened.log_report() == (10, 10, 0)
        assert reopened.get_account(user).balance_cents == 10
        assert reopened.count_entries() == 10
        assert verify_store(reopened).ok
    finally:
        reopened.close()


def test_a_failing_log_write_is_a_store_error_and_shows_nothing(tmp_path):
    store = LmdbStore(tmp_path / "data")
    user = new_user()
    store.commit(grant(user, 1, 1))
    store._wal.rotate()
    # The log's directory gone: the next segment cannot be created (an I/O failure).
    shutil.rmtree(tmp_path / "data" / "wal")
    with pytest.raises(StoreError, match="log append failed"):
        store.commit(grant(user, 2, 2))
    assert store.get_account(user).balance_cents == 1
    store.close()


def test_a_backup_taken_with_writes_in_the_log_starts_by_itself(tmp_path):
    store = LmdbStore(tmp_path / "data")
    user = new_user()
    store.commit(grant(user, 1, 1))
    store.checkpoint()
    store.commit(grant(user, 2, 2))
    store.backup(tmp_path / "copy")
    store.close()
    copy = LmdbStore(tmp_path / "copy")
    try:
        assert copy.get_account(user).balance_cents == 2
        assert copy.count_entries() == 2
        assert verify_store(copy).ok
    finally:
        copy.close()


def test_the_checkpoint_lag_is_the_age_of_the_oldest_write_waiting(tmp_path):
    store = LmdbStore(tmp_path / "data")
    try:
        assert store.checkpoint_lag_s() == 0.0
        user = new_user()
        store.commit(CommitBatch([Account(user, 1, 1)], []))
        time.sleep(0.05)
        first = store.checkpoint_lag_s()
        store.commit(CommitBatch([Account(user, 1, 2)], []))
        assert 0.05 <= first <= store.checkpoint_lag_s()  # the oldest write sets it
        store.checkpoint()
        assert store.checkpoint_lag_s() == 0.0
    finally:
        store.close()
