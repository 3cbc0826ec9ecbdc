"""The exceptions the client raises: one class per error code the server sends.

The hierarchy (error codes in brackets); catch a parent to catch its family:

    BillingApiError  [any other code, and `unexpected_response` for unreadable answers]
    ├── BadRequest  [bad_request]
    ├── Unauthorized  [unauthorized]
    ├── Forbidden  [forbidden]
    ├── NotFound  [not_found]
    │   └── AccountNotFound  [account_not_found]
    ├── MethodNotAllowed  [method_not_allowed]
    ├── InsufficientCredits  [insufficient_credits]
    │   └── SpendLimitExceeded  [spend_limit_exceeded]
    ├── Conflict  [conflict]
    │   ├── DuplicateEvent  [duplicate_event]
    │   ├── IdempotencyConflict  [idempotency_conflict]
    │   └── ReservationExpired  [reservation_expired]
    ├── PayloadTooLarge  [payload_too_large]
    ├── UnsupportedMediaType  [unsupported_media_type]
    ├── Overloaded  [overloaded]
    │   └── EngineUnavailable  [engine_unavailable]
    ├── NotConfigured  [not_configured]
    ├── EngineStopped  [engine_stopped]
    ├── ExternalServiceError  [external_service_error]
    └── InternalError  [internal_error]

Transport failures are not wrapped: they surface as `httpx.TransportError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BillingApiError(Exception):
    """An error answer from the server (or an answer the client could not read)."""

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class BadRequest(BillingApiError):
    pass


class Unauthorized(BillingApiError):
    pass


class Forbidden(BillingApiError):
    pass


class NotFound(BillingApiError):
    pass


class AccountNotFound(NotFound):
    pass


class MethodNotAllowed(BillingApiError):
    pass


class InsufficientCredits(BillingApiError):
    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(status, code, message, details)
        self.balance_cents: int | None = self.details.get("balance_cents")
        self.available_cents: int | None = self.details.get("available_cents")
        self.required_cents: int | None = self.details.get("required_cents")


class SpendLimitExceeded(InsufficientCredits):
    """A hard spend cap would be passed (402): `resets_at` says when its window restarts."""

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(status, code, message, details)
        self.limit_cents: int | None = self.details.get("limit_cents")
        self.spent_cents: int | None = self.details.get("spent_cents")
        self.resets_at: str | None = self.details.get("resets_at")


class Conflict(BillingApiError):
    pass


class DuplicateEvent(Conflict):
    """The event/reservation id was already applied; `original` is what it produced.

    `original` is the typed result of the call (e.g. `UsageResult`) when the details could be
    read as one, else the raw details dict.
    """

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None, original: Any = None) -> None:
        super().__init__(status, code, message, details)
        self.original: Any = self.details if original is None else original


class IdempotencyConflict(Conflict):
    pass


class ReservationExpired(Conflict):
    pass


class PayloadTooLarge(BillingApiError):
    pass


class UnsupportedMediaType(BillingApiError):
    pass


class Overloaded(BillingApiError):
    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(status, code, message, details)
        self.retry_after = retry_after


class NotConfigured(BillingApiError):
    pass


class EngineUnavailable(Overloaded):
    """The HTTP worker could not reach the engine process (it is restarting): retried like
    `overloaded`, after Retry-After."""


class EngineStopped(BillingApiError):
    pass


class ExternalServiceError(BillingApiError):
    pass


class InternalError(BillingApiError):
    pass


class RequestTimeout(BillingApiError):
    """The server gave up on the request (REQUEST_TIMEOUT_SECONDS): it may still have been
    applied; calls the server deduplicates are retried with the same key."""


_ERRORS: dict[str, type[BillingApiError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "account_not_found": AccountNotFound,
    "method_not_allowed": MethodNotAllowed,
    "insufficient_credits": InsufficientCredits,
    "spend_limit_exceeded": SpendLimitExceeded,
    "conflict": Conflict,
    "duplicate_event": DuplicateEvent,
    "idempotency_conflict": IdempotencyConflict,
    "reservation_expired": ReservationExpired,
    "payload_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "overloaded": Overloaded,
    "not_configured": NotConfigured,
    "engine_stopped": EngineStopped,
    "engine_unavailable": EngineUnavailable,
    "external_service_error": ExternalServiceError,
    "internal_error": InternalError,
    "request_timeout": RequestTimeout,
}
