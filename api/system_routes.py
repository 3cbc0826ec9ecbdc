"""The routes about the server itself: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import importlib.metadata
import time

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Response

from actors.billing import Billing
from api import schemas
from api.errors import ApiError
from api.http import JSON, Endpoints
from api.openapi import openapi_document
from api.routes import Caller, Route
from api.schemas import iso_ms

SERVICE = "z-billing"
try:
    VERSION = importlib.metadata.version(SERVICE)
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    VERSION = "unknown"


def register_system_routes(endpoint: Endpoints, billing: Billing,
                           registry: CollectorRegistry) -> None:
    """Registered last: the document describes every route registered before, and itself."""

    @endpoint(Route("GET", "/health", "Liveness", Caller.PUBLIC, reply=schemas.HealthReply))
    async def health() -> schemas.HealthReply:
        return schemas.HealthReply("healthy", iso_ms(time.time_ns() // 1_000_000), SERVICE,
                                   VERSION)

    @endpoint(Route("GET", "/ready", "Readiness: storage open and taking writes",
                    Caller.PUBLIC, reply=schemas.ReadyReply, errors=(503,)))
    async def ready() -> schemas.ReadyReply:
        if not billing.accepting_writes:
            raise ApiError("engine_stopped", "storage failed; the engine stopped taking writes")
        return schemas.ReadyReply("ready")

    @endpoint(Route("GET", "/metrics", "Prometheus metrics", Caller.METRICS, errors=(401,),
                    media_type=CONTENT_TYPE_LATEST))
    async def metrics() -> Response:
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)

    @endpoint(Route("GET", "/openapi.json", "This document", Caller.PUBLIC))
    async def openapi() -> Response:
        return Response(document, 200, content_type=JSON)

    document = msgspec.json.encode(openapi_document(endpoint.routes))
