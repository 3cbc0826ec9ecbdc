"""Group commit: records from every account become durable together, as one log append.

Commands append to the open batch; the writer task commits it on a worker thread while the
next batch fills (pipelining). Callers wait on their batch's `done` event and learn its fate
only after the commit returned, so no reply ever shows state a crash could take back. The
checkpoint task writes what the log holds into the indexed databases beside the commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from engine.account import Account
from engine.commands import PriorOutcome
from engine.errors import EngineStopped, Overloaded
from engine.export import outbox_rows
from engine.records import AnyRecord, OutboxOnly, StoredRecord
from engine.reservations import Reservation
from storage.store import CommitBatch, MapFull, Store, StoreError

# Commands waiting for a commit before callers are told to back off.
JOURNAL_PENDING_COMMANDS_MAX = 20_000
# A checkpoint that meets MapFull is tried again after growing the map, at most this often.
MAP_GROWTH_ATTEMPTS_MAX = 8
# How often the checkpoint task asks the store whether a checkpoint is due (the store's
# interval and write bound decide; this only bounds how late it notices).
CHECKPOINT_CHECK_S = 0.05


# Records looked up by key before their commit: idempotency keys and reservations.
Keyed = PriorOutcome | Reservation



class _Operator:
    """The submitter of records bound to no account (operator commands, webhook markers)."""

    in_flight = 0


OPERATOR = _Operator()

class Submitter(Protocol):
    """Who submitted a command: told how many of its commands still wait for a commit."""

    in_flight: int


class Batch:
    """Commands applied in memory and waiting for one commit.

    Callers park on the batch itself rather than on a `trio.Event`: one coroutine frame and
    one abort closure less per waiting command, on the path every debit takes.
    """

    __slots__ = ("_waiting", "accounts", "done", "error", "keys", "records", "submitters")

    def __init__(self) -> None:
        # Keyed by the user id's integer: UUID's own __hash__ is a Python-level call.
        self.accounts: dict[int, Account] = {}
        self.records: list[AnyRecord] = []
        self.keys: list[tuple[tuple[str, str], Keyed]] = []
        self.submitters: list[Submitter] = []
        self.done = False
        self.error: BaseException | None = None
        self._waiting: dict[trio.lowlevel.Task, None] = {}

    @property
    def commands(self) -> int:
        return len(self.submitters)

    async def wait(self) -> None:
        """Return once this batch is durable; raise EngineStopped if it never will be.

        A batch already done returns without a scheduler round trip: a batch request settles
        up to 1000 replies, most of them durable by then.
        """
        if not self.done:
            task = trio.lowlevel.current_task()
            waiting = self._waiting
            waiting[task] = None

            def abort(_: object) -> trio.lowlevel.Abort:
                del waiting[task]
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.error is not None:
            raise EngineStopped(f"storage failed, the engine stopped: {self.error}")

    def finish(self, error: BaseException | None) -> None:
        """Mark the batch durable (or failed) and wake everyone waiting for it."""
        self.error = error
        self.done = True
        reschedule = trio.lowlevel.reschedule
        for task in self._waiting:
            reschedule(task)
        self._waiting.clear()


class Journal:
    def __init__(
        self,
        store: Store,
        *,
        pending_commands_max: int = JOURNAL_PENDING_COMMANDS_MAX,
        export: bool = False,
    ) -> None:
        self._store = store
        # Write Lago outbox rows for usage events (only while an exporter drains them).
        self._export = export
        self._pending_commands_max = pending_commands_max
        # Told of every batch once it is durable, with the commit's duration in seconds.
        self.listeners: list[Callable[[Batch, float], None]] = []
        self._open = Batch()
        self._committing: Batch | None = None
        # Commands of the batch being committed, 0 once it is done (checked on every submit).
        self._committing_commands = 0
        self._wake = trio.Event()
        self._inflight: dict[tuple[str, str], Keyed] = {}
        self._closing = False
        self.failure: BaseException | None = None
        self.commits = 0
        # Shared with backups: nothing may copy the environment while the map is resized.
        self.exclusive = trio.Lock()
        self.checkpoints = 0
        # CPU seconds the worker threads spent committing and checkpointing (thread time, so
        # waits for the disk or the GIL are not counted): the engine bench and /metrics.
        self.commit_cpu_s = 0.0
        self.checkpoint_cpu_s = 0.0
        # Told the duration in seconds of every checkpoint.
        self.checkpoint_listeners: list[Callable[[float], None]] = []

    # --- the side the actors use (synchronous: no checkpoint between decide and submit) ----

    def check_accepting(self, commands: int = 1) -> None:
        """Raise unless `commands` more commands may be submitted now."""
        if self.failure is not None or self._closing:
            raise EngineStopped("the engine is not accepting writes")
        if (len(self._open.submitters) + self._committing_commands + commands
                > self._pending_commands_max):
            raise Overloaded("the journal is full; retry shortly")

    def submit(
        self,
        submitter: Submitter,
        account: Account | None,
        records: Iterable[AnyRecord],
        keyed: Iterable[Keyed] = (),
    ) -> Batch:
        """Queue a command's effects; the returned batch tells when they are durable."""
        self.check_accepting()
        batch = self._open
        batch.submitters.append(submitter)
        submitter.in_flight += 1
        if account is not None:
            batch.accounts[account.user_id.int] = account
        batch.records.extend(records)
        for record in keyed:
            key = (record.scope, record.key)
            batch.keys.append((key, record))
            self._inflight[key] = record
        if len(batch.submitters) == 1:
            self._wake.set()  # the writer waits only while the open batch is empty
        return batch

    def pending_barrier(self) -> Batch | None:
        """The batch whose commit makes everything submitted so far durable (None: all is)."""
        if self._open.commands:
            return self._open
        committing = self._committing
        return committing if committing is not None and not committing.done else None

    def inflight_outcome(self, scope: str, key: str) -> Keyed | None:
        """A key applied in memory but not yet committed (so not yet visible in storage)."""
        return self._inflight.get((scope, key))

    @property
    def checkpoint_lag_s(self) -> float:
        """Age of the oldest logged write not yet in the indexes (bounded by the checkpoint
        interval plus one checkpoint while the checkpointer keeps up)."""
        return self._store.checkpoint_lag_s()

    @property
    def log_writes_waiting(self) -> int:
        """Writes durable in the log and not yet checkpointed into the indexes."""
        return self._store.log_report()[2]

    @property
    def pending_commands(self) -> int:
        return len(self._open.submitters) + self._committing_commands

    # --- the writer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._open.commands:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            batch = self._open
            self._open = Batch()
            self._committing = batch
            self._committing_commands = batch.commands
            # A started commit always finishes: cancelling it would leave callers guessing.
            with trio.CancelScope(shield=True):
                await self._commit(batch)
            if self.failure is not None:
                self._finish(self._open, self.failure)
                return

    async def _commit(self, batch: Batch) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        outbox = [
            row for record in batch.records for row in outbox_rows(record)
        ] if self._export else []
        stored: list[StoredRecord] = [record for record in batch.records
                                      if not isinstance(record, OutboxOnly)]
        try:
            await trio.to_thread.run_sync(
                self._commit_on_thread, CommitBatch(list(batch.accounts.values()), stored,
                                                    outbox))
        except BaseException as failure:  # any failure: fail-stop, never guess
            error = failure
            self.failure = failure
        self._finish(batch, error)
        if error is None:
            self.commits += 1
            seconds = time.perf_counter() - started
            for listener in self.listeners:
                listener(batch, seconds)

    def _commit_on_thread(self, batch: CommitBatch) -> None:
        started = time.thread_time()
        try:
            self._store.commit(batch)
        finally:
            self.commit_cpu_s += time.thread_time() - started

    def _checkpoint_on_thread(self) -> None:
        started = time.thread_time()
        try:
            self._store.checkpoint()
        finally:
            self.checkpoint_cpu_s += time.thread_time() - started

    def _finish(self, batch: Batch, error: BaseException | None) -> None:
        for key, record in batch.keys:
            # A later batch may hold a newer version of the same key: leave that one.
            if self._inflight.get(key) is record:
                del self._inflight[key]
        for submitter in batch.submitters:
            submitter.in_flight -= 1
        if batch is self._committing:
            self._committing_commands = 0
        batch.finish(error)

    # --- the checkpoint task ----------------------------------------------------------------

    async def run_checkpoints(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while self.failure is None:
            await trio.sleep(CHECKPOINT_CHECK_S)
            if self._store.checkpoint_due():
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Checkpoint now; a failure stops the engine like a failed commit."""
        started = time.perf_counter()
        try:
            async with self.exclusive:
                await self._checkpoint_growing()
        except BaseException as failure:
            self.failure = self.failure or failure
            raise
        self.checkpoints += 1
        for listener in self.checkpoint_listeners:
            listener(time.perf_counter() - started)

    async def _checkpoint_growing(self) -> None:
        for _ in range(MAP_GROWTH_ATTEMPTS_MAX):
            if self._store.needs_growth():
                # On the trio thread between reads: no LMDB transaction is open in-process.
                self._store.grow()
            try:
                await trio.to_thread.run_sync(self._checkpoint_on_thread)
                return
            except MapFull:
                self._store.grow()
        raise StoreError("LMDB map still full after growing it")

    async def close(self) -> None:
        """Stop taking commands; return once everything submitted is durable (or failed)."""
        self._closing = True
        self._wake.set()
        barrier = self.pending_barrier()
        if barrier is not None:
            try:
                await barrier.wait()
            except EngineStopped:
                return  # a failed commit already stopped the journal: nothing more to wait for
