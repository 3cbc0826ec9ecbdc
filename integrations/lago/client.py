"""Lago's HTTP API, the calls the exporter makes (httpx, one pooled connection set)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

LAGO_REQUEST_TIMEOUT_S = 10.0
LAGO_CONNECTIONS_MAX = 8


class LagoClient:
    """`POST /api/v1/events/batch` and `POST /api/v1/customers` with Bearer auth. Answers are
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

    async def upsert_customer(self, row: dict[str, Any]) -> httpx.Response:
        """`row` is an outbox row `{"customer": {...}}`, Lago's CustomerCreateInput."""
        return await self._client.post("/api/v1/customers", json=row)

    async def aclose(self) -> None:
        await self._client.aclose()
