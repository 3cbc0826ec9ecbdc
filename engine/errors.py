"""The one domain error hierarchy. The API maps each class to an HTTP status once.

The assertion rule, three kinds of check and nothing else:

- `raise SomeBillingError(...)`: a refusal the caller can act on (bad input, not enough
  credits, a key used before). One check per fault, each with its own message and, for
  input, `details.field`, so the caller learns exactly what to fix.
- `require(condition, message, *arguments)`: guards anything whose failure would store a
  wrong balance or a state no rule produces (an invariant). Always on; it stops the command,
  not the engine.
- bare `assert`: type narrowing only (telling the type checker what a `require` or the
  control flow already established). It is the only check `python -O` may strip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BillingError(Exception):
    """Base of every error the engine reports to a caller."""

    code: str = "internal_error"

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class InvalidInput(BillingError):
    code = "bad_request"


class AccountNotFound(BillingError):
    code = "account_not_found"


class AccountClosed(BillingError):
    """409 `conflict` with `details.reason = "account_closed"`."""

    code = "conflict"


class AccountExists(BillingError):
    code = "conflict"


class InsufficientCredits(BillingError):
    """Carries the numbers a caller needs to decide what to do next."""

    code = "insufficient_credits"

    def __init__(self, balance_cents: int, available_cents: int, required_cents: int) -> None:
        super().__init__(
            f"insufficient credits: {required_cents} required, {available_cents} available",
            {
                "balance_cents": balance_cents,
                "available_cents": available_cents,
                "required_cents": required_cents,
            },
        )
        self.balance_cents = balance_cents
        self.available_cents = available_cents
        self.required_cents = required_cents


class DuplicateEvent(BillingError):
    """A repeated idempotency key with the same request: carries the original result."""

    code = "duplicate_event"

    def __init__(self, key: str, original: Mapping[str, Any]) -> None:
        super().__init__(f"event {key!r} was already applied", dict(original))
        self.key = key
        self.original = dict(original)


class IdempotencyConflict(BillingError):
    """The same idempotency key with a different request: a client bug, never a retry."""

    code = "idempotency_conflict"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"key {key!r} was already used for a different request", {"key": key}
        )
        self.key = key


class NotFound(BillingError):
    code = "not_found"


class NotYetApplicable(BillingError):
    """An event that depends on one not applied yet (a refund before its payment): 409, so
    that its sender delivers it again later."""

    code = "conflict"


class Conflict(BillingError):
    """The request names something whose state refuses it (say, a void of a voided lot)."""

    code = "conflict"


class ReservationExpired(BillingError):
    code = "reservation_expired"


class ReservationClosed(BillingError):
    """A reservation already committed or released cannot take the other path."""

    code = "conflict"


class Overloaded(BillingError):
    """A bounded queue is full; the caller should retry after a short pause."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class EngineStopped(BillingError):
    """The engine refused or lost a write (fail-stop after a storage fault)."""

    code = "engine_stopped"


class InvariantViolation(Exception):
    """A state no rule can produce. Not a BillingError: it is a bug, and the command that
    would have produced it is refused rather than stored."""


def require(condition: bool, message: str, *arguments: object) -> None:
    """An invariant check that, unlike `assert`, survives `python -O`. The message is
    formatted (`message % arguments`) only when the check fails: these run on every debit."""
    if not condition:
        raise InvariantViolation(message % arguments if arguments else message)


class NotConfigured(BillingError):
    code = "not_configured"


class ExternalServiceError(BillingError):
    code = "external_service_error"
