"""Route declarations: the one list both the server and `/openapi.json` are built from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec


class Caller(StrEnum):
    """Who may call a route, and how they prove it."""

    PUBLIC = "public"
    METRICS = "metrics"  # a bearer token when METRICS_TOKEN is set
    USER = "user"  # a ZID JWT (or a dev test token)
    SERVICE = "service"  # X-API-Key with the usage scope
    ADMIN = "admin"  # X-Admin-Key, or a service key with the admin scope


# The error statuses most routes of a caller kind can answer.
ERRORS_USER = (400, 401, 404, 409, 503)
ERRORS_SERVICE = (400, 401, 403, 413, 415, 503)


@dataclass(frozen=True)
class Header:
    """A request header a route reads, documented with the rules the server applies to it."""

    name: str
    schema: Mapping[str, Any]
    required: bool = False
    description: str | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /v1/reservations/{reservation_id}
    summary: str
    caller: Caller
    body: type[msgspec.Struct] | None = None
    # Rules from the configuration the body must also meet (JSON Schema, for the document).
    body_rules: Mapping[str, Any] | None = None
    # The schema of a body the handler reads itself (a webhook verifies a signature over
    # the exact bytes): documented, not decoded.
    raw_body: Mapping[str, Any] | None = None
    reply: type[msgspec.Struct] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    msgpack: bool = False
    # The query parameters as a Struct: the server decodes them into it, the document
    # describes its fields.
    parameters: type[msgspec.Struct] | None = None
    media_type: str = "application/json"
    # The integration that provides the route; while it is off the route answers
    # 503 not_configured.
    owner: str | None = None
    headers: tuple[Header, ...] = field(default=())

    @property
    def rule(self) -> str:
        """The same path in Quart's routing syntax."""
        return self.path.replace("{", "<").replace("}", ">")
