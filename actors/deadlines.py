"""The one scheduler of time-driven work: reservation expiry, subscription deadlines, lot
expiry and auto-refill attempts (engine/deadlines.py says where deadlines come from).

Deadlines reach it after their commit (the journal hands over each batch's records) and, at
start and every `REFRESH_S` of wall-clock time, from the store's index ordered by due time,
read from the start and stopped at the first row beyond `HORIZON_MS`: so memory and start-up
cost follow the work due soon, not the number of accounts. A due deadline becomes a command
for the account's actor (`COMMAND_FOR`), or goes to the handler an integration registered for
its kind.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Callable, Iterable

import trio

from actors.journal import Batch
from actors.system import ActorSystem, Pending, WallClock
from engine.deadlines import Deadline, DeadlineKind
from engine.errors import BillingError, EngineStopped
from engine.expiring import NoticeExpiringLot, lot_of_notice
from engine.expiry import ExpireLots
from engine.reservations import ExpireReservation
from engine.subscriptions import SweepSubscription
from engine.transitions import AnyCommand
from storage.store import Store

log = logging.getLogger("zbilling.deadlines")

# Deadlines due within this time are kept in memory; later ones stay in the index.
HORIZON_MS = 15 * 60 * 1000
# How often (by the wall clock) the index is read again for deadlines that came within the
# horizon.
REFRESH_S = 60.0
assert REFRESH_S * 1000 < HORIZON_MS, "a deadline must be loaded before it is due"
# The longest sleep between looks at the wall clock: it may jump (a stepped system clock, a
# test's moved clock), and what became due then is acted on within this time.
WAKE_MAX_S = 1.0
assert WAKE_MAX_S <= REFRESH_S
# Replaced or dropped deadlines leave stale heap rows; compact when they outnumber live ones.
HEAP_SLACK_ENTRIES = 1024

COMMAND_FOR: dict[DeadlineKind, Callable[[Deadline], AnyCommand]] = {
    DeadlineKind.RESERVATION_EXPIRY: lambda due: ExpireReservation(due.user_id, due.key),
    DeadlineKind.SUBSCRIPTION: lambda due: SweepSubscription(due.user_id),
    DeadlineKind.LOT_EXPIRY: lambda due: ExpireLots(due.user_id),
    DeadlineKind.LOT_EXPIRY_NOTICE: lambda due: NoticeExpiringLot(due.user_id,
                                                                  lot_of_notice(due.key)),
}
Handler = Callable[[Deadline], None]
_Name = tuple[DeadlineKind, str]


class Deadlines:
    def __init__(self, system: ActorSystem, store: Store, wall_clock_ms: WallClock) -> None:
        self._system = system
        self._store = store
        self._wall_clock_ms = wall_clock_ms
        self._heap: list[tuple[int, DeadlineKind, str]] = []
        self._armed: dict[_Name, Deadline] = {}
        self._handlers: dict[DeadlineKind, Handler] = {}
        self._changed = trio.Event()
        self._loaded_at_ms = 0
        # kind -> deadlines that came due and were acted on (for metrics and tests).
        self.fired: Counter[str] = Counter()

    @property
    def armed(self) -> int:
        return len(self._armed)

    def handle(self, kind: DeadlineKind, handler: Handler) -> None:
        """Let `handler` (synchronous; it starts its own work) take due deadlines of `kind`."""
        if kind in COMMAND_FOR:
            raise ValueError(f"{kind} deadlines are commands")
        self._handlers[kind] = handler
        # Those found due before the handler came (at start) were left in the index.
        self.load()

    def committed(self, batch: Batch, _seconds: float) -> None:
        """The journal's hook: arm the deadlines of a batch that is now durable."""
        self.observe(record for record in batch.records if type(record) is Deadline)

    def observe(self, deadlines: Iterable[Deadline]) -> None:
        limit_ms = self._wall_clock_ms() + HORIZON_MS
        for deadline in deadlines:
            name = (deadline.kind, deadline.key)
            if deadline.due_ms is None or deadline.due_ms >= limit_ms:
                # Done, or far off: a refresh loads it from the index when it comes near.
                self._armed.pop(name, None)
            else:
                self._push(name, deadline, deadline.due_ms)

    def remind(self, deadline: Deadline) -> None:
        """Wake for `deadline` at its time without storing it (a worker's retry backoff)."""
        assert deadline.due_ms is not None
        self._push((deadline.kind, deadline.key), deadline, deadline.due_ms)

    def _push(self, name: _Name, deadline: Deadline, due_ms: int) -> None:
        self._armed[name] = deadline
        heapq.heappush(self._heap, (due_ms, *name))
        if len(self._heap) > 2 * len(self._armed) + HEAP_SLACK_ENTRIES:
            self._heap = [(armed.due_ms or 0, *key) for key, armed in self._armed.items()]
            heapq.heapify(self._heap)
        self._changed.set()

    def load(self) -> None:
        """Arm what the index holds within the horizon (at start, and on each refresh)."""
        self._loaded_at_ms = self._wall_clock_ms()
        self.observe(self._store.iter_deadlines(self._loaded_at_ms + HORIZON_MS))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.load()
        task_status.started()
        await self._fire_due()

    async def _fire_due(self) -> None:
        """Act on due deadlines until the engine stops. All that are due at once are decided
        together and then waited for, so they share group commits."""
        while True:
            if self._wall_clock_ms() - self._loaded_at_ms >= REFRESH_S * 1000:
                self.load()
            due = self._pop_due()
            if not due:
                await self._sleep_until_next()
                continue
            pending: list[tuple[Deadline, Pending]] = []
            for deadline in due:
                handler = self._handlers.get(deadline.kind)
                if handler is not None:
                    handler(deadline)
                elif deadline.kind in COMMAND_FOR:
                    command = COMMAND_FOR[deadline.kind](deadline)
                    pending.append((deadline, self._system.apply_now(command)))
                else:
                    continue  # nobody takes this kind here (say, Stripe is off): it stays stored
                self.fired[deadline.kind.value] += 1
            for deadline, decided in pending:
                try:
                    await decided.settle()
                except EngineStopped:
                    log.error("engine stopped: the deadline scheduler halts")
                    return
                except BillingError as error:
                    log.warning("%s deadline of %s failed: %s", deadline.kind.value,
                                deadline.key, error.message)

    def _pop_due(self) -> list[Deadline]:
        now_ms = self._wall_clock_ms()
        due: list[Deadline] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due_ms, kind, key = heapq.heappop(heap)
            armed = self._armed.get((kind, key))
            if armed is None or armed.due_ms != due_ms:
                continue  # dropped or moved since
            del self._armed[kind, key]
            due.append(armed)
        return due

    async def _sleep_until_next(self) -> None:
        delay_s = (self._heap[0][0] - self._wall_clock_ms()) / 1000 if self._heap else WAKE_MAX_S
        with trio.move_on_after(min(delay_s, WAKE_MAX_S)):
            await self._changed.wait()
        self._changed = trio.Event()
