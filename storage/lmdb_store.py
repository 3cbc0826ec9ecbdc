"""The LMDB implementation of Store: one environment per data directory, named databases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import lmdb
import msgspec

from engine.account import Account
from engine.commands import SCOPE_USAGE, KeyRecord, PriorOutcome, UsageEventRecord, WebhookMarker
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.export import OutboxAck, ParkedEvent, RequeueParked
from engine.ids import TransactionId, UserId
from engine.ledger import LedgerEntry
from engine.payments import RefillIntent, RefillResolved
from engine.records import StoredRecord
from engine.reservations import OpenHold, Reservation
from storage import codec, keys
from storage.store import CommitBatch, EntryPage, MapFull, StoreError

SCHEMA_VERSION = 1
DATABASE_NAMES = (
    "accounts",
    "transactions",
    "transactions_by_user",
    "usage_events",
    "reservations",
    # reservation id -> (user id, expiry) of holds still open: start-up re-arms only these.
    "open_holds",
    "idempotency",
    "outbox",
    # Lago events refused on their own, with Lago's answer, until an operator re-sends them.
    "dead_letters",
    # provider ‖ event id -> marker: webhook events applied (in the commit of their entry).
    "webhooks",
    # user id -> the auto-refill in flight, until it is credited or given up.
    "refills",
    # kind ‖ key -> due ms ‖ user id: every deadline (engine/deadlines.py), one per kind and key.
    "deadlines",
    # due ms ‖ kind ‖ key -> user id: the same deadlines by due time, for the scheduler.
    "deadlines_by_due",
    "meta",
)
MAP_SIZE_INITIAL_BYTES = 256 * 1024 * 1024
MAP_SIZE_MAX_BYTES = 1 << 40
# Grow before the map is this full, so a commit rarely meets MapFull at all.
MAP_FILL_RATIO_MAX = 0.75
READERS_MAX = 256
_META_SCHEMA_KEY = b"schema_version"
_META_EXPORT_CURSOR_KEY = b"exporter_cursor"
_META_DEADLINES_KEY = b"deadlines_indexed"
_TOP_KEY = b"\xff" * keys.TRANSACTION_ID_BYTES
# Outbox rows are Lago events as msgpack (README "Architecture").
_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder()


class LmdbStore:
    """Reads may run on any thread; writes come from one journal thread at a time.

    `readonly` opens a data directory beside a running server (verify, backup): LMDB lets
    other processes read a consistent snapshot while one process writes.
    """

    def __init__(
        self,
        path: Path,
        map_size_bytes: int = MAP_SIZE_INITIAL_BYTES,
        *,
        sync: bool = True,
        readonly: bool = False,
    ) -> None:
        if readonly and not (path / "data.mdb").exists():
            raise StoreError(f"no data directory at {path}")
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(
                str(path),
                map_size=map_size_bytes,
                # One more for a database of an older layout, opened to migrate it.
                max_dbs=len(DATABASE_NAMES) + 1,
                max_readers=READERS_MAX,
                sync=sync,
                metasync=sync,
                readahead=False,
                readonly=readonly,
            )
            # py-lmdb opens each handle in a transaction of its own that it commits, so the
            # handles outlive it (handles opened in a read-only transaction would not).
            self._db = {
                name: self._env.open_db(name.encode(), create=not readonly)
                for name in DATABASE_NAMES
            }
        except lmdb.Error as error:
            raise StoreError(f"cannot open LMDB at {path}: {error}") from error
        self._check_schema(readonly)
        if not readonly:
            self._index_deadlines()
        # Outbox sequence numbers are assigned here, by the one writer, at commit time.
        self._outbox_next = self._last_key_number("outbox") + 1
        # The next sequence within the commit being written (kept only if it commits).
        self._outbox_pending = self._outbox_next

    # --- lifecycle ---------------------------------------------------------------------------

    def _check_schema(self, readonly: bool) -> None:
        with self._env.begin(write=not readonly, db=self._db["meta"]) as txn:
            found = txn.get(_META_SCHEMA_KEY)
            if found is None and not readonly:
                txn.put(_META_SCHEMA_KEY, str(SCHEMA_VERSION).encode())
            elif found is None:
                raise StoreError("data directory has no schema version")
            elif int(found) != SCHEMA_VERSION:
                raise StoreError(
                    f"data directory has schema version {int(found)}, "
                    f"this build reads version {SCHEMA_VERSION}"
                )

    def _index_deadlines(self) -> None:
        """A data directory written before the deadlines index kept its time-driven work in
        open holds, refills in flight and `subscription_deadlines`: index them once."""
        with self._env.begin(write=True) as txn:
            if txn.get(_META_DEADLINES_KEY, db=self._db["meta"]) is not None:
                return
            holds = [codec.decode_open_hold(key.decode(), data)
                     for key, data in txn.cursor(db=self._db["open_holds"])]
            found = [Deadline(DeadlineKind.RESERVATION_EXPIRY, hold.reservation_id,
                              hold.user_id, hold.expires_at_ms) for hold in holds]
            found += [user_deadline(DeadlineKind.AUTO_REFILL, UserId(uuid.UUID(bytes=key)), 0)
                      for key in txn.cursor(db=self._db["refills"]).iternext(values=False)]
            try:
                old = self._env.open_db(b"subscription_deadlines", txn=txn, create=False)
            except lmdb.NotFoundError:
                old = None
            if old is not None:
                found += [user_deadline(DeadlineKind.SUBSCRIPTION, UserId(uuid.UUID(bytes=key)),
                                        int.from_bytes(data, "big"))
                          for key, data in txn.cursor(db=old)]
                txn.drop(old, delete=True)
            for deadline in found:
                self._put_deadline(txn, deadline)
            txn.put(_META_DEADLINES_KEY, b"1", db=self._db["meta"])

    def close(self) -> None:
        self._env.close()

    def map_size_bytes(self) -> int:
        return int(self._env.info()["map_size"])

    def needs_growth(self) -> bool:
        used = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        return used > self.map_size_bytes() * MAP_FILL_RATIO_MAX

    def grow(self) -> None:
        size = self.map_size_bytes()
        if size >= MAP_SIZE_MAX_BYTES:
            raise StoreError(f"LMDB map reached its limit of {MAP_SIZE_MAX_BYTES} bytes")
        self._env.set_mapsize(min(size * 2, MAP_SIZE_MAX_BYTES))

    def backup(self, destination: Path) -> None:
        """A consistent, compacted copy taken inside one read transaction."""
        destination.mkdir(parents=True, exist_ok=False)
        self._env.copy(str(destination), compact=True)

    # --- writes ------------------------------------------------------------------------------

    def _last_key_number(self, name: str) -> int:
        with self._env.begin(db=self._db[name]) as txn:
            cursor = txn.cursor()
            return int.from_bytes(cursor.key(), "big") if cursor.last() else 0

    def commit(self, batch: CommitBatch) -> None:
        db = self._db
        self._outbox_pending = self._outbox_next
        try:
            with self._env.begin(write=True) as txn:
                for event in batch.outbox:
                    self._append_outbox(txn, _packer.encode(event))
                for account in batch.accounts:
                    txn.put(keys.user_key(account.user_id), codec.encode_account(account),
                            db=db["accounts"])
                for record in batch.records:
                    writer = _WRITERS.get(type(record))
                    if writer is None:
                        # Fail-stop: a record without a writer would be lost or mis-stored.
                        raise StoreError(f"no writer for record type {type(record).__name__}")
                    writer(self, txn, record)
        except lmdb.MapFullError as error:
            raise MapFull(str(error)) from error
        except lmdb.Error as error:
            raise StoreError(f"commit failed: {error}") from error
        self._outbox_next = self._outbox_pending

    def _append_outbox(self, txn: lmdb.Transaction, row: bytes) -> None:
        txn.put(keys.sequence_key(self._outbox_pending), row, db=self._db["outbox"],
                append=True)
        self._outbox_pending += 1

    def _put_entry(self, txn: lmdb.Transaction, entry: LedgerEntry) -> None:
        txn.put(keys.transaction_key(entry.transaction_id), codec.encode_entry(entry),
                db=self._db["transactions"])
        txn.put(keys.user_transaction_key(entry.user_id, entry.transaction_id), b"",
                db=self._db["transactions_by_user"])

    def _put_usage_event(self, txn: lmdb.Transaction, event: UsageEventRecord) -> None:
        txn.put(keys.text_key(event.event_id), codec.encode_usage_event(event),
                db=self._db["usage_events"])

    def _put_key(self, txn: lmdb.Transaction, record: KeyRecord) -> None:
        txn.put(keys.idempotency_key(record.scope, record.key), codec.encode_key_record(record),
                db=self._db["idempotency"])

    def _put_reservation(self, txn: lmdb.Transaction, reservation: Reservation) -> None:
        key = keys.text_key(reservation.reservation_id)
        txn.put(key, codec.encode_reservation(reservation), db=self._db["reservations"])
        if reservation.is_open:
            txn.put(key, codec.encode_open_hold(reservation), db=self._db["open_holds"])
        else:
            txn.delete(key, db=self._db["open_holds"])

    def _put_webhook(self, txn: lmdb.Transaction, marker: WebhookMarker) -> None:
        txn.put(keys.idempotency_key(marker.provider, marker.event_id),
                codec.encode_webhook(marker), db=self._db["webhooks"])

    def _put_refill(self, txn: lmdb.Transaction, intent: RefillIntent) -> None:
        txn.put(keys.user_key(intent.user_id), codec.encode_refill(intent), db=self._db["refills"])

    def _drop_refill(self, txn: lmdb.Transaction, resolved: RefillResolved) -> None:
        txn.delete(keys.user_key(resolved.user_id), db=self._db["refills"])

    def _put_deadline(self, txn: lmdb.Transaction, deadline: Deadline) -> None:
        name = keys.idempotency_key(deadline.kind.value, deadline.key)
        earlier = txn.get(name, db=self._db["deadlines"])
        if earlier is not None:
            txn.delete(keys.due_key(int.from_bytes(earlier[:8], "big"), name),
                       db=self._db["deadlines_by_due"])
        if deadline.due_ms is None:
            txn.delete(name, db=self._db["deadlines"])
            return
        user = keys.user_key(deadline.user_id)
        txn.put(name, keys.sequence_key(deadline.due_ms) + user, db=self._db["deadlines"])
        txn.put(keys.due_key(deadline.due_ms, name), user, db=self._db["deadlines_by_due"])

    def _acknowledge(self, txn: lmdb.Transaction, ack: OutboxAck) -> None:
        outbox = txn.cursor(db=self._db["outbox"])
        limit = keys.sequence_key(ack.sequence)
        positioned = outbox.first()
        while positioned and outbox.key() <= limit:
            positioned = outbox.delete()
        for parked in ack.parked:
            txn.put(keys.sequence_key(parked.sequence), codec.encode_parked(parked),
                    db=self._db["dead_letters"])
        txn.put(_META_EXPORT_CURSOR_KEY, keys.sequence_key(ack.sequence), db=self._db["meta"])

    def _requeue(self, txn: lmdb.Transaction, requeue: RequeueParked) -> None:
        for sequence in requeue.sequences:
            key = keys.sequence_key(sequence)
            data = txn.get(key, db=self._db["dead_letters"])
            if data is None:
                continue
            parked = codec.decode_parked(data)
            self._append_outbox(txn, _packer.encode(parked.event))
            txn.delete(key, db=self._db["dead_letters"])

    # --- the outbox, for the Lago exporter ---------------------------------------------------

    def read_outbox(self, after_sequence: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` rows after `after_sequence`, oldest first."""
        rows: list[tuple[int, dict[str, Any]]] = []
        with self._env.begin(db=self._db["outbox"]) as txn:
            cursor = txn.cursor()
            positioned = cursor.set_range(keys.sequence_key(after_sequence + 1))
            while positioned and len(rows) < limit:
                rows.append((int.from_bytes(cursor.key(), "big"),
                             _unpacker.decode(cursor.value())))
                positioned = cursor.next()
        return rows

    def outbox_depth(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._db["outbox"])["entries"])

    def export_cursor(self) -> int:
        with self._env.begin(db=self._db["meta"]) as txn:
            data = txn.get(_META_EXPORT_CURSOR_KEY)
        return int.from_bytes(data, "big") if data is not None else 0

    def dead_letters(self) -> list[ParkedEvent]:
        with self._env.begin(db=self._db["dead_letters"]) as txn:
            return [codec.decode_parked(data) for _, data in txn.cursor()]

    # --- reads -------------------------------------------------------------------------------

    def get_account(self, user_id: UserId) -> Account | None:
        with self._env.begin(db=self._db["accounts"]) as txn:
            data = txn.get(keys.user_key(user_id))
        return codec.decode_account(data) if data is not None else None

    def get_outcome(self, scope: str, key: str) -> PriorOutcome | None:
        if scope == SCOPE_USAGE:
            with self._env.begin(db=self._db["usage_events"]) as txn:
                data = txn.get(keys.text_key(key))
            return codec.decode_usage_event(key, data) if data is not None else None
        with self._env.begin(db=self._db["idempotency"]) as txn:
            data = txn.get(keys.idempotency_key(scope, key))
        return codec.decode_key_record(scope, key, data) if data is not None else None

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        with self._env.begin(db=self._db["reservations"]) as txn:
            data = txn.get(keys.text_key(reservation_id))
        return codec.decode_reservation(reservation_id, data) if data is not None else None

    def iter_open_holds(self) -> Iterator[OpenHold]:
        with self._env.begin(db=self._db["open_holds"]) as txn:
            for key, data in txn.cursor():
                yield codec.decode_open_hold(key.decode(), data)

    def get_webhook(self, provider: str, event_id: str) -> WebhookMarker | None:
        with self._env.begin(db=self._db["webhooks"]) as txn:
            data = txn.get(keys.idempotency_key(provider, event_id))
        return codec.decode_webhook(provider, event_id, data) if data is not None else None

    def get_refill(self, user_id: UserId) -> RefillIntent | None:
        with self._env.begin(db=self._db["refills"]) as txn:
            data = txn.get(keys.user_key(user_id))
        return codec.decode_refill(user_id, data) if data is not None else None

    def iter_refills(self) -> Iterator[RefillIntent]:
        with self._env.begin(db=self._db["refills"]) as txn:
            for key, data in txn.cursor():
                yield codec.decode_refill(UserId(uuid.UUID(bytes=key)), data)

    def iter_deadlines(self, due_before_ms: int) -> Iterator[Deadline]:
        with self._env.begin(db=self._db["deadlines_by_due"]) as txn:
            for key, user in txn.cursor():
                due_ms = int.from_bytes(key[:8], "big")
                if due_ms >= due_before_ms:
                    return
                kind, _, name = key[8:].partition(b"\x00")
                yield Deadline(DeadlineKind(kind.decode()), name.decode(),
                               UserId(uuid.UUID(bytes=user)), due_ms)

    def iter_reservations(self) -> Iterator[Reservation]:
        with self._env.begin(db=self._db["reservations"]) as txn:
            for key, data in txn.cursor():
                yield codec.decode_reservation(key.decode(), data)

    def get_entry(self, transaction_id: TransactionId) -> LedgerEntry | None:
        with self._env.begin(db=self._db["transactions"]) as txn:
            data = txn.get(keys.transaction_key(transaction_id))
        return codec.decode_entry(transaction_id, data) if data is not None else None

    def list_entries(
        self,
        user_id: UserId,
        limit: int,
        offset: int = 0,
        before: TransactionId | None = None,
    ) -> EntryPage:
        prefix = keys.user_key(user_id)
        start = prefix + (keys.transaction_key(before) if before is not None else _TOP_KEY)
        found: list[LedgerEntry] = []
        has_more = False
        with self._env.begin() as txn:
            index = txn.cursor(db=self._db["transactions_by_user"])
            transactions = self._db["transactions"]
            # Position on the last key below `start` (the newest entry older than the cursor).
            positioned = index.set_range(start)
            positioned = index.prev() if positioned else index.last()
            skipped = 0
            while positioned:
                key = index.key()
                if not key.startswith(prefix):
                    break
                if before is not None and key >= start:
                    positioned = index.prev()
                    continue
                if skipped < offset:
                    skipped += 1
                elif len(found) == limit:
                    has_more = True
                    break
                else:
                    transaction_id = keys.transaction_id_from_key(key)
                    data = txn.get(keys.transaction_key(transaction_id), db=transactions)
                    if data is None:
                        raise StoreError(f"index row without entry {transaction_id}")
                    found.append(codec.decode_entry(transaction_id, data))
                positioned = index.prev()
        return EntryPage(found, has_more)

    def iter_accounts(self) -> Iterator[Account]:
        with self._env.begin(db=self._db["accounts"]) as txn:
            for _, data in txn.cursor():
                yield codec.decode_account(data)

    def iter_user_entries(self, user_id: UserId) -> Iterator[LedgerEntry]:
        prefix = keys.user_key(user_id)
        with self._env.begin() as txn:
            index = txn.cursor(db=self._db["transactions_by_user"])
            transactions = self._db["transactions"]
            if not index.set_range(prefix):
                return
            for key in index.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                transaction_id = keys.transaction_id_from_key(key)
                data = txn.get(keys.transaction_key(transaction_id), db=transactions)
                if data is None:
                    raise StoreError(f"index row without entry {transaction_id}")
                yield codec.decode_entry(transaction_id, data)

    def iter_outcomes(self) -> Iterator[PriorOutcome]:
        with self._env.begin() as txn:
            for key, data in txn.cursor(db=self._db["usage_events"]):
                yield codec.decode_usage_event(key.decode(), data)
            for key, data in txn.cursor(db=self._db["idempotency"]):
                scope, _, name = key.partition(b"\x00")
                yield codec.decode_key_record(scope.decode(), name.decode(), data)

    def last_transaction_id(self) -> int:
        with self._env.begin(db=self._db["transactions"]) as txn:
            cursor = txn.cursor()
            return keys.transaction_id_from_key(cursor.key()) if cursor.last() else 0

    def count_entries(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._db["transactions"])["entries"])


# The one writer of each stored record type; a type missing here is refused at commit.
_WRITERS: dict[type, Callable[[LmdbStore, lmdb.Transaction, Any], None]] = {
    LedgerEntry: LmdbStore._put_entry,
    UsageEventRecord: LmdbStore._put_usage_event,
    KeyRecord: LmdbStore._put_key,
    Reservation: LmdbStore._put_reservation,
    WebhookMarker: LmdbStore._put_webhook,
    RefillIntent: LmdbStore._put_refill,
    RefillResolved: LmdbStore._drop_refill,
    Deadline: LmdbStore._put_deadline,
    OutboxAck: LmdbStore._acknowledge,
    RequeueParked: LmdbStore._requeue,
}
assert set(_WRITERS) == set(get_args(StoredRecord)), "a stored record type has no writer"
