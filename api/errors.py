"""The single error format `{"error": {"code", "message", "details"}}`, mapped once."""

from __future__ import annotations

from typing import Any

from engine.errors import BillingError, Overloaded

STATUS_BY_CODE = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "account_not_found": 404,
    "method_not_allowed": 405,
    "insufficient_credits": 402,
    "spend_limit_exceeded": 402,
    "conflict": 409,
    "duplicate_event": 409,
    "idempotency_conflict": 409,
    "reservation_expired": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "overloaded": 503,
    "not_configured": 503,
    "engine_stopped": 503,
    "engine_unavailable": 503,
    "external_service_error": 502,
    "request_timeout": 504,
    "internal_error": 500,
}


class ApiError(BillingError):
    """An error raised by the HTTP layer itself (auth, content type, routing)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.code = code


def error_body(code: str, message: str, details: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def render(error: BillingError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Body, status and headers for a domain or API error."""
    status = STATUS_BY_CODE.get(error.code, 500)
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after_s)
    if status == 500:
        return error_body("internal_error", "internal error"), 500, headers
    return error_body(error.code, error.message, error.details), status, headers
