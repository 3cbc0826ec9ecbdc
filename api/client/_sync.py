"""`BillingClient`: the synchronous client over httpx; it sends each `_Spec` and sleeps."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import httpx

from ._requests import T, _Attempts, _headers, _prompt, _Routes, _Spec, _Wait
from ._results import (
    AutoRefill,
    Balance,
    BalanceCheck,
    BatchResult,
    BillingAccount,
    Checkout,
    CommitResult,
    CreditResult,
    Deleted,
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
from ._ws import BalanceEvents, _read_refusal


class BillingClient:
    """Synchronous client. Methods raise `BillingApiError` subclasses or `httpx.TransportError`
    (after retries, where the call is safe to retry)."""

    def __init__(self, base_url: str, *, service_key: str | None = None,
                 admin_key: str | None = None, bearer_token: str | None = None,
                 timeout: float = 10.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.retries = retries
        self._bearer_token = bearer_token
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers=_headers(service_key, admin_key, bearer_token),
                                  event_hooks={"response": [_read_refusal]})

    def _send(self, spec: _Spec[T]) -> T:
        attempts = _Attempts(spec, self.retries)
        while True:
            try:
                response = self._http.request(**spec.request_args())
            except httpx.TransportError as error:
                step = attempts.failed(error)
            else:
                step = attempts.answered(response)
            if not isinstance(step, _Wait):
                return step
            time.sleep(step.seconds)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def balance_events(self, *, reconnect: bool = True) -> BalanceEvents:
        """The caller's balance after every committed change (`GET /ws/balance`), an
        iterator that connects again after a server restart (see `BalanceEvents`)."""
        return BalanceEvents(self._http, self._bearer_token, reconnect)

    def health(self) -> Health:
        return self._send(_Routes.health())

    def ready(self) -> Ready:
        return self._send(_Routes.ready())

    def create_account(self) -> BillingAccount:
        return self._send(_Routes.create_account())

    def get_account(self) -> BillingAccount:
        return self._send(_Routes.get_account())

    def close_account(self) -> Deleted:
        return self._send(_Routes.close_account())

    def balance(self) -> Balance:
        return self._send(_Routes.balance())

    def transactions(self, limit: int = 50, offset: int = 0,
                     before: str | None = None) -> TransactionPage:
        return self._send(_Routes.transactions(limit, offset, before))

    def auto_refill(self) -> AutoRefill:
        return self._send(_Routes.auto_refill())

    def set_auto_refill(self, enabled: bool, trigger_below_cents: int | None = None,
                        refill_amount_cents: int | None = None) -> AutoRefill:
        return self._send(_Routes.set_auto_refill(enabled, trigger_below_cents,
                                                  refill_amount_cents))

    def purchase_credits(self, amount_usd: Decimal | int | str) -> Purchase:
        return self._send(_Routes.purchase_credits(amount_usd))

    def payments(self, limit: int = 10, starting_after: str | None = None) -> PaymentsPage:
        return self._send(_Routes.payments(limit, starting_after))

    def subscription(self) -> SubscriptionState:
        return self._send(_Routes.subscription())

    def subscribe(self, plan: str) -> Checkout:
        return self._send(_Routes.subscribe(plan))

    def cancel_subscription(self) -> SubscriptionState:
        return self._send(_Routes.cancel_subscription())

    def billing_portal(self) -> Portal:
        return self._send(_Routes.billing_portal())

    def set_plan(self, user_id: object, plan: str, *,
                 monthly_credits: int | None = None) -> SubscriptionState:
        return self._send(_Routes.set_plan(user_id, plan, monthly_credits))

    def add_credits(self, user_id: object, amount_cents: int, *, reason: str = "",
                type: str = "bonus", idempotency_key: str | None = None,
                category: str | None = None, priority: int | None = None,
                effective_at: str | None = None, expires_at: str | None = None
                ) -> CreditResult:
        """Grant credits (admin); the lot's attributes not given are the type's defaults."""
        lot = {"category": category, "priority": priority, "effective_at": effective_at,
               "expires_at": expires_at}
        return self._send(_Routes.add_credits(user_id, amount_cents, reason, type,
                                              idempotency_key=idempotency_key, lot=lot))

    def lots(self) -> Lots:
        return self._send(_Routes.lots())

    def admin_account(self, user_id: object) -> BillingAccount:
        return self._send(_Routes.admin_account(user_id))

    def void_lot(self, user_id: object, lot_id: str, *, reason: str = "",
             idempotency_key: str | None = None) -> CreditResult:
        return self._send(_Routes.void_lot(user_id, lot_id, reason, idempotency_key))

    def debit_credits(self, user_id: object, amount_cents: int, *, reason: str = "",
                  idempotency_key: str | None = None) -> CreditResult:
        return self._send(_Routes.debit_credits(user_id, amount_cents, reason,
                                                idempotency_key))

    def reverse_usage(self, event_id: str, *, reason: str = "") -> CreditResult:
        return self._send(_Routes.reverse_usage(event_id, reason))

    def signup_grant(self, user_id: object) -> GrantResult:
        return self._send(_Routes.signup_grant(user_id))

    def daily_grant(self, user_id: object) -> GrantResult:
        return self._send(_Routes.daily_grant(user_id))

    def referral_grant(self, inviter_user_id: object, invitee_user_id: object
                       ) -> ReferralGrantResult:
        return self._send(_Routes.referral_grant(inviter_user_id, invitee_user_id))

    def report_usage(self, user_id: object, *, event_id: str | None = None,
                     metric: Mapping[str, Any] | None = None, cost_cents: int | None = None,
                     cost_micros: int | None = None, agent_id: object | None = None,
                     timestamp: str | datetime.datetime | None = None,
                     metadata: Mapping[str, Any] | None = None) -> UsageResult:
        return self._send(_Routes.report_usage(
            user_id, event_id=event_id, metric=metric, cost_cents=cost_cents,
            cost_micros=cost_micros, agent_id=agent_id, timestamp=timestamp,
            metadata=metadata))

    def report_usage_batch(self, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        return self._send(_Routes.report_usage_batch(events))

    def check_balance(self, user_id: object, required_cents: int = 0, *,
                      agent_id: object | None = None, provider: str | None = None,
                      model: str | None = None, input_tokens: int | None = None
                      ) -> BalanceCheck:
        """Is `required_cents` spendable (balance and caps)? A model alone asks for its
        reserve (the original service's rule, with `required_cents` 0); with the prompt's
        input tokens too, the reply has `max_output_tokens`, the most the caller can afford."""
        return self._send(_Routes.check_balance(
            user_id, required_cents, agent_id=agent_id, provider=provider, model=model,
            input_tokens=input_tokens))

    def spend_controls(self) -> SpendControls:
        return self._send(_Routes.spend_controls())

    def set_spend_controls(self, caps: Sequence[Mapping[str, Any]], *,
                           timezone: str | None = None,
                           low_balance_cents: Sequence[int] | None = None) -> SpendControls:
        """Replace the caller's caps: each `{"period", "limit_cents", "hard", "scope",
        "name"}` (scope "account", "agent" or "service"); `low_balance_cents`: the balances
        below which `balance.low` is sent."""
        return self._send(_Routes.set_spend_controls(caps, timezone, low_balance_cents))

    def admin_spend_controls(self, user_id: object) -> SpendControls:
        return self._send(_Routes.admin_spend_controls(user_id))

    def admin_set_spend_controls(self, user_id: object, caps: Sequence[Mapping[str, Any]],
                                 *, timezone: str | None = None,
                                 low_balance_cents: Sequence[int] | None = None
                                 ) -> SpendControls:
        return self._send(_Routes.admin_set_spend_controls(user_id, caps, timezone,
                                                                low_balance_cents))

    def usage_summary(self, *, from_day: datetime.date | str | None = None,
                      to_day: datetime.date | str | None = None, group_by: str = "day"
                      ) -> UsageSummary:
        """The caller's usage per UTC day, model or agent between two days (both included)."""
        return self._send(_Routes.usage_summary(None, from_day, to_day, group_by))

    def admin_usage_summary(self, user_id: object, *,
                            from_day: datetime.date | str | None = None,
                            to_day: datetime.date | str | None = None, group_by: str = "day"
                            ) -> UsageSummary:
        return self._send(_Routes.usage_summary(user_id, from_day, to_day, group_by))

    def create_webhook(self, url: str, event_types: Sequence[str]) -> WebhookEndpoint:
        """Register an endpoint (admin). Keep the reply's `secret`: it is shown only now."""
        return self._send(_Routes.create_webhook(url, event_types))

    def webhooks(self) -> WebhookEndpoints:
        return self._send(_Routes.webhooks())

    def rotate_webhook(self, endpoint_id: str) -> WebhookEndpoint:
        """A new signing secret (in the reply); the old one signs too for a day."""
        return self._send(_Routes.rotate_webhook(endpoint_id))

    def delete_webhook(self, endpoint_id: str) -> WebhookEndpoint:
        return self._send(_Routes.delete_webhook(endpoint_id))

    def webhook_dead_letters(self, endpoint_id: str) -> ParkedWebhooks:
        return self._send(_Routes.webhook_dead_letters(endpoint_id))

    def resend_webhooks(self, endpoint_id: str, sequences: Sequence[int] | None = None
                        ) -> Resent:
        return self._send(_Routes.resend_webhooks(endpoint_id, sequences))

    def quote(self, metric: Mapping[str, Any]) -> Quote:
        return self._send(_Routes.quote(metric))

    def reserve(self, user_id: object, *, reservation_id: str | None = None,
                amount_cents: int | None = None, metric: Mapping[str, Any] | None = None,
                ttl_seconds: int = 300, metadata: Mapping[str, Any] | None = None,
                agent_id: object | None = None, clamp: bool = False,
                provider: str | None = None, model: str | None = None,
                input_tokens: int | None = None) -> ReservationHeld:
        """Hold credits; `clamp` holds what the balance and caps allow when that is less
        (the reply's `clamped`); naming the model and prompt answers `max_output_tokens`."""
        return self._send(_Routes.reserve(
            user_id, reservation_id=reservation_id, amount_cents=amount_cents, metric=metric,
            ttl_seconds=ttl_seconds, metadata=metadata, agent_id=agent_id, clamp=clamp,
            prompt=_prompt(provider, model, input_tokens)))

    def get_reservation(self, reservation_id: str) -> Reservation:
        return self._send(_Routes.get_reservation(reservation_id))

    def commit_reservation(self, reservation_id: str, *, event_id: str | None = None,
                           metric: Mapping[str, Any] | None = None,
                           cost_cents: int | None = None, cost_micros: int | None = None,
                           agent_id: object | None = None,
                           metadata: Mapping[str, Any] | None = None) -> CommitResult:
        return self._send(_Routes.commit_reservation(
            reservation_id, event_id=event_id, metric=metric, cost_cents=cost_cents,
            cost_micros=cost_micros, agent_id=agent_id, metadata=metadata))

    def release_reservation(self, reservation_id: str) -> ReleaseResult:
        return self._send(_Routes.release_reservation(reservation_id))
