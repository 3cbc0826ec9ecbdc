"""The OpenAPI 3.1 document, generated from the route declarations and their msgspec types.

It states every rule the server applies to a request: the types' constraints, the rules
between fields (`Body.json_schema_rules`, `Route.body_rules`), decimals as numbers or strings
(`schemas.DECIMAL_RULES`), keys as printable text, headers and query parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import msgspec

from api.routes import Caller, Header, Route
from api.schemas import (
    DECIMAL_RULES,
    PATH_SEGMENT_REF,
    PRINTABLE_REF,
    USER_ID_PATH_SCHEMA,
    Body,
    ErrorReply,
    UsageFailure,
    UsageReply,
    printable_pattern,
)
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

# A path parameter is one segment: the router splits at "/", even when sent as %2F.
# Path parameters with a narrower rule than any key.
PATH_PARAMETERS = {"user_id": USER_ID_PATH_SCHEMA}
PATH_PARAMETER = {"type": "string", "minLength": 1, "maxLength": KEY_LENGTH_MAX,
                  "allOf": [{"$ref": PATH_SEGMENT_REF}]}


def _text_components() -> dict[str, dict[str, Any]]:
    """The long patterns, once each (see `schemas.printable_pattern`)."""
    return {
        PRINTABLE_REF.rsplit("/", 1)[1]: {
            "type": "string", "pattern": printable_pattern(),
            "description": "printable characters (Python's str.isprintable)"},
        PATH_SEGMENT_REF.rsplit("/", 1)[1]: {
            "type": "string", "pattern": printable_pattern("/"),
            "description": "printable characters but /"},
    }


def _decimal_schemas() -> dict[str, dict[str, Any]]:
    """The schema of each Decimal annotation, by the schema msgspec writes for it (a string
    of format decimal): a JSON number or a string, by its rule."""
    schemas = {}
    for annotation, rule in DECIMAL_RULES.items():
        written = msgspec.json.schema(annotation)
        schemas[_key(written)] = {"description": written["description"], **rule.schema()}
    return schemas


def _key(schema: dict[str, Any]) -> str:
    return msgspec.json.encode(schema, order="sorted").decode()


def _documented_decimals(node: Any, documented: dict[str, dict[str, Any]]) -> Any:
    if isinstance(node, dict):
        if node.get("format") == "decimal":
            default = node.get("default")
            written = {name: value for name, value in node.items() if name != "default"}
            schema = dict(documented[_key(written)])  # KeyError: a Decimal without a rule
            if default is not None:
                schema["default"] = default
            return schema
        return {name: _documented_decimals(value, documented) for name, value in node.items()}
    if isinstance(node, list):
        return [_documented_decimals(item, documented) for item in node]
    return node


def _content(schema: dict[str, Any], route: Route) -> dict[str, Any]:
    types = [route.media_type, MSGPACK] if route.msgpack else [route.media_type]
    return {media_type: {"schema": schema} for media_type in types}


def _request_body(route: Route, ref: dict[type, dict[str, Any]]) -> dict[str, Any] | None:
    if route.raw_body is not None:
        return {"required": True, "content": {"application/json": {"schema": route.raw_body}}}
    if route.body is None:
        return None
    schema = ref[route.body]
    if route.body_rules is not None:
        schema = {"allOf": [schema, dict(route.body_rules)]}
    # A missing body reads as `{}`, which only a body whose every field is optional, with no
    # rule between its fields, takes (EmptyBody, a re-send of every parked webhook).
    assert route.body is not None
    required = bool(route.body.json_schema_rules) or any(
        field.required for field in msgspec.structs.fields(route.body))
    return {"required": required, "content": _content(schema, route)}


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
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": PATH_PARAMETERS.get(name, PATH_PARAMETER)}
                  for name in _path_names(route.path)]
    if route.parameters is not None:
        parameters += _query_parameters(route.parameters)
    parameters += [_header_parameter(header) for header in route.headers]
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(route, ref)
    if body is not None:
        operation["requestBody"] = body
    if route.owner is not None:
        operation["description"] = f"Provided by {route.owner}; until they are configured " \
                                   "the route answers 503 `not_configured`."
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
    components = _documented_decimals(components, _decimal_schemas())
    # Bodies nested in others (a cap in the spend controls) state their rules too.
    for kind in {*types, *Body.__subclasses__()}:
        rules = getattr(kind, "json_schema_rules", None)
        if rules and kind.__name__ in components:
            components[kind.__name__].update(rules)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "z-billing",
            "version": metadata.version("z-billing"),
            "description": "Credit-based billing and metering. Credits are integers "
                           "(1 credit = US$0.01); every error has the body `ErrorReply`. "
                           "Numbers are read by value, as JSON Schema reads them: 1.0 is "
                           "the integer 1.",
        },
        "paths": paths,
        "components": {"schemas": {**components, **_text_components()},
                       "securitySchemes": SECURITY_SCHEMES},
    }
