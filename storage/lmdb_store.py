"""The LMDB implementation of Store: a write-ahead log in front of indexed LMDB databases.

A commit turns its records into writes `(database, key, value)` through one writer per record
type, appends them to the log as one checksummed record (`storage/wal.py`), makes only that
durable, and keeps them in the overlay (`storage/overlay.py`) that every read consults before
LMDB. The checkpointer later writes whole generations of the overlay into LMDB in one
transaction that also records the log position reached, then trims the log. Start-up replays
the log after that position into LMDB. So a commit costs the bytes it appends; the B-tree
pages it touches are written once per checkpoint, not once per commit.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import lmdb
import msgspec

from engine.account import Account
from engine.commands import SCOPE_USAGE, KeyRecord, PriorOutcome, UsageEventRecord, WebhookMarker
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.errors import require
from engine.export import OutboxAck, ParkedEvent, RequeueParked
from engine.ids import TransactionId, UserId
from engine.ledger import LedgerEntry
from engine.notifications import Notification, webhook_event
from engine.payments import RefillIntent, RefillResolved
from engine.records import StoredRecord
from engine.reports import Totals, aggregate_rows
from engine.reservations import OpenHold, Reservation
from engine.webhooks import ParkedWebhook, RequeueWebhooks, WebhookAck, WebhookEndpoint
from storage import codec, keys
from storage.overlay import ABSENT, Generation, Overlay, Write
from storage.store import CommitBatch, EntryPage, MapFull, StoreError
from storage.wal import LogCorrupt, WriteAheadLog

SCHEMA_VERSION = 1
# Append only: a database's position is its number in the log's writes.
DATABASE_NAMES = (
    "accounts",
    "transactions",
    "transactions_by_user",
    "usage_events",
    "reservations",
    # reservation id -> (user id, expiry) of holds still open (metrics and verify).
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
    # sequence -> an outbound webhook event (msgpack) not yet past every endpoint's cursor.
    "webhook_outbox",
    # endpoint id -> the endpoint with its secret and delivery cursor.
    "webhook_endpoints",
    # endpoint id ‖ sequence -> an event the endpoint did not take within the retry window.
    "webhook_dead_letters",
    # user id ‖ UTC day ‖ group kind ‖ group -> usage totals of that day (engine/reports.py).
    "usage_aggregates",
)
_NUMBER = {name: number for number, name in enumerate(DATABASE_NAMES)}
# Read by key range while the server runs (the transaction list, the exporter, the scheduler).
RANGE_READ_DATABASES = ("outbox", "deadlines_by_due", "dead_letters", "webhook_outbox",
                        "webhook_endpoints", "webhook_dead_letters")
# Read by range within one user's keys (the transaction list, a usage summary): the prefix is
# the user id, and a commit adds few keys per user, so a small list per user beats one sorted
# list of every key.
PREFIX_READ_DATABASES = {"transactions_by_user": keys.USER_ID_BYTES,
                         "usage_aggregates": keys.USER_ID_BYTES}
# Read back by writers within a commit (a deadline's earlier due time, acks, re-queues).
_READ_BACK = frozenset(_NUMBER[name] for name in (
    "deadlines", "dead_letters", "outbox", "webhook_outbox", "webhook_dead_letters",
    "usage_aggregates"))
MAP_SIZE_INITIAL_BYTES = 256 * 1024 * 1024
MAP_SIZE_MAX_BYTES = 1 << 40
# Grow before the map is this full, so a checkpoint rarely meets MapFull at all.
MAP_FILL_RATIO_MAX = 0.75
READERS_MAX = 256
# A checkpoint is due this long after the last one, or sooner once this many writes wait.
CHECKPOINT_INTERVAL_S = 1.0
CHECKPOINT_WRITES_MAX = 200_000
# Writes replayed into LMDB per transaction at start-up.
REPLAY_WRITES_PER_TRANSACTION = 500_000
# A read-only open beside a running server retries when a checkpoint trimmed the log under it.
READONLY_OPEN_ATTEMPTS = 5
_META_SCHEMA_KEY = b"schema_version"
_META_EXPORT_CURSOR_KEY = b"exporter_cursor"
_META_DEADLINES_KEY = b"deadlines_indexed"
_META_LOG_POSITION_KEY = b"log_position"
_TOP_KEY = b"\xff" * keys.TRANSACTION_ID_BYTES
# Outbox rows are Lago events as msgpack; log records are lists of [database, key, value].
_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder()
_log_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes, bytes | None]])


class _Writes:
    """The writes of one commit, in order: what the log record holds. Reads through it see
    them first (a record may read what an earlier one of the same commit wrote)."""

    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        self.list: list[Write] = []
        self._own: dict[tuple[int, bytes], bytes | None] = {}

    def put(self, database: str, key: bytes, value: bytes | None) -> None:
        number = _NUMBER[database]
        self.list.append((number, key, value))
        if number in _READ_BACK:
            self._own[number, key] = value

    def delete(self, database: str, key: bytes) -> None:
        self.put(database, key, None)

    def get(self, database: str, key: bytes) -> bytes | None:
        number = _NUMBER[database]
        require(number in _READ_BACK, "%s is not read back within a commit", database)
        found = self._own.get((number, key), ABSENT)
        return self._store._get(database, key) if found is ABSENT else found  # type: ignore[return-value]

    def scan(self, database: str, low: bytes, high: bytes | None) -> list[tuple[bytes, bytes]]:
        number = _NUMBER[database]
        require(number in _READ_BACK, "%s is not read back within a commit", database)
        rows: dict[bytes, bytes | None] = dict(self._store._scan(database, low, high))
        rows.update({key: value for (owner, key), value in self._own.items()
                     if owner == number and key >= low and (high is None or key < high)})
        return sorted((key, value) for key, value in rows.items() if value is not None)


class LmdbStore:
    """Reads may run on any thread; commits come from one journal thread at a time and
    checkpoints from one other.

    `readonly` opens a data directory beside a running server (verify, backup, the CLI): one
    LMDB snapshot plus the log after its position, read once, so every read sees one moment.
    """

    def __init__(
        self,
        path: Path,
        map_size_bytes: int = MAP_SIZE_INITIAL_BYTES,
        *,
        sync: bool = True,
        readonly: bool = False,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
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
        self._snapshot: lmdb.Transaction | None = None
        self._by_number = [self._db[name] for name in DATABASE_NAMES]
        self._overlay = _new_overlay()
        self._wal = WriteAheadLog(path / "wal", sync=sync, readonly=readonly)
        # Held by a commit from its first write to its log append; a checkpoint takes it
        # only to seal the overlay, so it never waits longer than one append.
        self._writing = threading.Lock()
        self._check_schema(readonly)
        if readonly:
            self._open_snapshot()
        else:
            self._replay()
            self._index_deadlines()
        self._checkpoint_interval_s = checkpoint_interval_s
        self._last_checkpoint_s = time.monotonic()
        # Outbox sequence numbers are assigned here, by the one writer, at commit time.
        self._outbox_next = self._last_key_number("outbox") + 1
        self._outbox_pending = self._outbox_next
        self._outbox_depth = self._count("outbox")
        # Webhook endpoints live in memory too: every event's writer asks who wants it.
        self._endpoints = {endpoint.endpoint_id: endpoint for endpoint in (
            codec.decode_endpoint(key.decode(), data)
            for key, data in self._scan("webhook_endpoints", b"", None))}
        self._endpoints_pending: dict[str, WebhookEndpoint] | None = None
        self._webhook_next = self._last_key_number("webhook_outbox") + 1
        self._webhook_pending = self._webhook_next

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

    def _log_position(self, txn: lmdb.Transaction) -> int:
        data = txn.get(_META_LOG_POSITION_KEY, db=self._db["meta"])
        return int.from_bytes(data, "big") if data is not None else 0

    def _replay(self) -> None:
        """Write the log after the checkpointed position into LMDB (a crash left it there),
        then trim the log: the overlay starts empty."""
        with self._env.begin() as txn:
            position = self._log_position(txn)
        pending: list[Write] = []
        last = position
        for sequence, payload in self._wal.recover(position):
            pending.extend(self._decode_writes(payload))
            last = sequence
            if len(pending) >= REPLAY_WRITES_PER_TRANSACTION:
                self._write_lmdb(pending, last)
                pending = []
        if pending or last != position:
            self._write_lmdb(pending, last)
        self._wal.trim(last)

    def _open_snapshot(self) -> None:
        """One LMDB snapshot and the log after its position (a checkpoint beside us may trim
        the log between the two reads: then take both again)."""
        for _ in range(READONLY_OPEN_ATTEMPTS):
            snapshot = self._env.begin()
            try:
                for sequence, payload in self._wal.recover(self._log_position(snapshot)):
                    self._overlay.apply(self._decode_writes(payload), sequence)
            except (LogCorrupt, FileNotFoundError):
                snapshot.abort()
                self._overlay = _new_overlay()
                continue
            self._snapshot = snapshot
            return
        raise StoreError("the log kept moving under a read-only open; try again")

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
        writes = _Writes(self)
        for deadline in found:
            self._put_deadline(writes, deadline)
        writes.put("meta", _META_DEADLINES_KEY, b"1")
        with self._env.begin() as txn:
            position = self._log_position(txn)
        self._write_lmdb(writes.list, position)

    def close(self) -> None:
        if self._snapshot is not None:
            self._snapshot.abort()
        self._wal.close()
        self._env.close()

    def map_size_bytes(self) -> int:
        return int(self._env.info()["map_size"])

    def needs_growth(self) -> bool:
        used = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        return used > self.map_size_bytes() * MAP_FILL_RATIO_MAX

    def grow(self) -> None:
        """Double the map. LMDB allows it only with no transaction open in this process: the
        caller runs no read or checkpoint meanwhile, and a commit's reads wait here."""
        size = self.map_size_bytes()
        if size >= MAP_SIZE_MAX_BYTES:
            raise StoreError(f"LMDB map reached its limit of {MAP_SIZE_MAX_BYTES} bytes")
        with self._writing:
            self._env.set_mapsize(min(size * 2, MAP_SIZE_MAX_BYTES))

    def backup(self, destination: Path) -> None:
        """A consistent copy that starts by itself: the log first, then a compacted LMDB
        snapshot. The snapshot's position is at or past the copied log's start (the log is
        only trimmed below a checkpointed position), so replay fills exactly the gap."""
        destination.mkdir(parents=True, exist_ok=False)
        (destination / "wal").mkdir()
        for _, segment in self._wal.segments():
            try:
                shutil.copy2(segment, destination / "wal" / segment.name)
            except FileNotFoundError:
                continue  # trimmed meanwhile: checkpointed, so in the snapshot below
        self._env.copy(str(destination), compact=True)

    # --- commits -----------------------------------------------------------------------------

    def _last_key_number(self, name: str) -> int:
        last = next(self._scan(name, b"", None, reverse=True), None)
        return int.from_bytes(last[0], "big") if last is not None else 0

    def commit(self, batch: CommitBatch) -> None:
        """Make the batch durable as one log record; visible to every read on return."""
        with self._writing:
            writes = _Writes(self)
            self._outbox_pending = self._outbox_next
            self._webhook_pending = self._webhook_next
            self._endpoints_pending = None
            depth = self._outbox_depth
            try:
                for event in batch.outbox:
                    self._append_outbox(writes, _packer.encode(event))
                for account in batch.accounts:
                    writes.put("accounts", keys.user_key(account.user_id),
                               codec.encode_account(account))
                for record in batch.records:
                    writer = _WRITERS.get(type(record))
                    if writer is None:
                        # Fail-stop: a record without a writer would be lost or mis-stored.
                        raise StoreError(
                            f"no writer for record type {type(record).__name__}")
                    writer(self, writes, record)
                payload = _packer.encode(writes.list)
                sequence = self._wal.append(payload)
            except BaseException as error:
                self._outbox_depth = depth  # nothing of this commit happened
                if isinstance(error, OSError):
                    raise StoreError(f"log append failed: {error}") from error
                raise
            self._overlay.apply(writes.list, sequence)
            self._outbox_next = self._outbox_pending
            self._webhook_next = self._webhook_pending
            if self._endpoints_pending is not None:
                self._endpoints = self._endpoints_pending

    def _append_outbox(self, writes: _Writes, row: bytes) -> None:
        writes.put("outbox", keys.sequence_key(self._outbox_pending), row)
        self._outbox_pending += 1
        self._outbox_depth += 1

    def _put_entry(self, writes: _Writes, entry: LedgerEntry) -> None:
        writes.put("transactions", keys.transaction_key(entry.transaction_id),
                   codec.encode_entry(entry))
        writes.put("transactions_by_user",
                   keys.user_transaction_key(entry.user_id, entry.transaction_id), b"")

    def _put_usage_event(self, writes: _Writes, event: UsageEventRecord) -> None:
        writes.put("usage_events", keys.text_key(event.event_id),
                   codec.encode_usage_event(event))
        # The reports' aggregates move in the same commit as the event they count.
        for day, kind, group, added in aggregate_rows(event):
            key = keys.aggregate_key(event.user_id, day, kind.value, group)
            known = writes.get("usage_aggregates", key)
            totals = added if known is None else codec.decode_totals(known) + added
            writes.put("usage_aggregates", key, codec.encode_totals(totals))

    def _put_key(self, writes: _Writes, record: KeyRecord) -> None:
        writes.put("idempotency", keys.idempotency_key(record.scope, record.key),
                   codec.encode_key_record(record))

    def _put_reservation(self, writes: _Writes, reservation: Reservation) -> None:
        key = keys.text_key(reservation.reservation_id)
        writes.put("reservations", key, codec.encode_reservation(reservation))
        if reservation.is_open:
            writes.put("open_holds", key, codec.encode_open_hold(reservation))
        else:
            writes.delete("open_holds", key)

    def _put_webhook(self, writes: _Writes, marker: WebhookMarker) -> None:
        writes.put("webhooks", keys.idempotency_key(marker.provider, marker.event_id),
                   codec.encode_webhook(marker))

    def _put_refill(self, writes: _Writes, intent: RefillIntent) -> None:
        writes.put("refills", keys.user_key(intent.user_id), codec.encode_refill(intent))

    def _drop_refill(self, writes: _Writes, resolved: RefillResolved) -> None:
        writes.delete("refills", keys.user_key(resolved.user_id))

    def _put_deadline(self, writes: _Writes, deadline: Deadline) -> None:
        name = keys.idempotency_key(deadline.kind.value, deadline.key)
        earlier = writes.get("deadlines", name)
        if earlier is not None:
            writes.delete("deadlines_by_due",
                          keys.due_key(int.from_bytes(earlier[:8], "big"), name))
        if deadline.due_ms is None:
            writes.delete("deadlines", name)
            return
        user = keys.user_key(deadline.user_id)
        writes.put("deadlines", name, keys.sequence_key(deadline.due_ms) + user)
        writes.put("deadlines_by_due", keys.due_key(deadline.due_ms, name), user)

    def _acknowledge(self, writes: _Writes, ack: OutboxAck) -> None:
        # Rows up to the durable cursor are gone already (deleted with its move); scanning
        # from the start would walk every deleted row LMDB still holds until a checkpoint.
        low = keys.sequence_key(self.export_cursor() + 1)
        for key, _ in list(writes.scan("outbox", low, keys.sequence_key(ack.sequence + 1))):
            writes.delete("outbox", key)
            self._outbox_depth -= 1
        for parked in ack.parked:
            writes.put("dead_letters", keys.sequence_key(parked.sequence),
                       codec.encode_parked(parked))
        writes.put("meta", _META_EXPORT_CURSOR_KEY, keys.sequence_key(ack.sequence))

    def _requeue(self, writes: _Writes, requeue: RequeueParked) -> None:
        for sequence in requeue.sequences:
            key = keys.sequence_key(sequence)
            data = writes.get("dead_letters", key)
            if data is None:
                continue
            parked = codec.decode_parked(data)
            self._append_outbox(writes, _packer.encode(parked.event))
            writes.delete("dead_letters", key)

    # --- outbound webhooks ---------------------------------------------------------------

    def _pending_endpoints(self) -> dict[str, WebhookEndpoint]:
        """The endpoints as this commit leaves them (copied on the first change)."""
        if self._endpoints_pending is None:
            self._endpoints_pending = dict(self._endpoints)
        return self._endpoints_pending

    def _append_webhook(self, writes: _Writes, event: dict[str, Any], only: str | None) -> None:
        writes.put("webhook_outbox", keys.sequence_key(self._webhook_pending),
                   _packer.encode({"event": event, "only": only}))
        self._webhook_pending += 1

    def _put_notification(self, writes: _Writes, notification: Notification) -> None:
        endpoints = self._endpoints_pending or self._endpoints
        # Kept only for someone who wants it: with no endpoint, events cost nothing at rest.
        if any(endpoint.wants(notification.event_type) for endpoint in endpoints.values()):
            self._append_webhook(writes, webhook_event(notification), None)

    def _put_endpoint(self, writes: _Writes, endpoint: WebhookEndpoint) -> None:
        endpoints = self._pending_endpoints()
        known = endpoints.get(endpoint.endpoint_id)
        key = endpoint.endpoint_id.encode()
        if endpoint.deleted:
            endpoints.pop(endpoint.endpoint_id, None)
            writes.delete("webhook_endpoints", key)
            self._trim_webhooks(writes)
            return
        # A new endpoint hears of events from now on; a rotation keeps its place.
        cursor = known.cursor if known is not None else self._webhook_pending - 1
        stored = msgspec.structs.replace(endpoint, cursor=cursor)
        endpoints[endpoint.endpoint_id] = stored
        writes.put("webhook_endpoints", key, codec.encode_endpoint(stored))

    def _webhook_acknowledge(self, writes: _Writes, ack: WebhookAck) -> None:
        endpoints = self._pending_endpoints()
        endpoint = endpoints.get(ack.endpoint_id)
        if endpoint is None:
            return  # deleted while its last delivery was in flight
        for parked in ack.parked:
            writes.put("webhook_dead_letters",
                       keys.webhook_letter_key(parked.endpoint_id, parked.sequence),
                       codec.encode_parked_webhook(parked))
        moved = msgspec.structs.replace(endpoint, cursor=max(endpoint.cursor, ack.sequence))
        endpoints[ack.endpoint_id] = moved
        writes.put("webhook_endpoints", ack.endpoint_id.encode(), codec.encode_endpoint(moved))
        self._trim_webhooks(writes)

    def _trim_webhooks(self, writes: _Writes) -> None:
        """Drop outbox rows every endpoint is past (all of them when none is left)."""
        endpoints = self._pending_endpoints()
        low = min((endpoint.cursor for endpoint in endpoints.values()),
                  default=self._webhook_pending - 1)
        for key, _ in writes.scan("webhook_outbox", b"", keys.sequence_key(low + 1)):
            writes.delete("webhook_outbox", key)

    def _webhook_requeue(self, writes: _Writes, requeue: RequeueWebhooks) -> None:
        for sequence in requeue.sequences:
            key = keys.webhook_letter_key(requeue.endpoint_id, sequence)
            data = writes.get("webhook_dead_letters", key)
            if data is None:
                continue
            parked = codec.decode_parked_webhook(data)
            self._append_webhook(writes, parked.event, requeue.endpoint_id)
            writes.delete("webhook_dead_letters", key)

    def usage_aggregates(self, user_id: UserId, from_day: int, to_day: int
                         ) -> Iterator[tuple[int, str, str, Totals]]:
        """(day, group kind, group, totals) of the user's days in [from_day, to_day]."""
        low, high = keys.aggregate_range(user_id, from_day, to_day)
        for key, data in self._scan("usage_aggregates", low, high):
            day, kind, group = keys.aggregate_parts(key)
            yield day, kind, group, codec.decode_totals(data)

    def webhook_endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    def read_webhooks(self, after_sequence: int, limit: int
                      ) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` outbox rows after `after_sequence`, oldest first: `{event, only}`."""
        rows: list[tuple[int, dict[str, Any]]] = []
        for key, value in self._scan("webhook_outbox", keys.sequence_key(after_sequence + 1),
                                     None):
            if len(rows) == limit:
                break
            rows.append((int.from_bytes(key, "big"), _unpacker.decode(value)))
        return rows

    def last_webhook_sequence(self) -> int:
        return self._webhook_next - 1

    def webhook_dead_letters(self, endpoint_id: str | None = None) -> list[ParkedWebhook]:
        low, high = (keys.webhook_letter_range(endpoint_id) if endpoint_id is not None
                     else (b"", None))
        return [codec.decode_parked_webhook(data)
                for _, data in self._scan("webhook_dead_letters", low, high)]

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        waiting = self._overlay.writes
        return waiting >= CHECKPOINT_WRITES_MAX or (
            waiting > 0
            and time.monotonic() - self._last_checkpoint_s >= self._checkpoint_interval_s)

    def checkpoint(self) -> int:
        """Write every sealed generation of the overlay into LMDB, oldest first, each in one
        transaction with the log position it reaches; then forget it and trim the log.
        Returns the writes checkpointed. Raises MapFull (grow, then call again)."""
        with self._writing:
            self._overlay.seal()
            self._wal.rotate()
        done = 0
        for generation in self._overlay.sealed():
            if generation.writes:
                self._write_generation(generation)
                done += generation.writes
            self._overlay.drop(generation)
            self._wal.trim(generation.last_sequence)
        self._last_checkpoint_s = time.monotonic()
        return done

    def _write_generation(self, generation: Generation) -> None:
        writes = [(database, key, value) for database, table in generation.tables.items()
                  for key, value in table.items()]
        self._write_lmdb(writes, generation.last_sequence)

    def _write_lmdb(self, writes: list[Write], position: int) -> None:
        handles = self._by_number
        try:
            with self._env.begin(write=True) as txn:
                for number, key, value in writes:
                    if value is None:
                        txn.delete(key, db=handles[number])
                    else:
                        txn.put(key, value, db=handles[number])
                txn.put(_META_LOG_POSITION_KEY, position.to_bytes(8, "big"),
                        db=self._db["meta"])
        except lmdb.MapFullError as error:
            raise MapFull(str(error)) from error
        except lmdb.Error as error:
            raise StoreError(f"checkpoint failed: {error}") from error

    @staticmethod
    def _decode_writes(payload: bytes) -> list[Write]:
        return _log_decoder.decode(payload)

    def checkpoint_lag_s(self) -> float:
        return self._overlay.lag_s()

    def log_report(self) -> tuple[int, int, int]:
        """(checkpointed position, last logged sequence, writes waiting) for verify."""
        with self._read() as txn:
            position = self._log_position(txn)
        return position, self._wal.next_sequence - 1, self._overlay.writes

    # --- the one read path: the overlay, then LMDB ----------------------------------------

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        if self._snapshot is not None:
            yield self._snapshot
            return
        with self._env.begin() as txn:
            yield txn

    def _get(self, database: str, key: bytes) -> bytes | None:
        number = _NUMBER[database]
        found = self._overlay.get(number, key)
        if found is not ABSENT:
            return found  # type: ignore[return-value]
        # On every debit (its event id's outcome): no context-manager generator here.
        if self._snapshot is not None:
            data: bytes | None = self._snapshot.get(key, db=self._by_number[number])
            return data
        with self._env.begin(db=self._by_number[number]) as txn:
            data = txn.get(key)
        return data

    def _scan(self, database: str, low: bytes, high: bytes | None, *,
              reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [low, high) with their values, in key order (or reversed), the overlay's
        writes merged over LMDB's rows (its deletes hide them)."""
        waiting = self._overlay.range(_NUMBER[database], low, high, reverse=reverse)
        before = (lambda a, b: a > b) if reverse else (lambda a, b: a < b)
        newer = next(waiting, None)
        with self._read() as txn:
            for key, value in self._lmdb_range(txn, database, low, high, reverse):
                # Overlay keys that come first, then the overlay's version of this key.
                while newer is not None and before(newer[0], key):
                    if newer[1] is not None:
                        yield newer  # type: ignore[misc]
                    newer = next(waiting, None)
                if newer is not None and newer[0] == key:
                    if newer[1] is not None:
                        yield newer  # type: ignore[misc]
                    newer = next(waiting, None)
                    continue
                yield key, value
        while newer is not None:
            if newer[1] is not None:
                yield newer  # type: ignore[misc]
            newer = next(waiting, None)

    def _lmdb_range(self, txn: lmdb.Transaction, database: str, low: bytes,
                    high: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        cursor = txn.cursor(db=self._db[database])
        if not reverse:
            positioned = cursor.set_range(low)
            while positioned:
                key = cursor.key()
                if high is not None and key >= high:
                    return
                yield key, cursor.value()
                positioned = cursor.next()
            return
        if high is None:
            positioned = cursor.last()
        else:
            positioned = cursor.set_range(high)
            positioned = cursor.prev() if positioned else cursor.last()
        while positioned:
            key = cursor.key()
            if key < low:
                return
            yield key, cursor.value()
            positioned = cursor.prev()

    # --- the outbox, for the Lago exporter ---------------------------------------------------

    def read_outbox(self, after_sequence: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` rows after `after_sequence`, oldest first."""
        rows: list[tuple[int, dict[str, Any]]] = []
        for key, value in self._scan("outbox", keys.sequence_key(after_sequence + 1), None):
            if len(rows) == limit:
                break
            rows.append((int.from_bytes(key, "big"), _unpacker.decode(value)))
        return rows

    def outbox_depth(self) -> int:
        return self._outbox_depth

    def export_cursor(self) -> int:
        data = self._get("meta", _META_EXPORT_CURSOR_KEY)
        return int.from_bytes(data, "big") if data is not None else 0

    def dead_letters(self) -> list[ParkedEvent]:
        return [codec.decode_parked(data) for _, data in self._scan("dead_letters", b"", None)]

    # --- reads -------------------------------------------------------------------------------

    def get_account(self, user_id: UserId) -> Account | None:
        data = self._get("accounts", keys.user_key(user_id))
        return codec.decode_account(data) if data is not None else None

    def get_outcome(self, scope: str, key: str) -> PriorOutcome | None:
        if scope == SCOPE_USAGE:
            data = self._get("usage_events", keys.text_key(key))
            return codec.decode_usage_event(key, data) if data is not None else None
        data = self._get("idempotency", keys.idempotency_key(scope, key))
        return codec.decode_key_record(scope, key, data) if data is not None else None

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        data = self._get("reservations", keys.text_key(reservation_id))
        return codec.decode_reservation(reservation_id, data) if data is not None else None

    def iter_open_holds(self) -> Iterator[OpenHold]:
        for key, data in self._scan("open_holds", b"", None):
            yield codec.decode_open_hold(key.decode(), data)

    def get_webhook(self, provider: str, event_id: str) -> WebhookMarker | None:
        data = self._get("webhooks", keys.idempotency_key(provider, event_id))
        return codec.decode_webhook(provider, event_id, data) if data is not None else None

    def get_refill(self, user_id: UserId) -> RefillIntent | None:
        data = self._get("refills", keys.user_key(user_id))
        return codec.decode_refill(user_id, data) if data is not None else None

    def iter_deadlines(self, due_before_ms: int) -> Iterator[Deadline]:
        for key, user in self._scan("deadlines_by_due", b"", keys.sequence_key(due_before_ms)):
            kind, _, name = key[8:].partition(b"\x00")
            yield Deadline(DeadlineKind(kind.decode()), name.decode(),
                           UserId(uuid.UUID(bytes=user)), int.from_bytes(key[:8], "big"))

    def iter_reservations(self) -> Iterator[Reservation]:
        for key, data in self._scan("reservations", b"", None):
            yield codec.decode_reservation(key.decode(), data)

    def get_entry(self, transaction_id: TransactionId) -> LedgerEntry | None:
        data = self._get("transactions", keys.transaction_key(transaction_id))
        return codec.decode_entry(transaction_id, data) if data is not None else None

    def _entry(self, transaction_id: TransactionId) -> LedgerEntry:
        entry = self.get_entry(transaction_id)
        if entry is None:
            raise StoreError(f"index row without entry {transaction_id}")
        return entry

    def list_entries(
        self,
        user_id: UserId,
        limit: int,
        offset: int = 0,
        before: TransactionId | None = None,
    ) -> EntryPage:
        prefix = keys.user_key(user_id)
        high = prefix + (keys.transaction_key(before) if before is not None else _TOP_KEY)
        found: list[LedgerEntry] = []
        has_more = False
        for skipped, (key, _) in enumerate(self._scan("transactions_by_user", prefix, high,
                                                      reverse=True)):
            if skipped < offset:
                continue
            if len(found) == limit:
                has_more = True
                break
            found.append(self._entry(TransactionId(keys.transaction_id_from_key(key))))
        return EntryPage(found, has_more)

    def iter_accounts(self, *, checked: bool = True) -> Iterator[Account]:
        for _, data in self._scan("accounts", b"", None):
            yield codec.decode_account(data, checked=checked)

    def iter_user_entries(self, user_id: UserId) -> Iterator[LedgerEntry]:
        prefix = keys.user_key(user_id)
        for key, _ in self._scan("transactions_by_user", prefix, prefix + _TOP_KEY + b"\xff"):
            yield self._entry(TransactionId(keys.transaction_id_from_key(key)))

    def iter_outcomes(self) -> Iterator[PriorOutcome]:
        for key, data in self._scan("usage_events", b"", None):
            yield codec.decode_usage_event(key.decode(), data)
        for key, data in self._scan("idempotency", b"", None):
            scope, _, name = key.partition(b"\x00")
            yield codec.decode_key_record(scope.decode(), name.decode(), data)

    def last_transaction_id(self) -> int:
        last = next(self._scan("transactions", b"", None, reverse=True), None)
        return keys.transaction_id_from_key(last[0]) if last is not None else 0

    def count_entries(self) -> int:
        return self._count("transactions")

    def _count(self, database: str) -> int:
        """Rows of a database: LMDB's count, corrected by the overlay's puts of new keys and
        deletes of stored ones."""
        waiting = self._overlay.latest(_NUMBER[database])
        handle = self._db[database]
        with self._read() as txn:
            count = int(txn.stat(handle)["entries"])
            for key, value in waiting.items():
                stored = txn.get(key, db=handle) is not None
                count += (value is not None and not stored) - (value is None and stored)
        return count


def _new_overlay() -> Overlay:
    return Overlay((_NUMBER[name] for name in RANGE_READ_DATABASES),
                   {_NUMBER[name]: length for name, length in PREFIX_READ_DATABASES.items()})


# The one writer of each stored record type; a type missing here is refused at commit.
_WRITERS: dict[type, Callable[[LmdbStore, _Writes, Any], None]] = {
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
    Notification: LmdbStore._put_notification,
    WebhookEndpoint: LmdbStore._put_endpoint,
    WebhookAck: LmdbStore._webhook_acknowledge,
    RequeueWebhooks: LmdbStore._webhook_requeue,
}
assert set(_WRITERS) == set(get_args(StoredRecord)), "a stored record type has no writer"
assert set(RANGE_READ_DATABASES) | set(PREFIX_READ_DATABASES) <= set(DATABASE_NAMES)
