"""The plumbing every route shares: body and query decoding, reply encoding, caller checks,
request metrics and the error handlers that keep every answer in the one error format.

A route group declares each route once, `@endpoint(Route(...))`, on the handler that does the
work; `Endpoints` registers it with Quart behind this plumbing and keeps the declarations that
`/openapi.json` is generated from.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from api.auth import Authenticator
from api.errors import ApiError, error_body, render
from api.routes import Caller, Route
from api.schemas import DECIMAL_RULES, DecimalRule
from api.settings import KeyScope
from engine.errors import BillingError, InvalidInput, Overloaded
from engine.ids import UserId
from engine.usage import invalid_input

log = logging.getLogger("zbilling.api")

MSGPACK = "application/msgpack"
JSON = "application/json"
SERVICE_LABELS_MAX = 50
SERVICE_NAME_LENGTH_MAX = 64
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
# Requests one route may have in flight in one HTTP process; past it 503 `overloaded` with
# Retry-After at once (the original queued 50 per route until its time-out).
ROUTE_REQUESTS_IN_FLIGHT_MAX = 256

Handler = Callable[..., Awaitable[Any]]
Register = Callable[[Route], Callable[[Handler], Handler]]
Q = TypeVar("Q", bound=msgspec.Struct)

# msgspec reads no longer integer literal (Python's default int_max_str_digits).
INTEGER_DIGITS_MAX = 4300

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_numbers_json_encoder = msgspec.json.Encoder(decimal_format="number")
# Untyped, with JSON numbers read exactly (never through a binary float).
_exact_json = msgspec.json.Decoder(float_hook=Decimal)
_generic_msgpack = msgspec.msgpack.Decoder()


class BodyDecoder:
    """Typed JSON and msgpack decoders for one body type, built once per route.

    JSON Schema compares numbers by value: `1.0` is the integer 1 and `2.50` has one
    decimal. The typed decoders read them by spelling (`1.0` is a float to msgspec), so a body
    they refuse is read again by value, exactly; 1.5 stays refused where an integer belongs,
    as do booleans and strings. Decimals sent as strings must also be spelled as the
    document says (`schemas.DECIMAL_RULES`): Python's `Decimal()` reads far more.
    """

    def __init__(self, body_type: type[msgspec.Struct]) -> None:
        self.json = msgspec.json.Decoder(body_type)
        self.msgpack = msgspec.msgpack.Decoder(body_type)

    def decode(self, raw: bytes, content_type: str) -> Any:
        msgpack = content_type == MSGPACK
        try:
            try:
                body = (self.msgpack if msgpack else self.json).decode(raw)
            except msgspec.ValidationError:
                body = self._decode_by_value(raw, msgpack)
        except msgspec.ValidationError as error:
            raise invalid_input(error) from None
        except msgspec.DecodeError:
            raise InvalidInput(f"malformed {'msgpack' if msgpack else 'JSON'} body") from None
        _check_decimal_spellings(body, raw, msgpack)
        return body

    def _decode_by_value(self, raw: bytes, msgpack: bool) -> Any:
        """The body with every integral number written as an integer and every other one
        without trailing zeros, decoded again (the first decoder's rules, the same errors)."""
        numbers = _by_value(_untyped(raw, msgpack))
        if msgpack:
            return self.msgpack.decode(_msgpack_encoder.encode(numbers))
        return self.json.decode(_numbers_json_encoder.encode(numbers))


def _untyped(raw: bytes, msgpack: bool) -> Any:
    return _generic_msgpack.decode(raw) if msgpack else _exact_json.decode(raw)


def _by_value(node: Any) -> Any:
    if isinstance(node, dict):
        return {name: _by_value(value) for name, value in node.items()}
    if isinstance(node, list):
        return [_by_value(item) for item in node]
    if isinstance(node, Decimal):  # from JSON
        if node != node.to_integral_value():
            return node.normalize()
        return int(node) if node.adjusted() < INTEGER_DIGITS_MAX else node
    if isinstance(node, float) and node.is_integer():  # from msgpack
        return int(node)
    return node


def _check_decimal_spellings(body: msgspec.Struct, raw: bytes, msgpack: bool) -> None:
    found: list[tuple[tuple[str, ...], DecimalRule]] = []
    _find_decimals(body, (), found)
    if not found:  # the usual case: no decimal in the body
        return
    untyped = _untyped(raw, msgpack)
    for path, rule in found:
        sent = untyped
        for name in path:
            sent = sent.get(name) if isinstance(sent, dict) else None
        if isinstance(sent, str) and rule.spellings.fullmatch(sent) is None:
            field = ".".join(path)
            raise InvalidInput(
                f"{field} must be a decimal between {rule.minimum} and {rule.maximum} with at "
                f"most {rule.decimals} decimals, as a JSON number or a string such as "
                '"12.5"', {"field": field})


def _find_decimals(value: msgspec.Struct, path: tuple[str, ...],
                   found: list[tuple[tuple[str, ...], DecimalRule]]) -> None:
    """Adds the path and rule of every Decimal in `value` (a decoded body) to `found`."""
    for name, rule in _fields_to_search(type(value)):
        held = getattr(value, name)
        if rule is not None and isinstance(held, Decimal):
            found.append(((*path, name), rule))
        elif isinstance(held, msgspec.Struct):
            _find_decimals(held, (*path, name), found)


@functools.cache
def _fields_to_search(kind: type[msgspec.Struct]) -> tuple[tuple[str, DecimalRule | None], ...]:
    """The fields of `kind` that hold a Decimal (with its rule) or a Struct that may."""
    found: list[tuple[str, DecimalRule | None]] = []
    for field in msgspec.structs.fields(kind):
        rule = next((rule for annotation, rule in DECIMAL_RULES.items()
                     if field.type == annotation), None)
        if rule is not None or _holds_struct(field.type):
            found.append((field.name, rule))
    return tuple(found)


def _holds_struct(annotation: Any) -> bool:
    if isinstance(annotation, type):
        return issubclass(annotation, msgspec.Struct)
    return any(_holds_struct(argument) for argument in typing.get_args(annotation))


def read_query(kind: type[Q], args: MultiDict[str, str]) -> Q:
    """The query parameters as their declared Struct: text converted the way a query string
    is read (`"10"` is 10), bounds checked, anything wrong a 400 naming the parameter."""
    try:
        return msgspec.convert(args.to_dict(), kind, strict=False)
    except msgspec.ValidationError as error:
        raise invalid_input(error) from None


def reply(payload: Any, status: int = 200, *, msgpack_ok: bool = False) -> Response:
    if msgpack_ok and MSGPACK in request.headers.get("Accept", ""):
        return Response(_msgpack_encoder.encode(payload), status, content_type=MSGPACK)
    return Response(_json_encoder.encode(payload), status, content_type=JSON)


async def read_raw_body() -> bytes:
    """The request body as sent (webhooks verify signatures over it), read whole."""
    raw = await request.get_data()
    request.body_read_whole = True  # type: ignore[attr-defined]
    return raw


async def read_body(route: Route, decoder: BodyDecoder) -> Any:
    content_type = request.mimetype or JSON
    if content_type != JSON and not (route.msgpack and content_type == MSGPACK):
        raise ApiError("unsupported_media_type", f"send {JSON}" +
                       (f" or {MSGPACK}" if route.msgpack else ""))
    # No body at all reads as `{}` (so the EmptyBody routes take none).
    return decoder.decode(await read_raw_body() or b"{}", content_type)


class Endpoints:
    """`endpoint(route)(handler)` registers `handler` for `route` and keeps the declaration.

    The handler is called with the authenticated user (USER routes), then the decoded body
    (routes with one), then the decoded query parameters (routes that declare them), then
    the path parameters by name, and answers with a reply Struct (or a ready Response).
    """

    def __init__(self, app: QuartTrio, auth: Authenticator, metrics_token: str | None,
                 registry: CollectorRegistry, *, request_timeout_s: float) -> None:
        self.routes: list[Route] = []
        self._request_timeout_s = request_timeout_s
        self._in_flight: dict[str, int] = {}
        self._app = app
        self._auth = auth
        self._metrics_token = metrics_token
        by_service = Counter("zbilling_usage_requests",
                             "Usage requests by X-Service-Name (bounded)", ["service"],
                             registry=registry)
        # `labels()` takes a lock and builds a key on every call; there are at most
        # SERVICE_LABELS_MAX + 1 services, so keep the children.
        self._by_service = functools.cache(by_service.labels)
        self._services_seen: set[str] = set()

    def __call__(self, route: Route) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            decoder = BodyDecoder(route.body) if route.body is not None else None

            async def view(**path: str) -> Response:
                name = route.rule
                in_flight = self._in_flight.get(name, 0)
                if in_flight >= ROUTE_REQUESTS_IN_FLIGHT_MAX:
                    raise Overloaded(f"{ROUTE_REQUESTS_IN_FLIGHT_MAX} requests to this route "
                                     "are in flight; retry shortly")
                self._in_flight[name] = in_flight + 1
                try:
                    with trio.move_on_after(self._request_timeout_s):
                        return await answer(**path)
                finally:
                    self._in_flight[name] -= 1
                raise ApiError("request_timeout", timed_out_message(self._request_timeout_s))

            async def answer(**path: str) -> Response:
                arguments: list[Any] = []
                user = await self._check_caller(route.caller)
                if user is not None:
                    arguments.append(user)
                if decoder is not None:
                    arguments.append(await read_body(route, decoder))
                if route.parameters is not None:
                    arguments.append(read_query(route.parameters, request.args))
                result = await handler(*arguments, **path)
                if isinstance(result, Response):
                    return result
                return reply(result, route.status, msgpack_ok=route.msgpack)

            self._app.add_url_rule(route.rule, f"{route.method} {route.path}", view,
                                   methods=[route.method])
            self.routes.append(route)
            return handler

        return register

    async def _check_caller(self, caller: Caller) -> UserId | None:
        """The user for USER routes; for the others, raises unless the caller may call."""
        if caller is Caller.USER:
            return await self._auth.user(request.headers)
        if caller is Caller.SERVICE:
            self._check_service()
        elif caller is Caller.ADMIN:
            self._auth.admin(request.headers)
        elif caller is Caller.METRICS:
            self._check_metrics_token()
        return None

    def _check_service(self) -> None:
        key = self._auth.service(request.headers)
        if KeyScope.USAGE not in key.scopes:
            raise ApiError("forbidden", "this key has no usage scope")
        g.service_key = key.name
        name = request.headers.get("X-Service-Name", key.name)[:SERVICE_NAME_LENGTH_MAX]
        if name not in self._services_seen and len(self._services_seen) >= SERVICE_LABELS_MAX:
            name = "other"
        self._services_seen.add(name)
        self._by_service(name).inc()

    def _check_metrics_token(self) -> None:
        if self._metrics_token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), self._metrics_token.encode()):
                raise ApiError("unauthorized", "metrics need the bearer token")


