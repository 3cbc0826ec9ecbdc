"""The Lago exporter: drains the outbox in order, in batches, and never loses or doubles an
event. The cursor moves only over events Lago accepted or that were parked as dead letters
(refused on their own); everything else is retried with backoff until it goes through.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from actors.journal import Journal
from engine.errors import EngineStopped
from engine.export import OutboxAck, ParkedEvent
from integrations.lago.client import LagoClient
from storage.store import Store

log = logging.getLogger("zbilling.lago")

LAGO_BATCH_EVENTS_MAX = 100
EXPORT_REQUESTS_IN_FLIGHT_MAX = 4
EXPORT_POLL_S = 0.05
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
REASON_LENGTH_MAX = 2000
_RETRYABLE = frozenset({408, 409, 425, 429})

Rows = list[tuple[int, dict[str, Any]]]
Sender = Callable[[Rows], Awaitable[httpx.Response]]


class LagoExporter:
    def __init__(self, store: Store, journal: Journal, client: LagoClient) -> None:
        self._store = store
        self._journal = journal
        self._client = client
        self._random = random.Random()
        self.in_flight = 0  # commands waiting for a commit (the journal's Submitter)
        self.exported = 0
        self.batches = 0
        self.parked = 0
        self.failures: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        cursor = self._store.export_cursor()
        while True:
            rows = self._store.read_outbox(
                cursor, LAGO_BATCH_EVENTS_MAX * EXPORT_REQUESTS_IN_FLIGHT_MAX
            )
            if not rows:
                await trio.sleep(EXPORT_POLL_S)
                continue
            try:
                cursor = await self._export_round(rows)
            except EngineStopped:
                # Shutting down or fail-stopped: the round's rows stay in the outbox and are
                # sent again on the next start (Lago deduplicates them by transaction id).
                log.info("engine stopped taking writes: export paused")
                return

    async def _export_round(self, rows: Rows) -> int:
        """Send up to EXPORT_REQUESTS_IN_FLIGHT_MAX batches at once; when every one is
        accepted or parked, commit the new cursor. Lago orders events by their timestamps,
        so batches within a round may land in any order."""
        parked: list[ParkedEvent] = []
        # A customer row precedes its account's events and subscriptions in the outbox;
        # sending the round's customers and subscriptions first, in order, keeps that order.
        events = [row for row in rows if "transaction_id" in row[1]]
        for resource in (row for row in rows if "transaction_id" not in row[1]):
            await self._deliver([resource], parked, self._send_resource)
        async with trio.open_nursery() as nursery:
            for start in range(0, len(events), LAGO_BATCH_EVENTS_MAX):
                nursery.start_soon(self._deliver, events[start:start + LAGO_BATCH_EVENTS_MAX],
                                   parked, self._send_events)
        last = rows[-1][0]
        await self._journal.submit(self, None, [OutboxAck(last, tuple(parked))]).wait()
        self.exported += len(rows) - len(parked)
        self.parked += len(parked)
        return last

    async def _send_events(self, rows: Rows) -> httpx.Response:
        return await self._client.send_events([event for _, event in rows])

    async def _send_resource(self, rows: Rows) -> httpx.Response:
        (_, resource), = rows
        return await self._client.send_resource(resource)

    async def _deliver(self, rows: Rows, parked: list[ParkedEvent], send: Sender) -> None:
        """Deliver rows until accepted; a row refused on its own is isolated by halving the
        batch and parked with Lago's answer."""
        backoff_s = BACKOFF_INITIAL_S
        while True:
            wait_s = backoff_s
            try:
                response = await send(rows)
            except httpx.TimeoutException:
                self.failures["timeout"] += 1
            except httpx.TransportError:
                self.failures["connection"] += 1
            else:
                status = response.status_code
                if status < 300:
                    self.batches += 1
                    return
                if status in (401, 403):
                    # Our key is wrong: a configuration fault, never the events' fault.
                    self.failures["auth"] += 1
                elif status >= 500 or status in _RETRYABLE:
                    self.failures["rate_limited" if status == 429 else "server_error"] += 1
                    wait_s = max(wait_s, _retry_after_s(response))
                else:
                    self.failures["rejected"] += 1
                    await self._isolate(rows, response, parked, send)
                    return
            await trio.sleep(wait_s * (0.5 + self._random.random()))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _isolate(
        self, rows: Rows, response: httpx.Response, parked: list[ParkedEvent], send: Sender
    ) -> None:
        if len(rows) == 1:
            sequence, event = rows[0]
            if _already_stored(response):
                # Lago has this transaction id: an earlier attempt landed (its answer was
                # lost). Delivered, not refused.
                self.batches += 1
                return
            log.warning("Lago refused event %s (%s): parked", event.get("transaction_id"),
                        response.status_code)
            parked.append(ParkedEvent(sequence, event, response.status_code,
                                      response.text[:REASON_LENGTH_MAX]))
            return
        middle = len(rows) // 2
        await self._deliver(rows[:middle], parked, send)
        await self._deliver(rows[middle:], parked, send)

    def lag_s(self, now_ms: int) -> float:
        """Age of the oldest event not yet exported (0 when the outbox is empty)."""
        rows = self._store.read_outbox(self._store.export_cursor(), 1)
        if not rows or "timestamp" not in rows[0][1]:
            return 0.0
        timestamp = str(rows[0][1]["timestamp"])
        seconds, _, millis = timestamp.partition(".")
        return max(0.0, (now_ms - (int(seconds) * 1000 + int(millis or 0))) / 1000)


def lago_exporter(client: LagoClient) -> Callable[[Store, Journal], LagoExporter]:
    """The factory `open_billing(exporter=...)` takes: export to Lago through `client`."""
    return lambda store, journal: LagoExporter(store, journal, client)


def _already_stored(response: httpx.Response) -> bool:
    """Lago's answer to a transaction id it already has: 422 `value_already_exist`."""
    if response.status_code != 422:
        return False
    try:
        details = response.json().get("error_details", {})
    except ValueError:
        return False
    problems = [details] if "transaction_id" in details else list(details.values())
    return bool(problems) and all(
        isinstance(problem, dict)
        and problem.get("transaction_id") == ["value_already_exist"]
        and len(problem) == 1
        for problem in problems
    )


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(float(value), RETRY_AFTER_MAX_S)
    except ValueError:
        return 0.0
