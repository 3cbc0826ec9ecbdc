"""Every decision of a call, and no I/O: `_Spec` (the request, built once), `_Routes` (one
spec per route), `_Attempts` (after each attempt: return, wait and retry, or raise) and the
decoding of answers into results and exceptions. The two clients only send and sleep.
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from ._errors import _ERRORS, BillingApiError, DuplicateEvent, Overloaded
from ._results import (
    AutoRefill,
    Balance,
    BalanceCheck,
    BatchItem,
    BatchResult,
    BillingAccount,
    Checkout,
    CommitResult,
    CreditResult,
    Deleted,
    ErrorInfo,
    GrantResult,
    Health,
    Lots,
    ParkedWebhooks,
    PaymentsPage,
    Portal,
    Purchase,
    Quote,
    Ready,
    ReferralGrantResult,
    ReleaseResult,
    Resent,
    Reservation,
    ReservationHeld,
    SpendControls,
    SubscriptionState,
    TransactionPage,
    UsageResult,
    UsageSummary,
    WebhookEndpoint,
    WebhookEndpoints,
)

T = TypeVar("T")

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0
RETRY_AFTER_MAX_S = 5.0  # a server asking for longer is better answered by the caller
USER_AGENT = "z-billing-client/0.2"
# Statuses after which the request may or may not have been applied: a proxy or gateway
# gave up while the server may still have committed it.
_AMBIGUOUS_STATUSES = frozenset({502, 504})

# Decimals go out as strings: JSON numbers would be read as binary floats by many parsers.
_encoder = msgspec.json.Encoder(decimal_format="string")


# --- decoding -------------------------------------------------------------------------------

Replay = Callable[[Mapping[str, Any]], Any]


def _unexpected(response: httpx.Response, why: str) -> BillingApiError:
    return BillingApiError(response.status_code, "unexpected_response", why,
                           {"body": response.text[:500]})


def _json(response: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise _unexpected(response, "the body is not JSON") from None


def _convert(response: httpx.Response, data: Any, kind: type[T]) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as error:
        raise _unexpected(response, f"unexpected {kind.__name__} shape: {error}") from None


def _retry_after(response: httpx.Response, details: Mapping[str, Any]) -> float | None:
    header = response.headers.get("Retry-After")
    try:
        return float(header) if header is not None else float(details["retry_after_s"])
    except (KeyError, TypeError, ValueError):
        return None


def _error(response: httpx.Response, replay: Replay | None = None) -> BillingApiError:
    """The typed exception for an error response; `replay` reads a duplicate's original."""
    try:
        payload = msgspec.json.decode(response.content)
        info = msgspec.convert(payload["error"], ErrorInfo)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError):
        return _unexpected(response, f"HTTP {response.status_code} without an error body")
    kind = _ERRORS.get(info.code, BillingApiError)
    if kind is DuplicateEvent:
        original = None
        if replay is not None:
            try:
                original = replay(info.details)
            except (msgspec.ValidationError, KeyError, TypeError):
                original = None  # not the shape this call returns: keep the raw details
        return DuplicateEvent(response.status_code, info.code, info.message, info.details,
                              original)
    if issubclass(kind, Overloaded):
        return kind(response.status_code, info.code, info.message, info.details,
                    _retry_after(response, info.details))
    return kind(response.status_code, info.code, info.message, info.details)


def _iso_ms(value: Any) -> str | None:
    if value is None:
        return None
    moment = datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record_view(details: Mapping[str, Any]) -> dict[str, Any]:
    """A stored reservation record (epoch-ms fields) in the API's ISO-timestamp shape."""
    view = dict(details)
    for name in ("created_at_ms", "expires_at_ms", "closed_at_ms"):
        if name in view:
            view[name.removesuffix("_ms")] = _iso_ms(view.pop(name))
    return view


def _plain(kind: type[T]) -> Callable[[httpx.Response, Any, bool], T]:
    def decode(response: httpx.Response, data: Any, _maybe_landed: bool) -> T:
        return _convert(response, data, kind)

    return decode


