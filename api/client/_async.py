"""`AsyncBillingClient`: the asynchronous client over httpx and anyio (trio or asyncio)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import anyio
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

# The async twin under the sync name, so that both clients' signatures read alike.
from ._ws import AsyncBalanceEvents as BalanceEvents
from ._ws import _aread_refusal


class AsyncBillingClient:
    """Asynchronous client (trio or asyncio); same methods and errors as `BillingClient`."""

    def __init__(self, base_url: str, *, service_key: str | None = None,
                 admin_key: str | None = None, bearer_token: str | None = None,
                 timeout: float = 10.0, retries: int = 3,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retries = retries
        self._bearer_token = bearer_token
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                       transport=transport,
                                       headers=_headers(service_key, admin_key, bearer_token),
                                       event_hooks={"response": [_aread_refusal]})

    async def _send(self, spec: _Spec[T]) -> T:
        attempts = _Attempts(spec, self.retries)
        while True:
            try:
                response = await self._http.request(**spec.request_args())
            except httpx.TransportError as error:
                step = attempts.failed(error)
            else:
                step = attempts.answered(response)
            if not isinstance(step, _Wait):
                return step
            await anyio.sleep(step.seconds)  # anyio: the same call under trio and asyncio

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.aclose()

    async def balance_events(self, *, reconnect: bool = True) -> BalanceEvents:
        """The caller's balance after every committed change (`GET /ws/balance`): checks that
        the server takes the token, then `async with` the `AsyncBalanceEvents` it returns
        to receive them (it connects again after a server restart)."""
        return await BalanceEvents(self._http, self._bearer_token, reconnect).check()

    async def health(self) -> Health:
        return await self._send(_Routes.health())

    async def ready(self) -> Ready:
        return await self._send(_Routes.ready())

    async def create_account(self) -> BillingAccount:
        return await self._send(_Routes.create_account())

    async def get_account(self) -> BillingAccount:
        return await self._send(_Routes.get_account())

    async def close_account(self) -> Deleted:
        return await self._send(_Routes.close_account())

    async def balance(self) -> Balance:
        return await self._send(_Routes.balance())

    async def transactions(self, limit: int = 50, offset: int = 0,
                           before: str | None = None) -> TransactionPage:
        return await self._send(_Routes.transactions(limit, offset, before))

    async def auto_refill(self) -> AutoRefill:
        return await self._send(_Routes.auto_refill())

    async def set_auto_refill(self, enabled: bool, trigger_below_cents: int | None = None,
                              refill_amount_cents: int | None = None) -> AutoRefill:
        return await self._send(_Routes.set_auto_refill(enabled, trigger_below_cents,
                                                        refill_amount_cents))

    async def purchase_credits(self, amount_usd: Decimal | int | str) -> Purchase:
        return await self._send(_Routes.purchase_credits(amount_usd))

    async def payments(self, limit: int = 10, starting_after: str | None = None
                       ) -> PaymentsPage:
        return await self._send(_Routes.payments(limit, starting_after))

    async def subscription(self) -> SubscriptionState:
        return await self._send(_Routes.subscription())

    async def subscribe(self, plan: str) -> Checkout:
        return await self._send(_Routes.subscribe(plan))

    async def cancel_subscription(self) -> SubscriptionState:
        return await self._send(_Routes.cancel_subscription())

    async def billing_portal(self) -> Portal:
        return await self._send(_Routes.billing_portal())

    async def set_plan(self, user_id: object, plan: str, *,
                       monthly_credits: int | None = None) -> SubscriptionState:
        return await self._send(_Routes.set_plan(user_id, plan, monthly_credits))

    async def add_credits(self, user_id: object, amount_cents: int, *, reason: str = "",
                      type: str = "bonus", idempotency_key: str | None = None,
                      category: str | None = None, priority: int | None = None,
                      effective_at: str | None = None, expires_at: str | None = None
                      ) -> CreditResult:
        """Grant credits (admin); the lot's attributes not given are the type's defaults."""
        lot = {"category": category, "priority": priority, "effective_at": effective_at,
               "expires_at": expires_at}
        return await self._send(_Routes.add_credits(user_id, amount_cents, reason, type,
                                                    idempotency_key=idempotency_key, lot=lot))

    async def lots(self) -> Lots:
        return await self._send(_Routes.lots())

    async def admin_account(self, user_id: object) -> BillingAccount:
        return await self._send(_Routes.admin_account(user_id))

    async def void_lot(self, user_id: object, lot_id: str, *, reason: str = "",
                   idempotency_key: str | None = None) -> CreditResult:
        return await self._send(_Routes.void_lot(user_id, lot_id, reason, idempotency_key))

    async def debit_credits(self, user_id: object, amount_cents: int, *, reason: str = "",
                        idempotency_key: str | None = None) -> CreditResult:
        return await self._send(_Routes.debit_credits(user_id, amount_cents, reason,
                                                      idempotency_key))

    async def reverse_usage(self, event_id: str, *, reason: str = "") -> CreditResult:
        return await self._send(_Routes.reverse_usage(event_id, reason))

    async def signup_grant(self, user_id: object) -> GrantResult:
        return await self._send(_Routes.signup_grant(user_id))

    async def daily_grant(self, user_id: object) -> GrantResult:
        return await self._send(_Routes.daily_grant(user_id))

    async def referral_grant(self, inviter_user_id: object, invitee_user_id: object
                       ) -> ReferralGrantResult:
        return await self._send(_Routes.referral_grant(inviter_user_id, invitee_user_id))

    async def report_usage(self, user_id: object, *, event_id: str | None = None,
                           metric: Mapping[str, Any] | None = None,
                           cost_cents: int | None = None, cost_micros: int | None = None,
                           agent_id: object | None = None,
                           timestamp: str | datetime.datetime | None = None,
                           metadata: Mapping[str, Any] | None = None) -> UsageResult:
        return await self._send(_Routes.report_usage(
            user_id, event_id=event_id, metric=metric, cost_cents=cost_cents,
            cost_micros=cost_micros, agent_id=agent_id, timestamp=timestamp,
            metadata=metadata))

    async def report_usage_batch(self, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        return await self._send(_Routes.report_usage_batch(events))

    async def check_balance(self, user_id: object, required_cents: int = 0, *,
                      agent_id: object | None = None, provider: str | None = None,
                      model: str | None = None, input_tokens: int | None = None
                      ) -> BalanceCheck:
        """Is `required_cents` spendable (balance and caps)? A model alone asks for its
        reserve (the original service's rule, with `required_cents` 0); with the prompt's
        input tokens too, the reply has `max_output_tokens`, the most the caller can afford."""
        return await self._send(_Routes.check_balance(
            user_id, required_cents, agent_id=agent_id, provider=provider, model=model,
            input_tokens=input_tokens))

    async def spend_controls(self) -> SpendControls:
        return await self._send(_Routes.spend_controls())

    async def set_spend_controls(self, caps: Sequence[Mapping[str, Any]], *,
                           timezone: str | None = None,
                           low_balance_cents: Sequence[int] | None = None) -> SpendControls:
        """Replace the caller's caps: each `{"period", "limit_cents", "hard", "scope",
        "name"}` (scope "account", "agent" or "service"); `low_balance_cents`: the balances
        below which `balance.low` is sent."""
        return await self._send(_Routes.set_spend_controls(caps, timezone, low_balance_cents))

    async def admin_spend_controls(self, user_id: object) -> SpendControls:
        return await self._send(_Routes.admin_spend_controls(user_id))

    async def admin_set_spend_controls(self, user_id: object, caps: Sequence[Mapping[str, Any]],
                                 *, timezone: str | None = None,
                                 low_balance_cents: Sequence[int] | None = None
                                 ) -> SpendControls:
        return await self._send(_Routes.admin_set_spend_controls(user_id, caps, timezone,
                                                                low_balance_cents))

    async def usage_summary(self, *, from_day: datetime.date | str | None = None,
                      to_day: datetime.date | str | None = None, group_by: str = "day"
                      ) -> UsageSummary:
        """The caller's usage per UTC day, model or agent between two days (both included)."""
        return await self._send(_Routes.usage_summary(None, from_day, to_day, group_by))

    async def admin_usage_summary(self, user_id: object, *,
                            from_day: datetime.date | str | None = None,
                            to_day: datetime.date | str | None = None, group_by: str = "day"
                            ) -> UsageSummary:
        return await self._send(_Routes.usage_summary(user_id, from_day, to_day, group_by))

    async def create_webhook(self, url: str, event_types: Sequence[str]) -> WebhookEndpoint:
        """Register an endpoint (admin). Keep the reply's `secret`: it is shown only now."""
        return await self._send(_Routes.create_webhook(url, event_types))

    async def webhooks(self) -> WebhookEndpoints:
        return await self._send(_Routes.webhooks())

    async def rotate_webhook(self, endpoint_id: str) -> WebhookEndpoint:
        """A new signing secret (in the reply); the old one signs too for a day."""
        return await self._send(_Routes.rotate_webhook(endpoint_id))

    async def delete_webhook(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._send(_Routes.delete_webhook(endpoint_id))

    async def webhook_dead_letters(self, endpoint_id: str) -> ParkedWebhooks:
        return await self._send(_Routes.webhook_dead_letters(endpoint_id))

    async def resend_webhooks(self, endpoint_id: str, sequences: Sequence[int] | None = None
                        ) -> Resent:
        return await self._send(_Routes.resend_webhooks(endpoint_id, sequences))

    async def quote(self, metric: Mapping[str, Any]) -> Quote:
        return await self._send(_Routes.quote(metric))

    async def reserve(self, user_id: object, *, reservation_id: str | None = None,
                amount_cents: int | None = None, metric: Mapping[str, Any] | None = None,
                ttl_seconds: int = 300, metadata: Mapping[str, Any] | None = None,
                agent_id: object | None = None, clamp: bool = False,
                provider: str | None = None, model: str | None = None,
                input_tokens: int | None = None) -> ReservationHeld:
        """Hold credits; `clamp` holds what the balance and caps allow when that is less
        (the reply's `clamped`); naming the model and prompt answers `max_output_tokens`."""
        return await self._send(_Routes.reserve(
            user_id, reservation_id=reservation_id, amount_cents=amount_cents, metric=metric,
            ttl_seconds=ttl_seconds, metadata=metadata, agent_id=agent_id, clamp=clamp,
            prompt=_prompt(provider, model, input_tokens)))

    async def get_reservation(self, reservation_id: str) -> Reservation:
        return await self._send(_Routes.get_reservation(reservation_id))

    async def commit_reservation(self, reservation_id: str, *, event_id: str | None = None,
                                 metric: Mapping[str, Any] | None = None,
                                 cost_cents: int | None = None,
                                 cost_micros: int | None = None,
                                 agent_id: object | None = None,
                                 metadata: Mapping[str, Any] | None = None) -> CommitResult:
        return await self._send(_Routes.commit_reservation(
            reservation_id, event_id=event_id, metric=metric, cost_cents=cost_cents,
            cost_micros=cost_micros, agent_id=agent_id, metadata=metadata))

    async def release_reservation(self, reservation_id: str) -> ReleaseResult:
        return await self._send(_Routes.release_reservation(reservation_id))
