"""Usage: turning a usage request into a priced, fingerprinted command, and charging it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from engine import caps
from engine.account import Account, live_account
from engine.commands import (
    Context,
    ReportUsage,
    Transition,
    UsageEventRecord,
    UsageResult,
    usage_fingerprint,
)
from engine.errors import InsufficientCredits, InvalidInput, require
from engine.ids import AgentId, UserId
from engine.ledger import EntryType
from engine.lots import Draw
from engine.metadata import validate_metadata
from engine.money import (
    AMOUNT_CENTS_MAX,
    COST_MICROS_MAX,
    MICROS_PER_CREDIT,
    micros_to_cents_ceil,
    require_int,
    split_micros,
)
from engine.payments import refill_if_low
from engine.posting import check_prior, post_entry
from engine.pricing import PricingConfig, price_micros
from engine.usage import Metric


class UsageRequest(msgspec.Struct, frozen=True, gc=False):
    """A usage event as a service reports it. Exactly one of metric, cost_cents and
    cost_micros prices it; a given cost overrides the price table but a metric may still be
    sent with it for the record."""

    event_id: str
    user_id: UserId
    metric: Metric | None = None
    cost_cents: int | None = None
    cost_micros: int | None = None
    agent_id: AgentId | None = None
    occurred_at_ms: int | None = None
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    # The name of the service key that reported it (its spend caps apply).
    service: str | None = None


def override_micros(request: UsageRequest) -> int | None:
    if request.cost_cents is not None and request.cost_micros is not None:
        raise InvalidInput("send cost_cents or cost_micros, not both", {"field": "cost_cents"})
    if request.cost_cents is not None:
        return require_int("cost_cents", request.cost_cents, 0, AMOUNT_CENTS_MAX) * (
            MICROS_PER_CREDIT
        )
    if request.cost_micros is not None:
        return require_int("cost_micros", request.cost_micros, 0, COST_MICROS_MAX)
    return None


def usage_command(request: UsageRequest, pricing: PricingConfig, now_ms: int) -> ReportUsage:
    override = override_micros(request)
    if override is None and request.metric is None:
        raise InvalidInput("a usage event needs a metric or a cost", {"field": "metric"})
    cost_micros = override if override is not None else price_micros(pricing, request.metric)
    if cost_micros > COST_MICROS_MAX:
        raise InvalidInput("the cost of this event is out of range", {"field": "metric"})
    return ReportUsage(
        user_id=request.user_id,
        event_id=request.event_id,
        cost_micros=cost_micros,
        fingerprint=usage_fingerprint(request.user_id, request.metric, override),
        occurred_at_ms=request.occurred_at_ms if request.occurred_at_ms is not None else now_ms,
        metric=request.metric,
        agent_id=request.agent_id,
        metadata=validate_metadata(request.metadata),
        service=request.service,
    )


# --- transitions ----------------------------------------------------------------------------


def report_usage(account: Account | None, command: ReportUsage, context: Context) -> Transition:
    check_prior(command.event_id, command.fingerprint, context.prior)
    live = live_account(account, command.user_id)
    check_cost(command.cost_micros)
    if not live.can_afford_micros(command.cost_micros, now_ms=context.now_ms):
        raise InsufficientCredits(
            balance_cents=live.balance_cents,
            available_cents=live.available_cents(context.now_ms),
            required_cents=micros_to_cents_ceil(live.unbilled_micros + command.cost_micros),
        )
    transition = charge_usage(live, command, context, live.held_cents, enforce_caps=True)
    updated = transition.account
    assert updated is not None
    require(updated.available_cents(context.now_ms) >= -updated.overdraft_limit_cents,
            "debit passed overdraft")
    return transition


def check_cost(cost_micros: int) -> None:
    if not 0 <= cost_micros <= COST_MICROS_MAX:
        raise InvalidInput("cost is out of range", {"field": "cost_micros"})


def charge_usage(
    live: Account,
    command: ReportUsage,
    context: Context,
    held_cents: int,
    *,
    extra_metadata: Mapping[str, str] | None = None,
    first: tuple[Draw, ...] = (),
    enforce_caps: bool = False,
) -> Transition:
    """Charge a usage event with the carry rule: the entry, the event record, the reply.
    `first`: lots the debit burns before the burn order (a reservation's promise);
    `enforce_caps`: refuse it past a hard spend cap (else count it, even above one)."""
    cost_micros = command.cost_micros
    debit, carried_micros = split_micros(live.unbilled_micros, cost_micros)
    metadata = {**command.metadata, **(extra_metadata or {}), "cost_micros": cost_micros}
    controls = live.controls
    if controls is not None:
        controls = caps.charge(controls, held_cents, command.agent_id, command.service,
                               cost_micros, now_ms=context.now_ms, enforce=enforce_caps)
    updated, entry = post_entry(live, context, EntryType.USAGE, -debit,
                                source_key=command.event_id, metadata=metadata,
                                held_cents=held_cents, unbilled_micros=carried_micros,
                                first=first, controls=controls)
    reply = UsageResult(
        event_id=command.event_id,
        user_id=live.user_id,
        transaction_id=context.transaction_id,
        cost_cents=debit,
        cost_micros=cost_micros,
        balance_cents=updated.balance_cents,
        held_cents=held_cents,
    )
    event = UsageEventRecord(
        event_id=command.event_id,
        user_id=live.user_id,
        fingerprint=command.fingerprint,
        occurred_at_ms=command.occurred_at_ms,
        metric=command.metric,
        agent_id=command.agent_id,
        result=reply,
    )
    updated, refill = refill_if_low(updated)
    return Transition(updated, (entry, event, *refill), reply, (event,))


HANDLERS = {ReportUsage: report_usage}
