"""Python client for the z-billing HTTP API: `BillingClient` (sync) and `AsyncBillingClient`.

Both classes are thin: every route is a `_Spec` built by one shared function, and one shared
`_Attempts` object decides, per response or transport error, whether to return, retry or raise.
Only the sending and the sleeping differ between the two (the async client uses anyio, so it
runs under trio and asyncio alike).

Retries are limited to requests the server deduplicates (GETs, usage/reservation calls that
carry an event or reservation id, credits that carry an Idempotency-Key). When an earlier
attempt may have landed (a transport error or a 502/504), a `duplicate_event` answer means our
own request was applied once, so the original result it carries is returned as success.

The package imports only httpx (with httpx-ws for the balance WebSocket), anyio and msgspec,
never the server's code, so an application can use it without the server's dependencies. Its
private modules: `_results` (typed results), `_errors` (one exception per error code),
`_requests` (every decision of a call, no I/O), `_sync` and `_async` (the clients, which only
send and sleep), `_ws` (the balance event iterators, sync and async).
"""

from ._async import AsyncBillingClient
from ._errors import (
    AccountNotFound,
    BadRequest,
    BillingApiError,
    Conflict,
    DuplicateEvent,
    EngineStopped,
    EngineUnavailable,
    ExternalServiceError,
    Forbidden,
    IdempotencyConflict,
    InsufficientCredits,
    InternalError,
    MethodNotAllowed,
    NotConfigured,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ReservationExpired,
    SpendLimitExceeded,
    Unauthorized,
    UnsupportedMediaType,
)
from ._results import (
    AutoRefill,
    Balance,
    BalanceCheck,
    BalanceEvent,
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
    Lot,
    LotDraw,
    Lots,
    NextExpiry,
    ParkedWebhook,
    ParkedWebhooks,
    Payment,
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
    SpendCap,
    SpendControls,
    SubscriptionState,
    Transaction,
    TransactionPage,
    UsageGroup,
    UsageResult,
    UsageSummary,
    UsageTotals,
    WebhookEndpoint,
    WebhookEndpoints,
)
from ._sync import BillingClient
from ._ws import AsyncBalanceEvents, BalanceEvents

__all__ = [
    "AccountNotFound",
    "AsyncBalanceEvents",
    "AsyncBillingClient",
    "AutoRefill",
    "BadRequest",
    "Balance",
    "BalanceCheck",
    "BalanceEvent",
    "BalanceEvents",
    "BatchItem",
    "BatchResult",
    "BillingAccount",
    "BillingApiError",
    "BillingClient",
    "Checkout",
    "CommitResult",
    "Conflict",
    "CreditResult",
    "Deleted",
    "DuplicateEvent",
    "EngineStopped",
    "EngineUnavailable",
    "ErrorInfo",
    "ExternalServiceError",
    "Forbidden",
    "GrantResult",
    "Health",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InternalError",
    "Lot",
    "LotDraw",
    "Lots",
    "MethodNotAllowed",
    "NextExpiry",
    "NotConfigured",
    "NotFound",
    "Overloaded",
    "ParkedWebhook",
    "ParkedWebhooks",
    "PayloadTooLarge",
    "Payment",
    "PaymentsPage",
    "Portal",
    "Purchase",
    "Quote",
    "Ready",
    "ReferralGrantResult",
    "ReleaseResult",
    "RequestTimeout",
    "Resent",
    "Reservation",
    "ReservationExpired",
    "ReservationHeld",
    "SpendCap",
    "SpendControls",
    "SpendLimitExceeded",
    "SubscriptionState",
    "Transaction",
    "TransactionPage",
    "Unauthorized",
    "UnsupportedMediaType",
    "UsageGroup",
    "UsageResult",
    "UsageSummary",
    "UsageTotals",
    "WebhookEndpoint",
    "WebhookEndpoints",
]

# Public objects say they live here, as httpx's do: reprs, tracebacks and pickles then name
# `api.client.X`, which stays true when the private modules are rearranged.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
