"""`Webhooks`: the operators' outbound webhook endpoints (register, list, rotate the signing
secret, remove) and their parked events (list, re-send). Endpoints belong to no account: their
records go through the journal like the operator's other records."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from actors.journal import OPERATOR, Batch, Journal
from actors.system import WallClock
from engine.errors import Conflict, NotFound
from engine.ids import parse_key
from engine.webhooks import (
    ENDPOINTS_MAX,
    SECRET_OVERLAP_MS,
    ParkedWebhook,
    RequeueWebhooks,
    WebhookAck,
    WebhookEndpoint,
    validated_event_types,
    validated_url,
)
from storage.store import Store

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
ENDPOINT_ID_PREFIX = "we_"


class Webhooks:
    def __init__(self, store: Store, journal: Journal, wall_clock_ms: WallClock) -> None:
        self._store = store
        self._journal = journal
        self._wall_clock_ms = wall_clock_ms

    async def create(self, url: str, event_types: Sequence[str]) -> WebhookEndpoint:
        """Register an endpoint; the reply carries its signing secret, never shown again."""
        endpoint = WebhookEndpoint(
            endpoint_id=ENDPOINT_ID_PREFIX + secrets.token_hex(8),
            url=validated_url(url),
            event_types=validated_event_types(event_types),
            secret=_new_secret(),
            created_at_ms=self._wall_clock_ms(),
        )
        if len(self._store.webhook_endpoints()) >= ENDPOINTS_MAX:
            raise Conflict(f"at most {ENDPOINTS_MAX} webhook endpoints", {"field": "url"})
        return await self._put(endpoint)

    async def endpoints(self) -> list[WebhookEndpoint]:
        await self._durable()
        return sorted(self._store.webhook_endpoints(), key=lambda endpoint: endpoint.created_at_ms)

    async def rotate(self, endpoint_id: str) -> WebhookEndpoint:
        """A new secret; the old one keeps signing beside it for SECRET_OVERLAP_MS."""
        known = await self._known(endpoint_id)
        now_ms = self._wall_clock_ms()
        rotated = WebhookEndpoint(known.endpoint_id, known.url, known.event_types, _new_secret(),
                                  known.created_at_ms, known.secret, now_ms + SECRET_OVERLAP_MS)
        return await self._put(rotated)

    async def delete(self, endpoint_id: str) -> WebhookEndpoint:
        known = await self._known(endpoint_id)
        gone = WebhookEndpoint(known.endpoint_id, known.url, known.event_types, "",
                               known.created_at_ms, deleted=True)
        await self._journal.submit(OPERATOR, None, [gone]).wait()
        return known

    async def dead_letters(self, endpoint_id: str | None = None) -> list[ParkedWebhook]:
        await self._durable()
        return self._store.webhook_dead_letters(endpoint_id)

    async def resend(self, endpoint_id: str, sequences: Sequence[int] | None = None) -> int:
        """Put parked events (all of the endpoint's, or those named) back in the outbox for
        this endpoint alone; returns how many."""
        await self._known(endpoint_id)
        parked = {letter.sequence for letter in self._store.webhook_dead_letters(endpoint_id)}
        wanted = tuple(sorted(parked if sequences is None else parked & set(sequences)))
        if wanted:
            await self._journal.submit(OPERATOR, None,
                                       [RequeueWebhooks(endpoint_id, wanted)]).wait()
        return len(wanted)

    # --- for the delivery task (synchronous: not served to HTTP workers) ---------------------

    def endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint as last committed (None: removed)."""
        return next((found for found in self._store.webhook_endpoints()
                     if found.endpoint_id == endpoint_id), None)

    def endpoint_ids(self) -> list[str]:
        return [endpoint.endpoint_id for endpoint in self._store.webhook_endpoints()]

    def outbox_after(self, sequence: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        return self._store.read_webhooks(sequence, limit)

    def acknowledge(self, ack: WebhookAck) -> Batch:
        """Move an endpoint's cursor (and park what it did not take); wait on the batch."""
        return self._journal.submit(OPERATOR, None, [ack])

    async def _put(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        await self._journal.submit(OPERATOR, None, [endpoint]).wait()
        stored = next(found for found in self._store.webhook_endpoints()
                      if found.endpoint_id == endpoint.endpoint_id)
        return stored

    async def endpoint_named(self, endpoint_id: str) -> WebhookEndpoint:
        """The endpoint, or NotFound."""
        return await self._known(endpoint_id)

    async def _known(self, endpoint_id: str) -> WebhookEndpoint:
        endpoint_id = parse_key("endpoint_id", endpoint_id)
        await self._durable()
        for endpoint in self._store.webhook_endpoints():
            if endpoint.endpoint_id == endpoint_id:
                return endpoint
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", {"endpoint_id": endpoint_id})

    async def _durable(self) -> None:
        """Reads after every change submitted so far is committed (an endpoint just put)."""
        barrier = self._journal.pending_barrier()
        if barrier is not None:
            await barrier.wait()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)

