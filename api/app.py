"""The HTTP API (quart-trio). Handlers stay thin: typed body in, facade call, typed reply out.

Every route is declared once with `@endpoint(Route(...))`: the declaration registers the handler
with Quart, authenticates the caller, decodes the body into its type, encodes the reply, and is
what `/openapi.json` is generated from.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.billing import Billing
from api import schemas
from api.auth import Authenticator
from api.errors import ApiError, error_body, render
from api.openapi import openapi_document
from api.payment_routes import register_payment_routes
from api.routes import Caller, Route
from api.schemas import iso_ms
from api.settings import KeyScope, Settings
from api.subscription_routes import register_subscription_routes
from engine.account import Account, AutoRefillSettings
from engine.commands import UsageResult
from engine.errors import BillingError, InvalidInput
from engine.ids import AgentId, UserId, parse_key, parse_transaction_id, transaction_id_str
from engine.ledger import EntryType, LedgerEntry
from engine.metering import UsageRequest
from engine.money import format_usd, micros_to_cents_ceil, require_int
from engine.reservations import Reservation
from engine.usage import invalid_input
from integrations.lago.webhooks import LagoWebhooks
from integrations.stripe.service import StripeService

log = logging.getLogger("zbilling.api")

MSGPACK = "application/msgpack"
JSON = "application/json"
SERVICE_LABELS_MAX = 50
ERRORS_USER = (400, 401, 404, 409, 503)
ERRORS_SERVICE = (400, 401, 403, 413, 415, 503)

Handler = Callable[..., Awaitable[Any]]

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_generic_json = msgspec.json.Decoder()
_generic_msgpack = msgspec.msgpack.Decoder()


def optional_iso_ms(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else iso_ms(epoch_ms)


class BodyDecoder:
    """Typed JSON and msgpack decoders for one body type, built once per route."""

    def __init__(self, body_type: type[msgspec.Struct]) -> None:
        self.json = msgspec.json.Decoder(body_type)
        self.msgpack = msgspec.msgpack.Decoder(body_type)

    def decode(self, raw: bytes, content_type: str) -> Any:
        decoder: Any = self.msgpack if content_type == MSGPACK else self.json
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as error:
            raise invalid_input(error) from None
        except msgspec.DecodeError:
            kind = "msgpack" if content_type == MSGPACK else "JSON"
            raise InvalidInput(f"malformed {kind} body") from None


_usage_decoder = BodyDecoder(schemas.UsageBody)


def usage_request(body: schemas.UsageBody) -> UsageRequest:
    timestamp = body.timestamp
    if timestamp is not None and timestamp.tzinfo is None:
        raise InvalidInput("timestamp needs a time zone", {"field": "timestamp"})
    return UsageRequest(
        event_id=parse_key("event_id", body.event_id),
        user_id=UserId(body.user_id),
        metric=body.metric,
        cost_cents=body.cost_cents,
        cost_micros=body.cost_micros,
        agent_id=AgentId(body.agent_id) if body.agent_id is not None else None,
        occurred_at_ms=int(timestamp.timestamp() * 1000) if timestamp is not None else None,
        metadata=body.metadata,
    )


def account_reply(account: Account) -> schemas.AccountReply:
    return schemas.AccountReply(
        user_id=account.user_id,
        balance_cents=account.balance_cents,
        balance_formatted=format_usd(account.balance_cents),
        held_cents=account.held_cents,
        available_cents=account.available,
        unbilled_micros=account.unbilled_micros,
        lifetime_purchased_cents=account.lifetime_purchased_cents,
        lifetime_granted_cents=account.lifetime_granted_cents,
        lifetime_used_cents=account.lifetime_used_cents,
        plan=account.plan,
        status=account.status.value,  # type: ignore[arg-type]
        overdraft_limit_cents=account.overdraft_limit_cents,
        auto_refill=auto_refill_reply(account),
        stripe_customer_id=account.stripe_customer_id,
        created_at=iso_ms(account.created_at_ms),
        updated_at=iso_ms(account.updated_at_ms),
    )


def balance_reply(account: Account) -> schemas.BalanceReply:
    return schemas.BalanceReply(
        user_id=account.user_id,
        balance_cents=account.balance_cents,
        balance_formatted=format_usd(account.balance_cents),
        held_cents=account.held_cents,
        available_cents=account.available,
        plan=account.plan,
    )


def auto_refill_reply(account: Account) -> schemas.AutoRefillReply:
    settings = account.auto_refill
    return schemas.AutoRefillReply(settings.enabled, settings.trigger_below_cents,
                                   settings.refill_amount_cents, account.refill_pending,
                                   account.auto_refill_error)


def transaction_reply(entry: LedgerEntry) -> schemas.TransactionReply:
    return schemas.TransactionReply(
        id=transaction_id_str(entry.transaction_id),
        type=entry.entry_type.value,
        amount_cents=entry.amount,
        balance_after_cents=entry.balance_after,
        description=entry.description,
        metadata=dict(entry.metadata),
        event_id=entry.source_key,
        created_at=iso_ms(entry.created_at_ms),
    )


def usage_reply(result: UsageResult) -> schemas.UsageReply:
    return schemas.UsageReply(success=True, **result.to_dict())


def reservation_reply(reservation: Reservation) -> schemas.ReservationReply:
    view = reservation.to_dict()
    for name in ("created_at_ms", "expires_at_ms", "closed_at_ms"):
        view[name.removesuffix("_ms")] = optional_iso_ms(view.pop(name))
    return msgspec.convert(view, schemas.ReservationReply)


def _error_detail(error: BillingError) -> schemas.ErrorDetail:
    payload, _, _ = render(error)
    return msgspec.convert(payload["error"], schemas.ErrorDetail)


def _event_id_of(raw: bytes, content_type: str) -> str | None:
    """Best effort, for the answer to an event that failed to decode."""
    try:
        event = (_generic_msgpack if content_type == MSGPACK else _generic_json).decode(raw)
    except msgspec.DecodeError:
        return None
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) else None


def create_app(  # noqa: PLR0915 - one place lists every route
    billing: Billing, settings: Settings, auth: Authenticator,
    stripe: StripeService | None = None,
    lago_webhooks: LagoWebhooks | None = None,
) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    routes: list[Route] = []
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
    # `labels()` takes a lock and builds a key on every call; the label sets here are bounded
    # (routes, methods, statuses, at most SERVICE_LABELS_MAX services), so keep the children.
    requests_child = functools.cache(requests_total.labels)
    latency_child = functools.cache(latency.labels)
    usage_by_service_child = functools.cache(usage_by_service.labels)

    def reply(payload: Any, status: int = 200, *, msgpack_ok: bool = False) -> Response:
        if msgpack_ok and MSGPACK in request.headers.get("Accept", ""):
            return Response(_msgpack_encoder.encode(payload), status, content_type=MSGPACK)
        return Response(_json_encoder.encode(payload), status, content_type=JSON)

    def check_service() -> None:
        key = auth.service(request.headers)
        if KeyScope.USAGE not in key.scopes:
            raise ApiError("forbidden", "this key has no usage scope")
        name = request.headers.get("X-Service-Name", key.name)[:64]
        if name not in services_seen and len(services_seen) >= SERVICE_LABELS_MAX:
            name = "other"
        services_seen.add(name)
        usage_by_service_child(name).inc()

    def check_metrics_token() -> None:
        if settings.metrics_token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
                raise ApiError("unauthorized", "metrics need the bearer token")

    async def read_body(route: Route, decoder: BodyDecoder) -> Any:
        content_type = request.mimetype or JSON
        if content_type != JSON and not (route.msgpack and content_type == MSGPACK):
            raise ApiError("unsupported_media_type", f"send {JSON}" +
                           (f" or {MSGPACK}" if route.msgpack else ""))
        return decoder.decode(await request.get_data() or b"{}", content_type)

    def endpoint(route: Route) -> Callable[[Handler], Handler]:
        """Register `handler` for `route`. It is called with the authenticated user (USER
        routes), then the decoded body (routes with one), then the path parameters, and
        answers with a reply Struct (or a ready Response)."""

        def register(handler: Handler) -> Handler:
            decoder = BodyDecoder(route.body) if route.body is not None else None

            async def view(**path: str) -> Response:
                arguments: list[Any] = []
                if route.caller is Caller.USER:
                    arguments.append(await auth.user(request.headers))
                elif route.caller is Caller.SERVICE:
                    check_service()
                elif route.caller is Caller.ADMIN:
                    auth.admin(request.headers)
                elif route.caller is Caller.METRICS:
                    check_metrics_token()
                if decoder is not None:
                    arguments.append(await read_body(route, decoder))
                result = await handler(*arguments, **path)
                if isinstance(result, Response):
                    return result
                return reply(result, route.status, msgpack_ok=route.msgpack)

            app.add_url_rule(route.rule, handler.__name__, view, methods=[route.method])
            routes.append(route)
            return handler

        return register

    @app.before_request
    async def started() -> None:
        request.started_at = time.perf_counter()  # type: ignore[attr-defined]

    @app.after_request
    async def measured(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        requests_child(rule, request.method, response.status_code).inc()
        latency_child(rule).observe(time.perf_counter() - request.started_at)  # type: ignore[attr-defined]
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

    @endpoint(Route("GET", "/health", "Liveness", Caller.PUBLIC, reply=schemas.HealthReply))
    async def health() -> schemas.HealthReply:
        return schemas.HealthReply("healthy", iso_ms(time.time_ns() // 1_000_000))

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
        return Response(_json_encoder.encode(document), 200, content_type=JSON)

    # --- end users (JWT) ---------------------------------------------------------------------

    @endpoint(Route("POST", "/v1/accounts", "Open the caller's account", Caller.USER,
                    body=schemas.EmptyBody, reply=schemas.AccountReply, status=201,
                    errors=(400, 401, 409, 415, 503)))
    async def create_account(user: UserId, _: schemas.EmptyBody) -> schemas.AccountReply:
        return account_reply(await billing.open_account(user, must_be_new=True))

    @endpoint(Route("GET", "/v1/accounts/me", "The caller's account (opened on first use)",
                    Caller.USER, reply=schemas.AccountReply, errors=ERRORS_USER))
    async def my_account(user: UserId) -> schemas.AccountReply:
        return account_reply(await billing.open_account(user))

    @endpoint(Route("DELETE", "/v1/accounts/me", "Close the caller's account", Caller.USER,
                    reply=schemas.DeletedReply, errors=ERRORS_USER))
    async def close_my_account(user: UserId) -> schemas.DeletedReply:
        await billing.close_account(user)
        return schemas.DeletedReply(deleted=True)

    @endpoint(Route("GET", "/v1/credits/balance", "The caller's balance", Caller.USER,
                    reply=schemas.BalanceReply, errors=ERRORS_USER))
    async def my_balance(user: UserId) -> schemas.BalanceReply:
        return balance_reply(await billing.open_account(user))

    @endpoint(Route("GET", "/v1/credits/transactions", "The caller's ledger, newest first",
                    Caller.USER, reply=schemas.TransactionPageReply, errors=ERRORS_USER,
                    parameters=("limit", "offset", "before")))
    async def my_transactions(user: UserId) -> schemas.TransactionPageReply:
        args = request.args
        limit = _int_arg(args.get("limit"), "limit", 50)
        offset = _int_arg(args.get("offset"), "offset", 0)
        before_text = args.get("before")
        before = parse_transaction_id(before_text) if before_text else None
        await billing.open_account(user)
        page = await billing.list_transactions(user, limit=limit, offset=offset, before=before)
        views = [transaction_reply(entry) for entry in page.entries]
        return schemas.TransactionPageReply(
            transactions=views,
            has_more=page.has_more,
            next_before=views[-1].id if page.has_more and views else None,
        )

    @endpoint(Route("GET", "/v1/credits/auto-refill", "The caller's auto-refill settings",
                    Caller.USER, reply=schemas.AutoRefillReply, errors=ERRORS_USER))
    async def my_auto_refill(user: UserId) -> schemas.AutoRefillReply:
        return auto_refill_reply(await billing.open_account(user))

    @endpoint(Route("POST", "/v1/credits/auto-refill", "Change the auto-refill settings",
                    Caller.USER, body=schemas.AutoRefillBody, reply=schemas.AutoRefillReply,
                    errors=(*ERRORS_USER, 413, 415)))
    async def set_my_auto_refill(user: UserId,
                                 body: schemas.AutoRefillBody) -> schemas.AutoRefillReply:
        await billing.open_account(user)
        wanted = AutoRefillSettings.validated(body.enabled, body.trigger_below_cents,
                                              body.refill_amount_cents)
        return auto_refill_reply(await billing.set_auto_refill(user, wanted))

    # --- operators ---------------------------------------------------------------------------

    @endpoint(Route("POST", "/v1/credits/add", "Grant credits (admin)", Caller.ADMIN,
                    body=schemas.CreditsAddBody, reply=schemas.CreditReply,
                    errors=(400, 401, 403, 404, 409, 413, 415, 503),
                    headers=("Idempotency-Key",)))
    async def add_credits(body: schemas.CreditsAddBody) -> schemas.CreditReply:
        result = await billing.add_credits(
            UserId(body.user_id),
            body.amount_cents,
            entry_type=EntryType(body.type),
            description=body.reason,
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        return schemas.CreditReply(success=True, **result.to_dict(),
                                   balance_formatted=format_usd(result.balance_cents))

    # --- services ----------------------------------------------------------------------------

    @endpoint(Route("POST", "/v1/usage", "Debit one usage event", Caller.SERVICE,
                    body=schemas.UsageBody, reply=schemas.UsageReply, msgpack=True,
                    errors=(*ERRORS_SERVICE, 402, 404, 409), headers=("X-Service-Name",)))
    async def usage(body: schemas.UsageBody) -> schemas.UsageReply:
        return usage_reply(await billing.report_usage(usage_request(body)))

    @endpoint(Route("POST", "/v1/usage/batch",
                    "Debit up to 1000 events; per-event results, in request order",
                    Caller.SERVICE, body=schemas.UsageBatchBody,
                    reply=schemas.UsageBatchReply, msgpack=True, errors=ERRORS_SERVICE,
                    headers=("X-Service-Name",)))
    async def usage_batch(body: schemas.UsageBatchBody) -> schemas.UsageBatchReply:
        content_type = request.mimetype or JSON
        parsed: list[UsageRequest | BillingError] = []
        for raw in body.events:
            try:
                parsed.append(usage_request(_usage_decoder.decode(raw, content_type)))
            except BillingError as error:
                parsed.append(error)
        valid = [item for item in parsed if isinstance(item, UsageRequest)]
        outcomes = iter(await billing.report_usage_many(valid))
        results: list[Any] = []
        processed = 0
        for raw, item in zip(body.events, parsed, strict=True):
            outcome = next(outcomes) if isinstance(item, UsageRequest) else item
            if isinstance(outcome, UsageResult):
                results.append(usage_reply(outcome))
                processed += 1
            else:
                event_id = (item.event_id if isinstance(item, UsageRequest)
                            else _event_id_of(raw, content_type))
                results.append(schemas.UsageFailure(False, event_id, _error_detail(outcome)))
        return schemas.UsageBatchReply(results, processed, len(results) - processed)

    @endpoint(Route("POST", "/v1/usage/check", "Would this much be available?",
                    Caller.SERVICE, body=schemas.UsageCheckBody,
                    reply=schemas.UsageCheckReply, msgpack=True,
                    errors=(*ERRORS_SERVICE, 404, 409)))
    async def usage_check(body: schemas.UsageCheckBody) -> schemas.UsageCheckReply:
        check = await billing.check_balance(UserId(body.user_id), body.required_cents)
        return schemas.UsageCheckReply(check.sufficient, check.balance_cents,
                                       check.available_cents, check.required_cents)

    @endpoint(Route("POST", "/v1/usage/quote", "Price a metric without debiting",
                    Caller.SERVICE, body=schemas.QuoteBody, reply=schemas.QuoteReply,
                    msgpack=True, errors=ERRORS_SERVICE))
    async def usage_quote(body: schemas.QuoteBody) -> schemas.QuoteReply:
        quoted = billing.quote(body.metric).to_dict()
        quoted["cost_cents"] = micros_to_cents_ceil(quoted["cost_micros"])
        return msgspec.convert(quoted, schemas.QuoteReply)

    # --- reservations (services) -------------------------------------------------------------

    @endpoint(Route("POST", "/v1/reservations", "Hold credits for a streaming call",
                    Caller.SERVICE, body=schemas.ReserveBody,
                    reply=schemas.ReservationHeldReply, status=201, msgpack=True,
                    errors=(*ERRORS_SERVICE, 402, 404, 409)))
    async def reserve(body: schemas.ReserveBody) -> schemas.ReservationHeldReply:
        held = await billing.reserve(
            UserId(body.user_id),
            parse_key("reservation_id", body.reservation_id),
            amount_cents=body.amount_cents,
            metric=body.metric,
            ttl_s=body.ttl_seconds,
            metadata=body.metadata,
        )
        view = held.to_dict()
        view["expires_at"] = iso_ms(view.pop("expires_at_ms"))
        return msgspec.convert(view, schemas.ReservationHeldReply)

    @endpoint(Route("GET", "/v1/reservations/{reservation_id}", "A reservation",
                    Caller.SERVICE, reply=schemas.ReservationReply,
                    errors=(400, 401, 403, 404, 503)))
    async def get_reservation(reservation_id: str) -> schemas.ReservationReply:
        return reservation_reply(await billing.get_reservation(reservation_id))

    @endpoint(Route("POST", "/v1/reservations/{reservation_id}/commit",
                    "Charge the actual usage and release the rest of the hold",
                    Caller.SERVICE, body=schemas.CommitBody, reply=schemas.CommitReply,
                    msgpack=True, errors=(*ERRORS_SERVICE, 404, 409)))
    async def commit_reservation(body: schemas.CommitBody,
                                 reservation_id: str) -> schemas.CommitReply:
        committed = await billing.commit_reservation(
            reservation_id,
            event_id=body.event_id,
            metric=body.metric,
            cost_cents=body.cost_cents,
            cost_micros=body.cost_micros,
            agent_id=AgentId(body.agent_id) if body.agent_id is not None else None,
            metadata=body.metadata,
        )
        return schemas.CommitReply(success=True, **committed.to_dict())

    @endpoint(Route("DELETE", "/v1/reservations/{reservation_id}", "Release a hold",
                    Caller.SERVICE, reply=schemas.ReleaseReply,
                    errors=(400, 401, 403, 404, 409, 503)))
    async def release_reservation(reservation_id: str) -> schemas.ReleaseReply:
        released = await billing.release_reservation(reservation_id)
        return msgspec.convert(released.to_dict(), schemas.ReleaseReply)

    # --- later issues ------------------------------------------------------------------------

    def not_configured(what: str, name: str) -> Handler:
        async def handler() -> Response:
            raise ApiError("not_configured", f"{what} are not configured on this server")

        handler.__name__ = name
        return handler

    if stripe is not None:
        register_payment_routes(endpoint, billing, stripe)
    register_subscription_routes(endpoint, billing, stripe, billing.wall_clock_ms)
    if lago_webhooks is not None:
        @endpoint(Route("POST", "/webhooks/lago", "Lago events (verified by X-Lago-Signature)",
                        Caller.PUBLIC, reply=schemas.WebhookReply, errors=(400, 409, 413, 503)))
        async def lago_webhook() -> schemas.WebhookReply:
            outcome = await lago_webhooks.handle(await request.get_data(), request.headers)
            return schemas.WebhookReply(True, outcome)

    served = {(route.method, route.path) for route in routes}
    for method, path, what in NOT_CONFIGURED_ROUTES:
        if (method, path) in served:
            continue
        endpoint(Route(method, path, f"{what}: not configured on this server", Caller.PUBLIC,
                       errors=(503,), owner=what))(
            not_configured(what, f"not_configured {method} {path}"))

    document = openapi_document(routes)
    return app


NOT_CONFIGURED_ROUTES = (
    ("POST", "/v1/credits/purchase", "Stripe payments"),
    ("GET", "/v1/payments", "Stripe payments"),
    ("POST", "/webhooks/stripe", "Stripe webhooks"),
    ("POST", "/webhooks/lago", "Lago webhooks"),
)


def _int_arg(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit():
        raise InvalidInput(f"{name} must be a non-negative integer", {"field": name})
    return require_int(name, int(text), 0, 10**9)
