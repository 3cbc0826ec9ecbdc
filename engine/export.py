"""What a committed usage event looks like to Lago: billable events with stable ids.

Pure: the journal turns each usage event into these rows in the same transaction as the
debit (transactional outbox), and the exporter sends them. `transaction_id` is derived from
our event id and the metric code, so a resend is deduplicated by Lago.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.commands import UsageEventRecord
from engine.ids import UserId
from engine.subscriptions import LagoMirror
from engine.usage import ApiCalls, Compute, LlmTokens, Storage

CODE_LLM_INPUT_TOKENS = "llm_input_tokens"
CODE_LLM_OUTPUT_TOKENS = "llm_output_tokens"
CODE_CPU_HOURS = "cpu_hours"
CODE_MEMORY_GB_HOURS = "memory_gb_hours"
CODE_API_CALLS = "api_calls"
CODE_STORAGE_GB_HOURS = "storage_gb_hours"


class BillableEvent(msgspec.Struct, frozen=True, gc=False):
    """One Lago event. Lago's EventInputObject (API 1.51) links an event to a subscription
    only, so `external_subscription_id` is the account's user id: the Lago subscription that
    carries an account's usage uses it as its external id (the Lago customer's external id is
    the same user id)."""

    transaction_id: str
    external_subscription_id: str
    code: str
    timestamp_ms: int
    properties: dict[str, str]

    def to_lago(self) -> dict[str, Any]:
        """The event as Lago's `EventInputObject` (timestamp: seconds with milliseconds)."""
        seconds, millis = divmod(self.timestamp_ms, 1000)
        return {
            "transaction_id": self.transaction_id,
            "external_subscription_id": self.external_subscription_id,
            "code": self.code,
            "timestamp": f"{seconds}.{millis:03d}",
            "properties": self.properties,
        }


class AccountOpened(msgspec.Struct, frozen=True, gc=False):
    """An account came into being: integrations (the Lago customer) hear of it. Not stored."""

    user_id: UserId
    stripe_customer_id: str | None = None
    email: str | None = None

    def to_lago(self) -> dict[str, Any]:
        """An outbox row for `POST /api/v1/customers` (create or update, by external id);
        named by the email, else `User <id>`, as the original names its customers."""
        customer: dict[str, Any] = {"external_id": str(self.user_id),
                                    "name": customer_name(self.user_id, self.email)}
        if self.email is not None:
            customer["email"] = self.email
        if self.stripe_customer_id is not None:
            customer["billing_configuration"] = {
                "payment_provider": "stripe",
                "provider_customer_id": self.stripe_customer_id,
            }
        return {"customer": customer}


def customer_name(user_id: UserId, email: str | None) -> str:
    """The name of the account's Lago and Stripe customers."""
    return email if email is not None else f"User {user_id}"


def outbox_rows(record: object) -> tuple[dict[str, Any], ...]:
    """The outbox rows a committed record stands for (most records stand for none)."""
    if isinstance(record, UsageEventRecord):
        return tuple(event.to_lago() for event in billable_events(record))
    if isinstance(record, AccountOpened | LagoMirror):
        return (record.to_lago(),)
    return ()


def billable_events(record: UsageEventRecord) -> tuple[BillableEvent, ...]:
    """The Lago events of one usage event (none for a cost-only event without a metric)."""
    metric = record.metric
    if metric is None:
        return ()
    user = str(record.user_id)

    def event(code: str, properties: dict[str, Any]) -> BillableEvent:
        return BillableEvent(
            transaction_id=f"{record.event_id}:{code}",
            external_subscription_id=user,
            code=code,
            timestamp_ms=record.occurred_at_ms,
            properties=properties,
        )

    # Property values are strings: Lago casts them when aggregating, nothing is rounded, and
    # its OpenAPI document (a oneOf of string, integer and number) admits no integer strictly.
    if isinstance(metric, LlmTokens):
        common = {"provider": metric.provider, "model": metric.model}
        if record.agent_id is not None:
            common["agent_id"] = record.agent_id
        return (
            event(CODE_LLM_INPUT_TOKENS, {"tokens": str(metric.prompt_tokens), **common}),
            event(CODE_LLM_OUTPUT_TOKENS, {"tokens": str(metric.output_tokens), **common}),
        )
    if isinstance(metric, Compute):
        return (
            event(CODE_CPU_HOURS, {"cpu_hours": str(metric.cpu_hours)}),
            event(CODE_MEMORY_GB_HOURS, {"memory_gb_hours": str(metric.memory_gb_hours)}),
        )
    if isinstance(metric, ApiCalls):
        return (
            event(CODE_API_CALLS, {"count": str(metric.count), "endpoint": metric.endpoint}),
        )
    assert isinstance(metric, Storage)
    return (event(CODE_STORAGE_GB_HOURS, {"gb_hours": str(metric.gb_hours)}),)


class ParkedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event Lago refused on its own (a 4xx for that event): kept with Lago's answer."""

    sequence: int
    event: dict[str, Any]
    status: int
    reason: str


class OutboxAck(msgspec.Struct, frozen=True, gc=False):
    """Lago accepted (or we parked) every outbox row up to `sequence`: drop them and move the
    exporter's durable cursor there."""

    sequence: int
    parked: tuple[ParkedEvent, ...] = ()


class RequeueParked(msgspec.Struct, frozen=True, gc=False):
    """Put parked events back at the end of the outbox (after the cause was fixed)."""

    sequences: tuple[int, ...]
