"""Engine values as reply Structs (and a usage body as the engine's request), in one place.

Each function maps one value straight to the wire type `api/schemas.py` declares, so what a
route answers and what `/openapi.json` says it answers come from the same type.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from api import schemas
from api.errors import render
from api.schemas import iso_ms
from engine import caps
from engine.account import Account, AccountAt
from engine.commands import CreditResult, UsageResult
from engine.errors import BillingError, InvalidInput
from engine.grants import GrantOutcome, ReferralOutcome
from engine.ids import AgentId, UserId, parse_agent_id, parse_key, transaction_id_str
from engine.ledger import LedgerEntry
from engine.lots import Lot, LotCategory, LotRequest, LotSummary, summarize
from engine.metering import UsageRequest
from engine.money import MICROS_PER_CREDIT, format_usd, micros_to_cents_ceil
from engine.plans import Plans
from engine.pricing import Quote
from engine.reports import Totals, UsageSummary, day_text
from engine.reservations import (
    Reservation,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
)
from engine.usage import LlmTokens
from engine.webhooks import ParkedWebhook, WebhookEndpoint
from integrations.stripe.gateway import Checkout
from integrations.stripe.service import Purchase

U = TypeVar("U", bound=schemas.UsageReply)
EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def usage_request(body: schemas.UsageBody, service: str | None = None) -> UsageRequest:
    timestamp = _moment(body.timestamp) if body.timestamp is not None else None
    return UsageRequest(
        event_id=parse_key("event_id", body.event_id),
        user_id=UserId(body.user_id),
        metric=body.metric,
        cost_cents=body.cost_cents,
        cost_micros=body.cost_micros,
        agent_id=agent_id(body.agent_id),
        occurred_at_ms=int(timestamp.timestamp() * 1000) if timestamp is not None else None,
        metadata=body.metadata or {},  # null reads as none, as the original reads it
        service=service,
    )


def _moment(text: str, field: str = "timestamp") -> datetime.datetime:
    """A time in a body (its syntax, with an offset, is the schema's; the calendar is checked
    here)."""
    try:
        return msgspec.convert(text, datetime.datetime)
    except msgspec.ValidationError:
        raise InvalidInput(f"{field} {text!r} is not a date and time", {"field": field}
                           ) from None


def agent_id(text: str | None) -> AgentId | None:
    # The engine's check, not only the schema's pattern: Python's `$` also matches before a
    # final newline.
    return parse_agent_id(text) if text is not None else None


def optional_iso_ms(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else iso_ms(epoch_ms)


def account_reply(seen: AccountAt) -> schemas.AccountReply:
    account, now_ms = seen.account, seen.now_ms
    summary = summarize(account.lots, now_ms)
    return schemas.AccountReply(
        user_id=account.user_id,
        balance_cents=account.balance_cents,
        balance_formatted=format_usd(account.balance_cents),
        held_cents=account.held_cents,
        available_cents=account.available_cents(now_ms),
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
        paid_cents=summary.paid_cents,
        promotional_cents=summary.promotional_cents,
        next_expiry=_next_expiry(summary),
        debt_cents=account.debt_cents,
        lots=[lot_reply(lot, now_ms) for lot in account.lots],
        spend_caps=cap_replies(seen),
    )


def balance_reply(seen: AccountAt) -> schemas.BalanceReply:
    account, now_ms = seen.account, seen.now_ms
    summary = summarize(account.lots, now_ms)
    return schemas.BalanceReply(
        user_id=account.user_id,
        balance_cents=account.balance_cents,
        balance_formatted=format_usd(account.balance_cents),
        held_cents=account.held_cents,
        available_cents=account.available_cents(now_ms),
        plan=account.plan,
        paid_cents=summary.paid_cents,
        promotional_cents=summary.promotional_cents,
        next_expiry=_next_expiry(summary),
        spend_caps=cap_replies(seen),
    )


def cap_replies(seen: AccountAt) -> list[schemas.CapReply]:
    """Every cap as of the engine's time: a window that ended shows as the new one, empty."""
    account, now_ms = seen.account, seen.now_ms
    controls = account.controls
    if controls is None:
        return []
    replies = []
    for stored in controls.caps:
        cap = caps.current(stored, controls.timezone, now_ms)
        held = caps.scope_held(controls, cap, account.held_cents)
        used_micros = cap.spent_micros + held * MICROS_PER_CREDIT
        replies.append(schemas.CapReply(
            scope=cap.scope.value,  # type: ignore[arg-type]
            name=cap.name or None,
            period=cap.period.value,  # type: ignore[arg-type]
            limit_cents=cap.limit_cents,
            hard=cap.hard,
            spent_cents=micros_to_cents_ceil(cap.spent_micros),
            spent_micros=cap.spent_micros,
            held_cents=held,
            remaining_cents=max(0, (cap.limit_cents * MICROS_PER_CREDIT - used_micros)
                                // MICROS_PER_CREDIT),
            reached=cap.reached,
            window_start=iso_ms(cap.window_start_ms),
            resets_at=iso_ms(cap.resets_at_ms),
        ))
    return replies


def spend_controls_reply(seen: AccountAt) -> schemas.SpendControlsReply:
    controls = seen.account.controls
    return schemas.SpendControlsReply(
        user_id=seen.account.user_id,
        timezone=controls.timezone if controls is not None else caps.TIMEZONE_DEFAULT,
        caps=cap_replies(seen),
        low_balance_cents=list(controls.low_balance_cents) if controls is not None else [],
    )


def endpoint_reply(endpoint: WebhookEndpoint, *, with_secret: bool = False
                   ) -> schemas.WebhookEndpointReply:
    return schemas.WebhookEndpointReply(
        endpoint_id=endpoint.endpoint_id,
        url=endpoint.url,
        event_types=[kind.value for kind in endpoint.event_types],
        created_at=iso_ms(endpoint.created_at_ms),
        secret=endpoint.secret if with_secret else None,
    )


def parked_webhooks_reply(endpoint_id: str, parked: list[ParkedWebhook]
                          ) -> schemas.ParkedWebhooksReply:
    return schemas.ParkedWebhooksReply(endpoint_id, [
        schemas.ParkedWebhookReply(letter.sequence, letter.event["id"], letter.event["type"],
                                   letter.event["user_id"], letter.attempts, letter.last_error)
        for letter in parked])


def estimate(prompt: schemas.PromptBody | None) -> LlmTokens | None:
    """The model call a body asks about, as the metric its price is computed from."""
    if prompt is None:
        return None
    return LlmTokens(prompt.provider, prompt.model, input_tokens=prompt.input_tokens)


def _next_expiry(summary: LotSummary) -> schemas.NextExpiryReply | None:
    if summary.next_expiry_ms is None:
        return None
    return schemas.NextExpiryReply(summary.next_expiry_cents, iso_ms(summary.next_expiry_ms))


def lot_reply(lot: Lot, now_ms: int) -> schemas.LotReply:
    return schemas.LotReply(
        lot_id=transaction_id_str(lot.lot_id),
        source=lot.source,
        category=lot.category.value,  # type: ignore[arg-type]
        priority=lot.priority,
        effective_at=optional_iso_ms(lot.effective_at_ms),
        expires_at=optional_iso_ms(lot.expires_at_ms),
        in_effect=lot.in_effect(now_ms),
        original_cents=lot.original_cents,
        remaining_cents=lot.remaining_cents,
        drawn_cents=lot.drawn_cents,
        expired_cents=lot.expired_cents,
        voided_cents=lot.voided_cents,
        held_cents=lot.held_cents,
        paid_usd_cents=lot.paid_usd_cents,
        rollover_cents=lot.rollover_cents,
        rollover_expires_at=optional_iso_ms(lot.rollover_expires_at_ms),
    )


def lots_reply(seen: AccountAt) -> schemas.LotsReply:
    account = seen.account
    return schemas.LotsReply(
        user_id=account.user_id,
        lots=[lot_reply(lot, seen.now_ms) for lot in account.lots],
        debt_cents=account.debt_cents,
        as_of=iso_ms(seen.now_ms),
    )


def lot_request(body: schemas.CreditsAddBody) -> LotRequest | None:
    """What a grant says of its lot (the rest is its type's defaults)."""
    if (body.category, body.priority, body.effective_at, body.expires_at) == (None,) * 4:
        return None
    return LotRequest(
        category=LotCategory(body.category) if body.category is not None else None,
        priority=body.priority,
        effective_at_ms=(_epoch_ms(body.effective_at, "effective_at")
                         if body.effective_at is not None else None),
        expires_at_ms=(_epoch_ms(body.expires_at, "expires_at")
                       if body.expires_at is not None else None),
    )


def _epoch_ms(text: str, field: str) -> int:
    return int(_moment(text, field).timestamp() * 1000)


def auto_refill_reply(account: Account) -> schemas.AutoRefillReply:
    settings = account.auto_refill
    return schemas.AutoRefillReply(settings.enabled, settings.trigger_below_cents,
                                   settings.refill_amount_cents, account.refill_pending,
                                   account.auto_refill_error)


def transaction_reply(entry: LedgerEntry) -> schemas.TransactionReply:
    return schemas.TransactionReply(
        id=transaction_id_str(entry.transaction_id),
        type=entry.entry_type.value,
        transaction_type=entry.entry_type.value,
        amount_cents=entry.amount,
        balance_after_cents=entry.balance_after,
        description=entry.description,
        metadata=dict(entry.metadata),
        event_id=entry.source_key,
        created_at=iso_ms(entry.created_at_ms),
        lot_draws=[schemas.LotDrawReply(transaction_id_str(lot_id), cents)
                   for lot_id, cents in entry.draws],
    )


def credit_reply(result: CreditResult) -> schemas.CreditReply:
    return schemas.CreditReply(
        success=True,
        user_id=result.user_id,
        transaction_id=transaction_id_str(result.transaction_id),
        type=result.entry_type.value,
        amount_cents=result.amount_cents,
        balance_cents=result.balance_cents,
        balance_formatted=format_usd(result.balance_cents),
    )


def grant_reply(outcome: GrantOutcome) -> schemas.GrantReply:
    return schemas.GrantReply(
        granted=outcome.granted,
        reason=outcome.reason.value if outcome.reason is not None else None,
        user_id=outcome.user_id,
        amount_cents=outcome.amount_cents,
        balance_cents=outcome.balance_cents,
        transaction_id=(transaction_id_str(outcome.transaction_id)
                        if outcome.transaction_id is not None else None),
    )


def referral_reply(outcome: ReferralOutcome) -> schemas.ReferralGrantReply:
    invitee, inviter = outcome.invitee, outcome.inviter
    # Both sides are decided together, so they agree on `granted`.
    reason = invitee.reason or inviter.reason
    return schemas.ReferralGrantReply(
        granted=invitee.granted and inviter.granted,
        reason=reason.value if reason is not None else None,
        invitee_amount_cents=invitee.amount_cents,
        inviter_amount_cents=inviter.amount_cents,
        invitee_balance_cents=invitee.balance_cents,
        inviter_balance_cents=inviter.balance_cents,
    )


def usage_reply(result: UsageResult) -> schemas.UsageReply:
    return _usage(schemas.UsageReply, result)


def _usage(kind: type[U], result: UsageResult, **extra: Any) -> U:
    """A usage result as `kind`: UsageReply, or a reply that extends it."""
    return kind(
        success=True,
        event_id=result.event_id,
        user_id=result.user_id,
        transaction_id=transaction_id_str(result.transaction_id),
        cost_cents=result.cost_cents,
        cost_micros=result.cost_micros,
        balance_cents=result.balance_cents,
        held_cents=result.held_cents,
        available_cents=result.balance_cents - result.held_cents,
        **extra,
    )


def error_detail(error: BillingError) -> schemas.ErrorDetail:
    """The `error` member of the error body, for a batch's failed events."""
    body, _, _ = render(error)
    return schemas.ErrorDetail(**body["error"])


def quote_reply(quoted: Quote) -> schemas.QuoteReply:
    return schemas.QuoteReply(
        cost_micros=quoted.cost_micros,
        cost_cents=micros_to_cents_ceil(quoted.cost_micros),
        cost_cents_exact=_credits_text(quoted.cost_micros),
        provider=quoted.provider,
        model=quoted.model,
        default_price=quoted.default_price,
        long_context=quoted.long_context,
        min_charge_applied=quoted.min_charge_applied,
        currency="USD_CENTS",  # the original's unit name: 1 credit = 1 US cent
    )


def _credits_text(micros: int) -> str:
    """Micro-credits as exact credits in plain notation: 10_500_000 -> "10.5", 250_000_000
    -> "250" (Decimal division by 10**6 is exact at these sizes)."""
    return format((Decimal(micros) / MICROS_PER_CREDIT).normalize(), "f")


def reservation_held_reply(held: ReservationHeld) -> schemas.ReservationHeldReply:
    reservation = held.reservation
    return schemas.ReservationHeldReply(
        reservation_id=reservation.reservation_id,
        user_id=reservation.user_id,
        status=reservation.status.value,  # type: ignore[arg-type]
        held_cents=reservation.amount_cents,
        balance_cents=held.balance_cents,
        available_cents=held.balance_cents - held.held_cents,
        expires_at=iso_ms(reservation.expires_at_ms),
        requested_cents=held.requested_cents or reservation.amount_cents,
        clamped=held.requested_cents > reservation.amount_cents,
        max_output_tokens=held.max_output_tokens,
    )


def reservation_reply(reservation: Reservation) -> schemas.ReservationReply:
    commit = reservation.commit
    return schemas.ReservationReply(
        reservation_id=reservation.reservation_id,
        user_id=reservation.user_id,
        status=reservation.status.value,  # type: ignore[arg-type]
        held_cents=reservation.amount_cents if reservation.is_open else 0,
        amount_cents=reservation.amount_cents,
        released_cents=reservation.released_cents,
        created_at=iso_ms(reservation.created_at_ms),
        expires_at=iso_ms(reservation.expires_at_ms),
        closed_at=optional_iso_ms(reservation.closed_at_ms),
        transaction_id=transaction_id_str(commit.transaction_id) if commit else None,
        cost_cents=commit.cost_cents if commit else None,
        cost_micros=commit.cost_micros if commit else None,
        metadata=dict(reservation.metadata),
    )


def commit_reply(committed: ReservationCommitted) -> schemas.CommitReply:
    return _usage(schemas.CommitReply, committed.usage,
                  reservation_id=committed.reservation_id,
                  released_cents=committed.released_cents)


def release_reply(released: ReservationReleased) -> schemas.ReleaseReply:
    return schemas.ReleaseReply(
        reservation_id=released.reservation_id,
        user_id=released.user_id,
        status=released.status.value,  # type: ignore[arg-type]
        released_cents=released.released_cents,
        balance_cents=released.balance_cents,
        available_cents=released.balance_cents - released.held_cents,
    )


def purchase_reply(purchase: Purchase) -> schemas.PurchaseReply:
    return schemas.PurchaseReply(purchase.checkout.url, purchase.checkout.session_id,
                                 purchase.credits, purchase.price_usd_cents)


def checkout_reply(checkout: Checkout) -> schemas.CheckoutReply:
    return schemas.CheckoutReply(checkout.url, checkout.session_id)


def payment_reply(payment: dict[str, Any]) -> schemas.PaymentReply:
    """One of Stripe's PaymentIntents, with the credits our metadata put on it."""
    metadata = payment.get("metadata") or {}
    credits = str(metadata.get("credits", ""))
    return schemas.PaymentReply(
        id=str(payment["id"]),
        amount_cents=int(payment.get("amount") or 0),
        currency=str(payment.get("currency") or ""),
        status=str(payment.get("status") or ""),
        kind=metadata.get("kind"),
        credits=int(credits) if credits.isdigit() else None,
        description=payment.get("description"),
        created_at=iso_ms(int(payment.get("created") or 0) * 1000),
    )


def subscription_reply(plans: Plans, account: Account) -> schemas.SubscriptionReply:
    subscription = account.subscription
    plan = plans.get(account.plan) if account.plan in plans.codes else None
    if subscription is None:
        return schemas.SubscriptionReply(account.plan, plan.name if plan else account.plan,
                                         "none", None, None, 0, None, None)
    return schemas.SubscriptionReply(
        plan=subscription.plan,
        plan_name=plan.name if plan else subscription.plan,
        status=subscription.status.value,  # type: ignore[arg-type]
        subscription_id=subscription.subscription_id,
        managed_by=subscription.managed_by.value,  # type: ignore[arg-type]
        monthly_credits=subscription.monthly_credits,
        current_period_start=iso_ms(subscription.period_start_ms),
        current_period_end=iso_ms(subscription.period_end_ms),
    )


def totals_reply(totals: Totals) -> schemas.UsageTotalsReply:
    return schemas.UsageTotalsReply(totals.events, totals.cost_micros,
                                    totals.cost_credits_exact(), totals.debited_cents,
                                    totals.input_tokens, totals.output_tokens)


def usage_summary_reply(user_id: UserId, summary: UsageSummary) -> schemas.UsageSummaryReply:
    return schemas.UsageSummaryReply(
        user_id=user_id,
        group_by=summary.group_by.value,  # type: ignore[arg-type]
        from_=day_text(summary.from_day),
        to=day_text(summary.to_day),
        groups=[schemas.UsageGroupReply(group.key, totals_reply(group.totals))
                for group in summary.groups],
        total=totals_reply(summary.total),
    )


def summary_days(query: schemas.UsageSummaryQuery) -> tuple[int | None, int | None]:
    """The query's UTC days as days since the epoch (None: the engine's default)."""
    return _epoch_day(query.from_), _epoch_day(query.to)


def _epoch_day(day: datetime.date | None) -> int | None:
    return None if day is None else day.toordinal() - EPOCH_ORDINAL
