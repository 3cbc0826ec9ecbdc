"""Reservation expiry: one task, one heap of deadlines, re-armed from storage at start."""

from __future__ import annotations

import heapq
import logging

import trio

from actors.system import ActorSystem, WallClock
from engine.errors import BillingError, EngineStopped
from engine.ids import UserId
from engine.reservations import ExpireReservation

log = logging.getLogger("zbilling.timers")

# Closed reservations leave stale heap entries behind; compact when they outnumber live ones.
TIMER_HEAP_SLACK_ENTRIES = 1024


class ExpiryTimers:
    def __init__(self, system: ActorSystem, wall_clock_ms: WallClock) -> None:
        self._system = system
        self._wall_clock_ms = wall_clock_ms
        self._heap: list[tuple[int, str]] = []
        self._armed: dict[str, tuple[int, UserId]] = {}
        self._changed = trio.Event()
        self.expired = 0

    @property
    def armed(self) -> int:
        return len(self._armed)

    def arm(self, reservation_id: str, user_id: UserId, expires_at_ms: int) -> None:
        self._armed[reservation_id] = (expires_at_ms, user_id)
        heapq.heappush(self._heap, (expires_at_ms, reservation_id))
        if len(self._heap) > 2 * len(self._armed) + TIMER_HEAP_SLACK_ENTRIES:
            self._heap = [(at, rid) for rid, (at, _) in self._armed.items()]
            heapq.heapify(self._heap)
        self._changed.set()

    def disarm(self, reservation_id: str) -> None:
        self._armed.pop(reservation_id, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._heap:
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            expires_at_ms, reservation_id = self._heap[0]
            armed = self._armed.get(reservation_id)
            if armed is None or armed[0] != expires_at_ms:
                heapq.heappop(self._heap)  # closed or re-armed since
                continue
            delay_s = (expires_at_ms - self._wall_clock_ms()) / 1000
            if delay_s > 0:
                with trio.move_on_after(delay_s):
                    await self._changed.wait()
                    self._changed = trio.Event()
                continue
            heapq.heappop(self._heap)
            del self._armed[reservation_id]
            if not await self._expire(reservation_id, armed[1]):
                return

    async def _expire(self, reservation_id: str, user_id: UserId) -> bool:
        """Expire one hold; False once the engine has stopped (fail-stop: no more writes)."""
        try:
            reply = await self._system.execute(ExpireReservation(user_id, reservation_id))
        except EngineStopped:
            log.error("engine stopped: reservation expiry halted")
            return False
        except BillingError as error:
            log.warning("expiring reservation %s failed: %s", reservation_id, error.message)
            return True
        if reply is not None:
            self.expired += 1
        return True