def timed_out_message(timeout_s: float) -> str:
    return (f"no answer within {timeout_s:g} s (REQUEST_TIMEOUT_SECONDS); a debit or grant "
            "may still have committed: retry with the same event id or Idempotency-Key to "
            "learn its result")
def service_key_name() -> str | None:
    """The name of the service key that authenticated this request (its spend caps apply;
    the key, not the X-Service-Name header, which any caller may set)."""
    return g.get("service_key")


def not_configured(endpoint: Register, method: str, path: str, what: str) -> None:
    """A stand-in for a route whose integration is off: 503 `not_configured`, documented."""

    async def stand_in() -> Response:
        raise ApiError("not_configured", f"{what} are not configured on this server")

    endpoint(Route(method, path, f"{what}: not configured on this server", Caller.PUBLIC,
                   errors=(503,), owner=what))(stand_in)


def install_request_hooks(app: QuartTrio, registry: CollectorRegistry) -> None:
    """Requests by route, method and status, and latency by route; and `Connection: close`
    after a reply to a request whose body was not read whole."""
    requests_total = Counter("zbilling_http_requests", "HTTP requests by route and status",
                             ["route", "method", "status"], registry=registry)
    latency = Histogram("zbilling_http_request_duration_seconds", "HTTP request latency by route",
                        ["route"], registry=registry, buckets=LATENCY_BUCKETS_S)
    # The label sets are bounded (routes, methods, statuses): keep the children.
    requests_child = functools.cache(requests_total.labels)
    latency_child = functools.cache(latency.labels)

    @app.before_request
    async def started() -> None:
        request.started_at = time.perf_counter()  # type: ignore[attr-defined]

    @app.after_request
    async def measured(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        requests_child(rule, request.method, response.status_code).inc()
        latency_child(rule).observe(time.perf_counter() - request.started_at)  # type: ignore[attr-defined]
        return response

    @app.after_request
    async def closed_if_unread(response: Response) -> Response:
        # hypercorn starts a connection's next request only once this one's body is read: a
        # body left unread (the request refused before it, with 401, 405, 413 or 415) would
        # stall the client's next request on that kept-alive connection. Closing the
        # connection after the reply (h11 honours the header) costs one reconnect and never
        # reads a body nobody will use.
        if _has_body() and not getattr(request, "body_read_whole", False):
            response.headers["Connection"] = "close"
        return response


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", "").lower()


def install_error_handlers(app: QuartTrio, max_body_bytes: int) -> None:
    """Every failure answers in the one error format; a bug answers 500 without details."""

    @app.errorhandler(BillingError)
    async def billing_error(error: BillingError) -> Response:
        payload, status, headers = render(error)
        response = reply(payload, status, msgpack_ok=request.path.startswith("/v1/usage"))
        response.headers.update(headers)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type"}.get(error.code or 500, "bad_request")
        message = {413: f"the body is larger than {max_body_bytes} bytes"}.get(
            error.code or 500, error.name)
        response = reply(error_body(code, message), error.code or 400)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))  # RFC 9110
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return reply(error_body("internal_error", "internal error"), 500)
