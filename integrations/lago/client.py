"""Lago's HTTP API, the calls the exporter makes (httpx, one pooled connection set)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

LAGO_REQUEST_TIMEOUT_S = 10.0
LAGO_CONNECTIONS_MAX = 8


class LagoClient:
    """Lago's events, customers and subscriptions endpoints, with Bearer auth. Answers are
    returned, not raised: the exporter decides what each status means."""

    def __init__(self, api_url: str, api_key: str, *, timeout_s: float = LAGO_REQUEST_TIMEOUT_S
                 ) -> None:
        self._client = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=LAGO_CONNECTIONS_MAX,
                                max_keepalive_connections=LAGO_CONNECTIONS_MAX),
        )

    async def send_events(self, events: Sequence[dict[str, Any]]) -> httpx.Response:
        return await self._client.post("/api/v1/events/batch", json={"events": list(events)})

    async def send_resource(self, row: dict[str, Any]) -> httpx.Response:
        """One outbox row that is not an event: `{"customer": …}` (CustomerCreateInput),
        `{"subscription": …}` (SubscriptionCreateInput) or `{"terminate_subscription":
        {"external_id"}}`. Terminating one Lago no longer has is done, not an error."""
        if "terminate_subscription" in row:
            external_id = quote(row["terminate_subscription"]["external_id"], safe="")
            response = await self._client.delete(f"/api/v1/subscriptions/{external_id}")
            if response.status_code == 404:
                return httpx.Response(200, request=response.request)
            return response
        path = "/api/v1/customers" if "customer" in row else "/api/v1/subscriptions"
        return await self._client.post(path, json=row)

    async def aclose(self) -> None:
        await self._client.aclose()
