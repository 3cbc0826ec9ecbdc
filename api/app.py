"""The HTTP API (quart-trio). Handlers stay thin: parse, call the facade, map the result."""

from __future__ import annotations

import datetime
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.billing import Billing
from api.auth import Authenticator
from api.errors import ApiError, error_body, render
from api.settings import SCOPE_USAGE, Settings
from engine.account import Account, AutoRefillSettings
from engine.commands import UsageResult
from engine.errors import BillingError, InvalidInput
from engine.ids import (
    parse_agent_id,
    parse_key,
    parse_transaction_id,
    parse_user_id,
    transaction_id_str,
)
from engine.ledger import ADMIN_GRANT_TYPES, EntryType, LedgerEntry
from engine.metering import UsageRequest
from engine.money import format_usd, require_int
from engine.usage import parse_metric

log = logging.getLogger("zbilling.api")

MSGPACK = "application/msgpack"
JSON = "application/json"
USAGE_BATCH_EVENTS_MAX = 1000
TIMESTAMP_LENGTH_MAX = 40
SERVICE_LABELS_MAX = 50
NOT_CONFIGURED_ROUTES = (
    ("/v1/credits/purchase", "POST", "Stripe payments"),
    ("/v1/payments", "GET", "Stripe payments"),
    ("/v1/subscriptions/me", "GET", "subscriptions"),
    ("/v1/subscriptions/checkout", "POST", "subscriptions"),
    ("/v1/subscriptions/cancel", "POST", "subscriptions"),
    ("/v1/subscriptions/portal", "POST", "subscriptions"),
    ("/webhooks/stripe", "POST", "Stripe webhooks"),
    ("/webhooks/lago", "POST", "Lago webhooks"),
)

_json_decoder = msgspec.json.Decoder(float_hook=Decimal)  # decimals exactly, never float
_msgpack_decoder = msgspec.msgpack.Decoder()
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp_ms(value: object) -> int:
    if not isinstance(value, str) or len(value) > TIMESTAMP_LENGTH_MAX:
        raise InvalidInput("timestamp must be an RFC 3339 string", {"field": "timestamp"})
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("timestamp must be an RFC 3339 string",
                           {"field": "timestamp"}) from None
    if moment.tzinfo is None:
        raise InvalidInput("timestamp needs a time zone", {"field": "timestamp"})
    return int(moment.timestamp() * 1000)


