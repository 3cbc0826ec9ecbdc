"""Route declarations: the one list both the server and `/openapi.json` are built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import msgspec


class Caller(StrEnum):
    """Who may call a route, and how they prove it."""

    PUBLIC = "public"
    METRICS = "metrics"  # a bearer token when METRICS_TOKEN is set
    USER = "user"  # a ZID JWT (or a dev test token)
    SERVICE = "service"  # X-API-Key with the usage scope
    ADMIN = "admin"  # X-Admin-Key, or a service key with the admin scope


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /v1/reservations/{reservation_id}
    summary: str
    caller: Caller
    body: type[msgspec.Struct] | None = None
    reply: type[msgspec.Struct] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    msgpack: bool = False
    parameters: tuple[str, ...] = ()  # query parameters, documented as they are parsed
    media_type: str = "application/json"
    owner: str | None = None  # a later capability: answers 503 not_configured until then
    headers: tuple[str, ...] = field(default=())

    @property
    def rule(self) -> str:
        """The same path in Quart's routing syntax."""
        return self.path.replace("{", "<").replace("}", ">")