def _replay_as(kind: type[T], *, record: bool = False) -> Callable[[Mapping[str, Any]], T]:
    def replay(details: Mapping[str, Any]) -> T:
        return msgspec.convert(_record_view(details) if record else dict(details), kind)

    return replay


def _decode_batch(response: httpx.Response, data: Any, maybe_landed: bool) -> BatchResult:
    """A batch whose earlier attempt may have landed: its duplicates are our own events."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise _unexpected(response, "unexpected batch shape")
    items: list[BatchItem] = []
    for raw in data["results"]:
        if not isinstance(raw, dict):
            raise _unexpected(response, "unexpected batch item")
        if raw.get("success"):
            items.append(BatchItem(success=True, event_id=raw.get("event_id"),
                                   result=_convert(response, raw, UsageResult)))
            continue
        error = _convert(response, raw.get("error"), ErrorInfo)
        if maybe_landed and error.code == "duplicate_event":
            try:
                original = msgspec.convert(error.details, UsageResult)
            except msgspec.ValidationError:
                pass
            else:
                items.append(BatchItem(success=True, event_id=raw.get("event_id"),
                                       result=original))
                continue
        items.append(BatchItem(success=False, event_id=raw.get("event_id"), error=error))
    processed = sum(1 for item in items if item.success)
    return BatchResult(results=items, processed=processed, failed=len(items) - processed)


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec(Generic[T]):
    """One request, fully built before the first attempt so retries resend it unchanged."""

    method: str
    path: str
    decode: Callable[[httpx.Response, Any, bool], T]
    body: Any = None
    params: Mapping[str, str | int] | None = None
    headers: Mapping[str, str] | None = None
    retry: bool = False  # only for requests the server deduplicates
    replay: Callable[[Mapping[str, Any]], T] | None = None  # duplicate details -> result

    def request_args(self) -> dict[str, Any]:
        headers = dict(self.headers or {})
        args: dict[str, Any] = {"method": self.method, "url": self.path, "headers": headers}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
            args["content"] = _encoder.encode(self.body)
        if self.params:
            args["params"] = dict(self.params)
        return args


def _new_id() -> str:
    return str(uuid.uuid4())


def _fields(**values: Any) -> dict[str, Any]:
    """A request body without the optional fields the caller left out."""
    return {name: value for name, value in values.items() if value is not None}


def _prompt(provider: str | None, model: str | None, input_tokens: int | None
            ) -> dict[str, Any]:
    """The model call an affordability question is about (sent only when named)."""
    if provider is None and model is None:
        return {}
    return {"prompt": {"provider": provider, "model": model,
                       **_fields(input_tokens=input_tokens)}}


def _controls_body(caps: Sequence[Mapping[str, Any]], timezone: str | None,
                   low_balance_cents: Sequence[int] | None) -> dict[str, Any]:
    return {"caps": [dict(cap) for cap in caps], **_fields(
        timezone=timezone,
        low_balance_cents=None if low_balance_cents is None else list(low_balance_cents))}


def _segment(value: str) -> str:
    return quote(value, safe="")


def _metric(metric: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Decimal quantities become exact strings here; the encoder would too, but this keeps
    # the body a plain JSON-ready dict regardless of encoder settings.
    if metric is None:
        return None
    return {key: str(value) if isinstance(value, Decimal) else value
            for key, value in metric.items()}


def _keyed_credit(path: str, body: Mapping[str, Any], idempotency_key: str | None
                  ) -> _Spec[CreditResult]:
    """An admin write deduplicated on its Idempotency-Key (one made up when not given), so
    it is retried like a usage event."""
    return _Spec("POST", path, _plain(CreditResult), body=body,
                 headers={"Idempotency-Key": idempotency_key or _new_id()}, retry=True,
                 replay=_replay_as(CreditResult))


class _Routes:
    """One spec builder per route; shared by the sync and the async client."""

    @staticmethod
    def health() -> _Spec[Health]:
        return _Spec("GET", "/health", _plain(Health), retry=True)

    @staticmethod
    def ready() -> _Spec[Ready]:
        return _Spec("GET", "/ready", _plain(Ready), retry=True)

    @staticmethod
    def create_account() -> _Spec[BillingAccount]:
        return _Spec("POST", "/v1/accounts", _plain(BillingAccount), body={})

    @staticmethod
    def get_account() -> _Spec[BillingAccount]:
        return _Spec("GET", "/v1/accounts/me", _plain(BillingAccount), retry=True)

    @staticmethod
    def close_account() -> _Spec[Deleted]:
        return _Spec("DELETE", "/v1/accounts/me", _plain(Deleted))

    @staticmethod
    def balance() -> _Spec[Balance]:
        return _Spec("GET", "/v1/credits/balance", _plain(Balance), retry=True)

    @staticmethod
    def transactions(limit: int, offset: int, before: str | None) -> _Spec[TransactionPage]:
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if before is not None:
            params["before"] = before
        return _Spec("GET", "/v1/credits/transactions", _plain(TransactionPage),
                     params=params, retry=True)

    @staticmethod
    def auto_refill() -> _Spec[AutoRefill]:
        return _Spec("GET", "/v1/credits/auto-refill", _plain(AutoRefill), retry=True)

    @staticmethod
    def set_auto_refill(enabled: bool, trigger_below_cents: int | None,
                        refill_amount_cents: int | None) -> _Spec[AutoRefill]:
        # Not retried: a setting is idempotent, but a retry could undo a concurrent change.
        body = {"enabled": enabled, **_fields(trigger_below_cents=trigger_below_cents,
                                              refill_amount_cents=refill_amount_cents)}
        return _Spec("POST", "/v1/credits/auto-refill", _plain(AutoRefill), body=body)

    @staticmethod
    def purchase_credits(amount_usd: Decimal | int | str) -> _Spec[Purchase]:
        # Not retried: each call opens a new Checkout Session (only a paid one credits).
        return _Spec("POST", "/v1/credits/purchase", _plain(Purchase),
                     body={"amount_usd": str(amount_usd)})

    @staticmethod
    def subscription() -> _Spec[SubscriptionState]:
        return _Spec("GET", "/v1/subscriptions/me", _plain(SubscriptionState), retry=True)

    @staticmethod
    def subscribe(plan: str) -> _Spec[Checkout]:
        return _Spec("POST", "/v1/subscriptions/checkout", _plain(Checkout),
                     body={"plan": plan})

    @staticmethod
    def cancel_subscription() -> _Spec[SubscriptionState]:
        # Retried: cancelling twice is the same as once.
        return _Spec("POST", "/v1/subscriptions/cancel", _plain(SubscriptionState), body={},
                     retry=True)

    @staticmethod
    def billing_portal() -> _Spec[Portal]:
        return _Spec("POST", "/v1/subscriptions/portal", _plain(Portal), body={})

    @staticmethod
    def set_plan(user_id: object, plan: str,
                 monthly_credits: int | None) -> _Spec[SubscriptionState]:
        body = {"user_id": str(user_id), "plan": plan,
                **_fields(monthly_credits=monthly_credits)}
        return _Spec("POST", "/v1/admin/subscriptions", _plain(SubscriptionState), body=body)

    @staticmethod
    def payments(limit: int, starting_after: str | None) -> _Spec[PaymentsPage]:
        params: dict[str, str | int] = {"limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return _Spec("GET", "/v1/payments", _plain(PaymentsPage), params=params, retry=True)

    @staticmethod
    def add_credits(user_id: object, amount_cents: int, reason: str, kind: str, *,
                    idempotency_key: str | None, lot: Mapping[str, Any]
                    ) -> _Spec[CreditResult]:
        body = {"user_id": str(user_id), "amount_cents": amount_cents, "reason": reason,
                "type": kind, **_fields(**lot)}
        return _keyed_credit("/v1/credits/add", body, idempotency_key)

    @staticmethod
    def lots() -> _Spec[Lots]:
        return _Spec("GET", "/v1/credits/lots", _plain(Lots), retry=True)

    @staticmethod
    def admin_account(user_id: object) -> _Spec[BillingAccount]:
        return _Spec("GET", f"/v1/admin/accounts/{_segment(str(user_id))}",
                     _plain(BillingAccount), retry=True)

    @staticmethod
    def void_lot(user_id: object, lot_id: str, reason: str,
                 idempotency_key: str | None) -> _Spec[CreditResult]:
        body = {"user_id": str(user_id), "lot_id": lot_id, "reason": reason}
        return _keyed_credit("/v1/admin/lots/void", body, idempotency_key)

    @staticmethod
    def debit_credits(user_id: object, amount_cents: int, reason: str,
                      idempotency_key: str | None) -> _Spec[CreditResult]:
        body = {"user_id": str(user_id), "amount_cents": amount_cents, "reason": reason}
        return _keyed_credit("/v1/admin/credits/debit", body, idempotency_key)

    @staticmethod
    def reverse_usage(event_id: str, reason: str) -> _Spec[CreditResult]:
        # Retried: the server reverses an event once, and answers a repeat with the original.
        return _Spec("POST", "/v1/admin/usage/reverse", _plain(CreditResult),
                     body={"event_id": event_id, "reason": reason}, retry=True,
                     replay=_replay_as(CreditResult))

    @staticmethod
    def signup_grant(user_id: object) -> _Spec[GrantResult]:
        # Granted once per account by the server, so a resend is safe.
        return _Spec("POST", "/v1/credits/signup-grant", _plain(GrantResult),
                     body={"user_id": str(user_id)}, retry=True)

    @staticmethod
    def daily_grant(user_id: object) -> _Spec[GrantResult]:
        return _Spec("POST", "/v1/credits/daily-grant", _plain(GrantResult),
                     body={"user_id": str(user_id)}, retry=True)

    @staticmethod
    def referral_grant(inviter_user_id: object, invitee_user_id: object
                       ) -> _Spec[ReferralGrantResult]:
        body = {"inviter_user_id": str(inviter_user_id),
                "invitee_user_id": str(invitee_user_id)}
        return _Spec("POST", "/v1/credits/referral-grant", _plain(ReferralGrantResult),
                     body=body, retry=True)

    @staticmethod
    def report_usage(
        user_id: object, *, event_id: str | None, metric: Mapping[str, Any] | None,
        cost_cents: int | None, cost_micros: int | None, agent_id: object | None,
        timestamp: str | datetime.datetime | None, metadata: Mapping[str, Any] | None,
    ) -> _Spec[UsageResult]:
        if isinstance(timestamp, datetime.datetime):
            timestamp = timestamp.isoformat()
        event = {"event_id": event_id or _new_id(), "user_id": str(user_id), **_fields(
            metric=_metric(metric), cost_cents=cost_cents, cost_micros=cost_micros,
            agent_id=None if agent_id is None else str(agent_id), timestamp=timestamp,
            metadata=None if metadata is None else dict(metadata))}
        return _Spec("POST", "/v1/usage", _plain(UsageResult), body=event, retry=True,
                     replay=_replay_as(UsageResult))

    @staticmethod
    def report_usage_batch(events: Sequence[Mapping[str, Any]]) -> _Spec[BatchResult]:
        # Ids are fixed now, before the first attempt, so a resent batch is deduplicated.
        prepared = []
        for event in events:
            item = dict(event)
            item["event_id"] = item.get("event_id") or _new_id()
            if "user_id" in item:
                item["user_id"] = str(item["user_id"])
            if isinstance(item.get("metric"), Mapping):
                item["metric"] = _metric(item["metric"])
            prepared.append(item)
        return _Spec("POST", "/v1/usage/batch", _decode_batch, body={"events": prepared},
                     retry=True)

    @staticmethod
    def check_balance(user_id: object, required_cents: int, *, agent_id: object | None,
                      provider: str | None, model: str | None, input_tokens: int | None
                      ) -> _Spec[BalanceCheck]:
        """A model without `input_tokens` asks the original's way (its reserve when
        `required_cents` is 0); with them, how many output tokens are affordable."""
        body = {"user_id": str(user_id), "required_cents": required_cents,
                **_fields(agent_id=None if agent_id is None else str(agent_id)),
                **(_fields(provider=provider, model=model) if input_tokens is None
                   else _prompt(provider, model, input_tokens))}
        return _Spec("POST", "/v1/usage/check", _plain(BalanceCheck), body=body, retry=True)

    @staticmethod
    def spend_controls() -> _Spec[SpendControls]:
        return _Spec("GET", "/v1/credits/spend-controls", _plain(SpendControls), retry=True)

    @staticmethod
    def set_spend_controls(caps: Sequence[Mapping[str, Any]], timezone: str | None,
                           low_balance_cents: Sequence[int] | None) -> _Spec[SpendControls]:
        # Retried: the same settings twice are the same settings.
        body = _controls_body(caps, timezone, low_balance_cents)
        return _Spec("POST", "/v1/credits/spend-controls", _plain(SpendControls), body=body,
                     retry=True)

    @staticmethod
    def admin_spend_controls(user_id: object) -> _Spec[SpendControls]:
        return _Spec("GET", f"/v1/admin/accounts/{_segment(str(user_id))}/spend-controls",
                     _plain(SpendControls), retry=True)

    @staticmethod
    def admin_set_spend_controls(user_id: object, caps: Sequence[Mapping[str, Any]],
                                 timezone: str | None, low_balance_cents: Sequence[int] | None
                                 ) -> _Spec[SpendControls]:
        body = _controls_body(caps, timezone, low_balance_cents)
        return _Spec("POST", f"/v1/admin/accounts/{_segment(str(user_id))}/spend-controls",
                     _plain(SpendControls), body=body, retry=True)

    @staticmethod
    def usage_summary(user_id: object | None, from_day: datetime.date | str | None,
                      to_day: datetime.date | str | None, group_by: str
                      ) -> _Spec[UsageSummary]:
        params: dict[str, str | int] = {"group_by": group_by, **_fields(
            **{"from": None if from_day is None else str(from_day),
               "to": None if to_day is None else str(to_day)})}
        path = ("/v1/usage/summary" if user_id is None
                else f"/v1/admin/accounts/{_segment(str(user_id))}/usage/summary")
        return _Spec("GET", path, _plain(UsageSummary), params=params, retry=True)

    @staticmethod
    def create_webhook(url: str, event_types: Sequence[str]) -> _Spec[WebhookEndpoint]:
        # Not retried: a retry would register a second endpoint with another secret.
        return _Spec("POST", "/v1/admin/webhooks", _plain(WebhookEndpoint),
                     body={"url": url, "event_types": list(event_types)})

    @staticmethod
    def webhooks() -> _Spec[WebhookEndpoints]:
        return _Spec("GET", "/v1/admin/webhooks", _plain(WebhookEndpoints), retry=True)

    @staticmethod
    def rotate_webhook(endpoint_id: str) -> _Spec[WebhookEndpoint]:
        # Not retried: each rotation makes a new secret.
        return _Spec("POST", f"/v1/admin/webhooks/{_segment(endpoint_id)}/rotate",
                     _plain(WebhookEndpoint), body={})

    @staticmethod
    def delete_webhook(endpoint_id: str) -> _Spec[WebhookEndpoint]:
        return _Spec("DELETE", f"/v1/admin/webhooks/{_segment(endpoint_id)}",
                     _plain(WebhookEndpoint))

    @staticmethod
    def webhook_dead_letters(endpoint_id: str) -> _Spec[ParkedWebhooks]:
        return _Spec("GET", f"/v1/admin/webhooks/{_segment(endpoint_id)}/dead-letters",
                     _plain(ParkedWebhooks), retry=True)

    @staticmethod
    def resend_webhooks(endpoint_id: str, sequences: Sequence[int] | None) -> _Spec[Resent]:
        body = _fields(sequences=None if sequences is None else list(sequences))
        return _Spec("POST", f"/v1/admin/webhooks/{_segment(endpoint_id)}/resend",
                     _plain(Resent), body=body)

    @staticmethod
    def quote(metric: Mapping[str, Any]) -> _Spec[Quote]:
        return _Spec("POST", "/v1/usage/quote", _plain(Quote), body={"metric": _metric(metric)},
                     retry=True)

    @staticmethod
    def reserve(user_id: object, *, reservation_id: str | None, amount_cents: int | None,
                metric: Mapping[str, Any] | None, ttl_seconds: int,
                metadata: Mapping[str, Any] | None, agent_id: object | None = None,
                clamp: bool = False, prompt: Mapping[str, Any] | None = None
                ) -> _Spec[ReservationHeld]:
        body = {"reservation_id": reservation_id or _new_id(), "user_id": str(user_id),
                "ttl_seconds": ttl_seconds,
                **_fields(amount_cents=amount_cents, metric=_metric(metric),
                          metadata=None if metadata is None else dict(metadata),
                          agent_id=None if agent_id is None else str(agent_id),
                          clamp=clamp or None, **(prompt or {}))}
        return _Spec("POST", "/v1/reservations", _plain(ReservationHeld), body=body,
                     retry=True, replay=_replay_as(ReservationHeld, record=True))

    @staticmethod
    def get_reservation(reservation_id: str) -> _Spec[Reservation]:
        return _Spec("GET", f"/v1/reservations/{_segment(reservation_id)}",
                     _plain(Reservation), retry=True)

    @staticmethod
    def commit_reservation(
        reservation_id: str, *, event_id: str | None, metric: Mapping[str, Any] | None,
        cost_cents: int | None, cost_micros: int | None, agent_id: object | None,
        metadata: Mapping[str, Any] | None,
    ) -> _Spec[CommitResult]:
        body = _fields(event_id=event_id, metric=_metric(metric), cost_cents=cost_cents,
                       cost_micros=cost_micros,
                       agent_id=None if agent_id is None else str(agent_id),
                       metadata=None if metadata is None else dict(metadata))
        return _Spec("POST", f"/v1/reservations/{_segment(reservation_id)}/commit",
                     _plain(CommitResult), body=body, retry=True,
                     replay=_replay_as(CommitResult))

    @staticmethod
    def release_reservation(reservation_id: str) -> _Spec[ReleaseResult]:
        return _Spec("DELETE", f"/v1/reservations/{_segment(reservation_id)}",
                     _plain(ReleaseResult), retry=True,
                     replay=_replay_as(ReleaseResult, record=True))


# --- the retry decision ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wait:
    seconds: float


class _Attempts(Generic[T]):
    """Decides after each attempt: the result, a `_Wait` before the next attempt, or raise."""

    def __init__(self, spec: _Spec[T], retries: int) -> None:
        self.spec = spec
        self.retries = retries
        self.attempt = 0
        self.maybe_landed = False  # an earlier attempt may have been applied

    def _can_retry(self) -> bool:
        return self.spec.retry and self.attempt < self.retries

    def _backoff(self) -> _Wait:
        # Full jitter: spreads out clients that failed together.
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**self.attempt)
        self.attempt += 1
        return _Wait(random.uniform(0, ceiling))  # jitter, not security

    def failed(self, error: httpx.TransportError) -> _Wait:
        if not self._can_retry():
            raise error
        self.maybe_landed = True
        return self._backoff()

    def answered(self, response: httpx.Response) -> T | _Wait:
        if response.is_success:
            return self.spec.decode(response, _json(response), self.maybe_landed)
        error = _error(response, self.spec.replay)
        if (isinstance(error, DuplicateEvent) and self.maybe_landed
                and self.spec.replay is not None and error.original is not error.details):
            return error.original  # our own earlier attempt landed: exactly once
        ambiguous = response.status_code in _AMBIGUOUS_STATUSES
        if (ambiguous or isinstance(error, Overloaded)) and self._can_retry():
            self.maybe_landed = self.maybe_landed or ambiguous
            wait = self._backoff()
            if isinstance(error, Overloaded) and error.retry_after is not None:
                wait = _Wait(max(wait.seconds, min(error.retry_after, RETRY_AFTER_MAX_S)))
            return wait
        raise error


# --- headers --------------------------------------------------------------------------------


def _headers(service_key: str | None, admin_key: str | None,
             bearer_token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if service_key is not None:
        headers["X-API-Key"] = service_key
    if admin_key is not None:
        headers["X-Admin-Key"] = admin_key
    if bearer_token is not None:
        headers["Authorization"] = f"Bearer {bearer_token}"
    return headers