def _decimals_from_msgpack(value: Any) -> Any:
    """msgpack has binary floats only; take the shortest decimal that reads back as it."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {key: _decimals_from_msgpack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decimals_from_msgpack(item) for item in value]
    return value


def account_view(account: Account) -> dict[str, Any]:
    return {
        "user_id": str(account.user_id),
        "balance_cents": account.balance,
        "balance_formatted": format_usd(account.balance),
        "held_cents": account.held,
        "available_cents": account.available,
        "unbilled_micros": account.unbilled_micros,
        "lifetime_purchased_cents": account.lifetime_purchased,
        "lifetime_granted_cents": account.lifetime_granted,
        "lifetime_used_cents": account.lifetime_used,
        "plan": account.plan,
        "status": account.status.value,
        "overdraft_limit_cents": account.overdraft_limit,
        "auto_refill": auto_refill_view(account.auto_refill),
        "stripe_customer_id": account.stripe_customer_id,
        "created_at": iso_ms(account.created_at_ms),
        "updated_at": iso_ms(account.updated_at_ms),
    }


def balance_view(account: Account) -> dict[str, Any]:
    return {
        "user_id": str(account.user_id),
        "balance_cents": account.balance,
        "balance_formatted": format_usd(account.balance),
        "held_cents": account.held,
        "available_cents": account.available,
        "plan": account.plan,
    }


def auto_refill_view(settings: AutoRefillSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "trigger_below_cents": settings.trigger_below_cents,
        "refill_amount_cents": settings.refill_amount_cents,
    }


def entry_view(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": transaction_id_str(entry.transaction_id),
        "type": entry.entry_type.value,
        "amount_cents": entry.amount,
        "balance_after_cents": entry.balance_after,
        "description": entry.description,
        "metadata": dict(entry.metadata),
        "event_id": entry.source_key,
        "created_at": iso_ms(entry.created_at_ms),
    }


def usage_view(result: UsageResult) -> dict[str, Any]:
    return {"success": True, **result.to_dict()}


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a JSON object")
    return body


def _only(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInput(f"unknown fields: {sorted(unknown)}", {"fields": sorted(unknown)})


USAGE_FIELDS = frozenset({"event_id", "user_id", "metric", "cost_cents", "cost_micros",
                          "agent_id", "timestamp", "metadata"})


def usage_request(body: object) -> UsageRequest:
    event = _object(body)
    _only(event, USAGE_FIELDS)
    metric = event.get("metric")
    agent = event.get("agent_id")
    timestamp = event.get("timestamp")
    return UsageRequest(
        event_id=parse_key("event_id", event.get("event_id")),
        user_id=parse_user_id(event.get("user_id")),
        metric=parse_metric(metric) if metric is not None else None,
        cost_cents=event.get("cost_cents"),
        cost_micros=event.get("cost_micros"),
        agent_id=parse_agent_id(agent) if agent is not None else None,
        occurred_at_ms=parse_timestamp_ms(timestamp) if timestamp is not None else None,
        metadata=event.get("metadata") or {},
    )


def create_app(  # noqa: PLR0915 - one place lists every route
    billing: Billing, settings: Settings, auth: Authenticator
) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    registry = billing.metrics.registry
    requests_total = Counter("zbilling_http_requests", "HTTP requests by route and status",
                             ["route", "method", "status"], registry=registry)
    latency = Histogram("zbilling_http_request_seconds", "HTTP request latency by route",
                        ["route"], registry=registry,
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1))
    usage_by_service = Counter("zbilling_usage_requests_by_service",
                               "Usage requests by X-Service-Name (bounded)", ["service"],
                               registry=registry)
    services_seen: set[str] = set()

    async def body(*, msgpack_ok: bool = False) -> Any:
        content_type = request.mimetype or JSON
        if content_type == MSGPACK and msgpack_ok:
            raw = await request.get_data()
            try:
                return _decimals_from_msgpack(_msgpack_decoder.decode(raw))
            except msgspec.DecodeError:
                raise InvalidInput("malformed msgpack body") from None
        if content_type != JSON:
            raise ApiError("unsupported_media_type", f"send {JSON}" +
                           (f" or {MSGPACK}" if msgpack_ok else ""))
        raw = await request.get_data()
        try:
            return _json_decoder.decode(raw or b"{}")
        except msgspec.DecodeError:
            raise InvalidInput("malformed JSON body") from None

    def reply(payload: Any, status: int = 200, *, msgpack_ok: bool = False) -> Response:
        if msgpack_ok and MSGPACK in request.headers.get("Accept", ""):
            return Response(_msgpack_encoder.encode(payload), status, content_type=MSGPACK)
        return Response(_json_encoder.encode(payload), status, content_type=JSON)

    def service() -> None:
        key = auth.service(request.headers)
        if SCOPE_USAGE not in key.scopes:
            raise ApiError("forbidden", "this key has no usage scope")
        name = request.headers.get("X-Service-Name", key.name)[:64]
        if name not in services_seen and len(services_seen) >= SERVICE_LABELS_MAX:
            name = "other"
        services_seen.add(name)
        usage_by_service.labels(name).inc()

    @app.before_request
    async def started() -> None:
        request.started_at = time.perf_counter()  # type: ignore[attr-defined]

    @app.after_request
    async def measured(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        requests_total.labels(rule, request.method, str(response.status_code)).inc()
        latency.labels(rule).observe(time.perf_counter() - request.started_at)  # type: ignore[attr-defined]
        return response

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
        message = {413: f"the body is larger than {settings.max_body_bytes} bytes"}.get(
            error.code or 500, error.name)
        return reply(error_body(code, message), error.code or 400)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return reply(error_body("internal_error", "internal error"), 500)

    # --- operations --------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        return reply({"status": "healthy", "timestamp": iso_ms(time.time_ns() // 1_000_000)})

    @app.get("/ready")
    async def ready() -> Response:
        if not billing.accepting_writes:
            raise ApiError("engine_stopped", "storage failed; the engine stopped taking writes")
        return reply({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        if settings.metrics_token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
                raise ApiError("unauthorized", "metrics need the bearer token")
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)

    # --- end users (JWT) ---------------------------------------------------------------------

    @app.post("/v1/accounts")
    async def create_account() -> Response:
        user = await auth.user(request.headers)
        _only(_object(await body()), frozenset())
        return reply(account_view(await billing.open_account(user, must_be_new=True)), 201)

    @app.get("/v1/accounts/me")
    async def my_account() -> Response:
        user = await auth.user(request.headers)
        return reply(account_view(await billing.open_account(user)))

    @app.delete("/v1/accounts/me")
    async def close_my_account() -> Response:
        user = await auth.user(request.headers)
        await billing.close_account(user)
        return reply({"deleted": True})

    @app.get("/v1/credits/balance")
    async def my_balance() -> Response:
        user = await auth.user(request.headers)
        return reply(balance_view(await billing.open_account(user)))

    @app.get("/v1/credits/transactions")
    async def my_transactions() -> Response:
        user = await auth.user(request.headers)
        args = request.args
        limit = _int_arg(args.get("limit"), "limit", 50)
        offset = _int_arg(args.get("offset"), "offset", 0)
        before_text = args.get("before")
        before = parse_transaction_id(before_text) if before_text else None
        await billing.open_account(user)
        page = await billing.list_transactions(user, limit=limit, offset=offset, before=before)
        views = [entry_view(entry) for entry in page.entries]
        return reply({
            "transactions": views,
            "has_more": page.has_more,
            "next_before": views[-1]["id"] if page.has_more and views else None,
        })

    @app.get("/v1/credits/auto-refill")
    async def my_auto_refill() -> Response:
        user = await auth.user(request.headers)
        return reply(auto_refill_view((await billing.open_account(user)).auto_refill))

    @app.post("/v1/credits/auto-refill")
    async def set_my_auto_refill() -> Response:
        user = await auth.user(request.headers)
        data = _object(await body())
        _only(data, frozenset({"enabled", "trigger_below_cents", "refill_amount_cents"}))
        await billing.open_account(user)
        settings_now = AutoRefillSettings.validated(
            data.get("enabled"),
            data.get("trigger_below_cents", 500),
            data.get("refill_amount_cents", 2500),
        )
        account = await billing.set_auto_refill(user, settings_now)
        return reply(auto_refill_view(account.auto_refill))

    # --- operators ---------------------------------------------------------------------------

    @app.post("/v1/credits/add")
    async def add_credits() -> Response:
        auth.admin(request.headers)
        data = _object(await body())
        _only(data, frozenset({"user_id", "amount_cents", "reason", "type"}))
        kind = data.get("type", "bonus")
        if kind not in {entry_type.value for entry_type in ADMIN_GRANT_TYPES}:
            raise InvalidInput("type must be bonus, refund or adjustment", {"field": "type"})
        result = await billing.add_credits(
            parse_user_id(data.get("user_id")),
            data.get("amount_cents"),
            entry_type=EntryType(kind),
            description=data.get("reason", ""),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        return reply({"success": True, **result.to_dict(),
                      "balance_formatted": format_usd(result.balance_cents)})

    # --- services ----------------------------------------------------------------------------

    @app.post("/v1/usage")
    async def usage() -> Response:
        service()
        result = await billing.report_usage(usage_request(await body(msgpack_ok=True)))
        return reply(usage_view(result), msgpack_ok=True)

    @app.post("/v1/usage/batch")
    async def usage_batch() -> Response:
        service()
        data = _object(await body(msgpack_ok=True))
        _only(data, frozenset({"events"}))
        events = data.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= USAGE_BATCH_EVENTS_MAX:
            raise InvalidInput(f"events must be a list of 1..{USAGE_BATCH_EVENTS_MAX}",
                               {"field": "events"})
        parsed: list[UsageRequest | BillingError] = []
        for event in events:
            try:
                parsed.append(usage_request(event))
            except BillingError as error:
                parsed.append(error)
        valid = [item for item in parsed if isinstance(item, UsageRequest)]
        outcomes = iter(await billing.report_usage_many(valid))
        results: list[dict[str, Any]] = []
        for index, item in enumerate(parsed):
            outcome = next(outcomes) if isinstance(item, UsageRequest) else item
            if isinstance(outcome, UsageResult):
                results.append(usage_view(outcome))
            else:
                event_id = events[index].get("event_id") if isinstance(events[index], dict) \
                    else None
                payload, _, _ = render(outcome)
                results.append({"success": False, "event_id": event_id, **payload})
        processed = sum(1 for result in results if result["success"])
        return reply({"results": results, "processed": processed,
                      "failed": len(results) - processed}, msgpack_ok=True)

    @app.post("/v1/usage/check")
    async def usage_check() -> Response:
        service()
        data = _object(await body(msgpack_ok=True))
        _only(data, frozenset({"user_id", "required_cents"}))
        check = await billing.check_balance(parse_user_id(data.get("user_id")),
                                            data.get("required_cents"))
        return reply({"sufficient": check.sufficient, "balance_cents": check.balance_cents,
                      "available_cents": check.available_cents,
                      "required_cents": check.required_cents}, msgpack_ok=True)

    @app.post("/v1/usage/quote")
    async def usage_quote() -> Response:
        service()
        data = _object(await body(msgpack_ok=True))
        _only(data, frozenset({"metric"}))
        quoted = billing.quote(parse_metric(data.get("metric"))).to_dict()
        quoted["cost_cents"] = -(-quoted["cost_micros"] // 1_000_000)
        return reply(quoted, msgpack_ok=True)

    # --- reservations (services) -------------------------------------------------------------

    @app.post("/v1/reservations")
    async def reserve() -> Response:
        service()
        data = _object(await body(msgpack_ok=True))
        _only(data, frozenset({"reservation_id", "user_id", "amount_cents", "metric",
                               "ttl_seconds", "metadata"}))
        metric = data.get("metric")
        held = await billing.reserve(
            parse_user_id(data.get("user_id")),
            parse_key("reservation_id", data.get("reservation_id")),
            amount_cents=data.get("amount_cents"),
            metric=parse_metric(metric) if metric is not None else None,
            ttl_s=data.get("ttl_seconds", 300),
            metadata=data.get("metadata") or {},
        )
        view = held.to_dict()
        view["expires_at"] = iso_ms(view.pop("expires_at_ms"))
        return reply(view, 201, msgpack_ok=True)

    @app.get("/v1/reservations/<reservation_id>")
    async def get_reservation(reservation_id: str) -> Response:
        service()
        view = (await billing.get_reservation(reservation_id)).to_dict()
        for name in ("created_at_ms", "expires_at_ms", "closed_at_ms"):
            view[name.removesuffix("_ms")] = iso_ms(view.pop(name))
        return reply(view)

    @app.post("/v1/reservations/<reservation_id>/commit")
    async def commit_reservation(reservation_id: str) -> Response:
        service()
        data = _object(await body(msgpack_ok=True))
        _only(data, frozenset({"event_id", "metric", "cost_cents", "cost_micros", "agent_id",
                               "metadata"}))
        metric = data.get("metric")
        agent = data.get("agent_id")
        committed = await billing.commit_reservation(
            reservation_id,
            event_id=data.get("event_id"),
            metric=parse_metric(metric) if metric is not None else None,
            cost_cents=data.get("cost_cents"),
            cost_micros=data.get("cost_micros"),
            agent_id=parse_agent_id(agent) if agent is not None else None,
            metadata=data.get("metadata") or {},
        )
        return reply({"success": True, **committed.to_dict()}, msgpack_ok=True)

    @app.delete("/v1/reservations/<reservation_id>")
    async def release_reservation(reservation_id: str) -> Response:
        service()
        return reply((await billing.release_reservation(reservation_id)).to_dict())

    # --- later issues ------------------------------------------------------------------------

    def not_configured(what: str) -> Callable[[], Awaitable[Response]]:
        async def handler() -> Response:
            raise ApiError("not_configured", f"{what} are not configured on this server")

        return handler

    for path, method, what in NOT_CONFIGURED_ROUTES:
        app.add_url_rule(path, f"not_configured_{path}", not_configured(what), methods=[method])

    return app


def _int_arg(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit():
        raise InvalidInput(f"{name} must be a non-negative integer", {"field": name})
    return require_int(name, int(text), 0, 10**9)


