"""Turning a usage request into a priced, fingerprinted command."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from engine.commands import ReportUsage, usage_fingerprint
from engine.errors import InvalidInput
from engine.ids import AgentId, UserId
from engine.money import AMOUNT_CENTS_MAX, COST_MICROS_MAX, MICROS_PER_CREDIT, require_int
from engine.pricing import PricingConfig, price_micros
from engine.usage import Metric

METADATA_ENTRIES_MAX = 32
METADATA_VALUE_LENGTH_MAX = 512


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


def validate_metadata(metadata: object) -> dict[str, str | int | bool | None]:
    """Metadata is a small flat map of scalars: it is stored with every entry."""
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be an object", {"field": "metadata"})
    if len(metadata) > METADATA_ENTRIES_MAX:
        raise InvalidInput(
            f"metadata holds at most {METADATA_ENTRIES_MAX} entries", {"field": "metadata"}
        )
    clean: dict[str, str | int | bool | None] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidInput("metadata keys are strings of 1..64 characters",
                               {"field": "metadata"})
        if isinstance(value, str):
            if len(value) > METADATA_VALUE_LENGTH_MAX:
                raise InvalidInput(
                    f"metadata values are at most {METADATA_VALUE_LENGTH_MAX} characters",
                    {"field": f"metadata.{name}"},
                )
        elif value is not None and type(value) not in (int, bool):
            raise InvalidInput(
                "metadata values are strings, integers, booleans or null",
                {"field": f"metadata.{name}"},
            )
        clean[name] = value
    return clean


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
    )
