"""The OpenAPI 3.1 document, generated from the route declarations and their msgspec types."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import msgspec

from api.routes import Caller, Header, Route
from api.schemas import ErrorReply, UsageFailure, UsageReply
from engine.ids import KEY_LENGTH_MAX

REF_TEMPLATE = "#/components/schemas/{name}"
MSGPACK = "application/msgpack"

STATUS_TEXT = {
    200: "OK", 201: "Created", 400: "Invalid input (`bad_request`)",
    401: "Missing or invalid credentials", 402: "Insufficient credits",
    403: "The key lacks the scope", 404: "Not found", 409:
    "Conflict: duplicate_event (with the original result), idempotency_conflict, "
    "reservation_expired or a closed account",
    413: "Body too large", 415: "Unsupported content type",
    502: "An external service (Stripe, the JWKS) failed",
    503: "Overloaded (with Retry-After), stopped, or not configured",
}

SECURITY = {
    Caller.PUBLIC: [],
    Caller.METRICS: [{}, {"MetricsToken": []}],
    Caller.USER: [{"UserJwt": []}],
    Caller.SERVICE: [{"ServiceKey": []}],
    Caller.ADMIN: [{"AdminKey": []}, {"ServiceKey": []}],
}

SECURITY_SCHEMES = {
    "UserJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A ZID JWT (RS256/ES256 from the JWKS), or `test-token:<uuid>` "
                               "in --dev mode"},
    "ServiceKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "AdminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
    "MetricsToken": {"type": "http", "scheme": "bearer",
                     "description": "Needed only when METRICS_TOKEN is set"},
}

def _widen_decimals(node: Any) -> Any:
    """msgspec documents Decimal as a string; the API also takes JSON numbers (exactly)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "decimal":
            node = {key: value for key, value in node.items() if key != "format"}
            node["type"] = ["string", "number"]
            if "default" in node:
                node["default"] = str(node["default"])
        return {key: _widen_decimals(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_widen_decimals(item) for item in node]
    return node


def _content(schema: dict[str, Any], route: Route) -> dict[str, Any]:
    types = [route.media_type, MSGPACK] if route.msgpack else [route.media_type]
    return {media_type: {"schema": schema} for media_type in types}


def _operation(route: Route, ref: dict[type, dict[str, Any]]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": STATUS_TEXT.get(route.status, "OK")}
    if route.reply is not None:
        success["content"] = _content(ref[route.reply], route)
    elif route.owner is None:
        success["content"] = {route.media_type: {"schema": {}}}
    responses: dict[str, Any] = {}
    if route.owner is None:
        responses[str(route.status)] = success
    error = {"$ref": REF_TEMPLATE.format(name="ErrorReply")}
    for status in route.errors:
        responses[str(status)] = {"description": STATUS_TEXT[status],
                                  "content": {"application/json": {"schema": error}}}
    operation: dict[str, Any] = {
        "operationId": re.sub(r"[^a-z0-9]+", "_", f"{route.method} {route.path}".lower())
                         .strip("_"),
        "summary": route.summary,
        "security": SECURITY[route.caller],
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "maxLength": KEY_LENGTH_MAX}}
        for name in _path_names(route.path)
    ]
    if route.parameters is not None:
        parameters += _query_parameters(route.parameters)
    parameters += [_header_parameter(header) for header in route.headers]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": _content(ref[route.body], route)}
    if route.owner is not None:
        operation["description"] = f"Provided by the {route.owner} capability; until it is " \
                                   "configured the route answers 503 `not_configured`."
    return operation


def _query_parameters(kind: type[msgspec.Struct]) -> list[dict[str, Any]]:
    """One parameter per field of the route's query Struct, with that field's schema."""
    _, components = msgspec.json.schema_components([kind])
    schema = components[kind.__name__]
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": field}
            for name, field in schema["properties"].items()]


def _header_parameter(header: Header) -> dict[str, Any]:
    parameter = {"name": header.name, "in": "header", "required": header.required,
                 "schema": dict(header.schema)}
    if header.description is not None:
        parameter["description"] = header.description
    return parameter


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    routes = list(routes)
    types: list[type] = [ErrorReply, UsageReply, UsageFailure]
    for route in routes:
        for kind in (route.body, route.reply):
            if kind is not None and kind not in types:
                types.append(kind)
    refs, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    ref = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "z-billing",
            "version": metadata.version("z-billing"),
            "description": "Credit-based billing and metering. Credits are integers "
                           "(1 credit = US$0.01); every error has the body `ErrorReply`.",
        },
        "paths": paths,
        "components": {"schemas": _widen_decimals(components),
                       "securitySchemes": SECURITY_SCHEMES},
    }
