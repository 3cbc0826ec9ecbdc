"""Outbound webhook delivery: one task per endpoint drains the webhook outbox past that
endpoint's durable cursor, in order (so in order per account), one event per POST, signed
like Stripe (`t=…,v1=HMAC-SHA256(secret, "t.body")`). A failed delivery is retried with
exponential backoff and jitter while the event is younger than the retry window, then parked
(dead letter, re-sent by `zbilling webhooks resend`). The cursor moves only after the
endpoint answered 2xx (or the event was parked): delivery is at least once, with a stable
event id for receivers to drop repeats. Runs beside the engine; never on a debit's path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.system import WallClock
from actors.webhooks import Webhooks
from engine.errors import EngineStopped
from engine.webhooks import ParkedWebhook, WebhookAck, WebhookEndpoint

log = logging.getLogger("zbilling.webhooks")

SIGNATURE_HEADER = "Z-Billing-Signature"
EVENT_ID_HEADER = "Z-Billing-Event-Id"
USER_AGENT = "z-billing-webhooks/1"
REQUEST_TIMEOUT_S = 10.0
RETRY_BASE_S_DEFAULT = 10.0
RETRY_INTERVAL_MAX_S = 3600.0
RETRY_WINDOW_MS_DEFAULT = 72 * 3600 * 1000
# How often new endpoints and new events are looked for.
POLL_S = 0.05
ROWS_PER_READ = 100
# Metrics count at most this many waiting events per endpoint (a scrape stays cheap).
QUEUED_COUNTED_MAX = 10_000
ERROR_LENGTH_MAX = 500

_encoder = msgspec.json.Encoder()


def signature(secrets: tuple[str, ...], timestamp_s: int, body: bytes) -> str:
    """The signature header: one `v1` per secret (two while a rotation overlaps)."""
    signed = f"{timestamp_s}.".encode() + body
    parts = [f"t={timestamp_s}"] + [
        "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        for secret in secrets]
    return ",".join(parts)


class WebhookDelivery:
    def __init__(self, webhooks: Webhooks, wall_clock_ms: WallClock, *,
                 retry_base_s: float = RETRY_BASE_S_DEFAULT,
                 retry_window_ms: int = RETRY_WINDOW_MS_DEFAULT,
                 registry: CollectorRegistry | None = None) -> None:
        self._webhooks = webhooks
        self._wall_clock_ms = wall_clock_ms
        self._retry_base_s = retry_base_s
        self._retry_window_ms = retry_window_ms
        self._random = random.Random()
        self.delivered = 0
        self.failed = 0
        self.parked = 0
        self.paused = False  # the engine stopped taking writes
        if registry is not None:
            registry.register(_DeliveryCollector(self))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        running: set[str] = set()
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, headers=headers,
                                     follow_redirects=False) as client:
            task_status.started()
            async with trio.open_nursery() as nursery:
                while not self.paused:
                    for endpoint_id in self._webhooks.endpoint_ids():
                        if endpoint_id not in running:
                            running.add(endpoint_id)
                            nursery.start_soon(self._serve, client, endpoint_id, running)
                    await trio.sleep(POLL_S)

    async def _serve(self, client: httpx.AsyncClient, endpoint_id: str,
                     running: set[str]) -> None:
        """Deliver the endpoint's events in order until it is removed (or the engine stops
        taking writes: the cursor cannot move, so the events wait for the next start)."""
        try:
            endpoint = self._webhooks.endpoint(endpoint_id)
            position = endpoint.cursor if endpoint is not None else 0
            while endpoint is not None:
                rows = self._webhooks.outbox_after(position, ROWS_PER_READ)
                if not rows:
                    await trio.sleep(POLL_S)
                for sequence, row in rows:
                    endpoint = self._webhooks.endpoint(endpoint_id)
                    if endpoint is None:
                        return
                    parked = await self._deliver(client, endpoint, sequence, row)
                    await self._webhooks.acknowledge(
                        WebhookAck(endpoint_id, sequence, parked)).wait()
                    position = sequence
                endpoint = self._webhooks.endpoint(endpoint_id)
        except EngineStopped:
            # No cursor can move any more: start no task again (events wait for a restart).
            self.paused = True
            log.info("engine stopped taking writes: delivery to %s paused", endpoint_id)
        finally:
            running.discard(endpoint_id)

    async def _deliver(self, client: httpx.AsyncClient, endpoint: WebhookEndpoint,
                       sequence: int, row: dict[str, Any]) -> tuple[ParkedWebhook, ...]:
        """Send one event until it is taken; return it parked if the window closed first."""
        event = row["event"]
        only = row.get("only")
        if (only is not None and only != endpoint.endpoint_id) or (
                only is None and not endpoint.wants(event["type"])):
            return ()
        body = _encoder.encode(event)
        attempts = 0
        while True:
            attempts += 1
            error = await self._post(client, endpoint, event["id"], body)
            if error is None:
                self.delivered += 1
                return ()
            self.failed += 1
            age_ms = self._wall_clock_ms() - int(event["created_at_ms"])
            if age_ms >= self._retry_window_ms:
                self.parked += 1
                log.warning("webhook %s to %s parked after %d attempts: %s", event["id"],
                            endpoint.endpoint_id, attempts, error)
                return (ParkedWebhook(endpoint.endpoint_id, sequence, event, attempts,
                                      error[:ERROR_LENGTH_MAX]),)
            delay_s = min(self._retry_base_s * 2 ** (attempts - 1), RETRY_INTERVAL_MAX_S)
            await trio.sleep(delay_s * (0.5 + self._random.random()))
            refreshed = self._webhooks.endpoint(endpoint.endpoint_id)
            if refreshed is None:
                return ()  # removed while retrying: nobody to deliver to
            endpoint = refreshed  # a rotated secret signs the next attempt

    async def _post(self, client: httpx.AsyncClient, endpoint: WebhookEndpoint,
                    event_id: str, body: bytes) -> str | None:
        """None when the endpoint took the event (2xx), else what went wrong."""
        headers = {SIGNATURE_HEADER: signature(endpoint.secrets(self._wall_clock_ms()),
                                               int(time.time()), body),
                   EVENT_ID_HEADER: event_id}
        try:
            response = await client.post(endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as failure:
            return f"connection: {type(failure).__name__}"
        except Exception as failure:
            # An attempt's failure (a name that does not resolve, a URL httpx refuses) is
            # that attempt's: retried, then parked, never the delivery task's or the server's.
            return f"request: {type(failure).__name__}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"

    def backlog(self) -> tuple[int, float]:
        """(events waiting over all endpoints, age in seconds of the oldest), counted up to
        QUEUED_COUNTED_MAX per endpoint."""
        waiting = 0
        oldest: int | None = None
        for endpoint_id in self._webhooks.endpoint_ids():
            endpoint = self._webhooks.endpoint(endpoint_id)
            if endpoint is None:
                continue
            for _, row in self._webhooks.outbox_after(endpoint.cursor, QUEUED_COUNTED_MAX):
                only, event = row.get("only"), row["event"]
                if only == endpoint_id or (only is None and endpoint.wants(event["type"])):
                    waiting += 1
                    created = int(event["created_at_ms"])
                    oldest = created if oldest is None else min(oldest, created)
        age_s = 0.0 if oldest is None else max(0.0, (self._wall_clock_ms() - oldest) / 1000)
        return waiting, age_s


class _DeliveryCollector(Collector):
    def __init__(self, delivery: WebhookDelivery) -> None:
        self._delivery = delivery

    def collect(self) -> Iterator[Metric]:
        delivery = self._delivery
        outcomes = CounterMetricFamily("zbilling_webhook_deliveries",
                                       "Outbound webhook delivery attempts by outcome",
                                       labels=["outcome"])
        for outcome, value in (("delivered", delivery.delivered), ("failed", delivery.failed),
                               ("parked", delivery.parked)):
            outcomes.add_metric([outcome], value)
        yield outcomes
        waiting, age_s = delivery.backlog()
        queued = GaugeMetricFamily("zbilling_webhook_queued",
                                   "Webhook events waiting for delivery, over all endpoints")
        queued.add_metric([], waiting)
        yield queued
        age = GaugeMetricFamily("zbilling_webhook_oldest_age_seconds",
                                "Age of the oldest webhook event not yet delivered")
        age.add_metric([], age_s)
        yield age
