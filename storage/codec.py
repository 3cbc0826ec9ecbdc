"""One CBOR codec per stored record. Records are arrays led by a format number, so a later
format can be read beside an older one."""

from __future__ import annotations

import uuid
from typing import Any

import cbor2
import msgspec

from engine.account import Account, AccountStatus, AutoRefillSettings
from engine.caps import Controls, ScopeHold, SpendCap
from engine.commands import CreditResult, KeyRecord, UsageEventRecord, UsageResult, WebhookMarker
from engine.export import ParkedEvent
from engine.ids import AgentId, TransactionId, UserId
from engine.ledger import EntryType, LedgerEntry
from engine.lots import Lot, balance_as_lots
from engine.notifications import EventType
from engine.payments import RefillIntent
from engine.reports import Totals
from engine.reservations import OpenHold, Reservation, ReservationStatus
from engine.subscription_state import Manager, Subscription, SubscriptionStatus
from engine.usage import metric_to_wire, parse_metric
from engine.webhooks import ParkedWebhook, WebhookEndpoint

ACCOUNT_FORMAT = 4
ACCOUNT_FORMAT_V3 = 3  # before spend controls: read with none
ACCOUNT_FORMAT_V2 = 2  # before credit lots: the balance is read as one paid lot
ACCOUNT_FORMAT_V1 = 1  # before auto-refill state; read with its defaults
ENTRY_FORMAT = 2
ENTRY_FORMAT_V1 = 1  # before lot draws
USAGE_EVENT_FORMAT = 1
KEY_FORMAT = 1
RESERVATION_FORMAT = 3
RESERVATION_FORMAT_V2 = 2  # before the agent and service key a hold counts against
RESERVATION_FORMAT_V1 = 1  # before lots promised to a hold
OPEN_HOLD_FORMAT = 1
PARKED_FORMAT = 1
WEBHOOK_FORMAT = 1
ENDPOINT_FORMAT = 1
PARKED_WEBHOOK_FORMAT = 1
TOTALS_FORMAT = 1
REFILL_FORMAT = 1


_controls_encoder = msgspec.msgpack.Encoder()
_controls_decoder = msgspec.msgpack.Decoder(Controls)
_totals_encoder = msgspec.msgpack.Encoder()
_totals_decoder = msgspec.msgpack.Decoder(tuple[int, ...])


class CodecError(ValueError):
    """A stored record this version cannot read."""


def _expect(fields: list[Any], version: int, kind: str) -> None:
    if not fields or fields[0] != version:
        raise CodecError(f"unknown {kind} record format {fields[:1]!r}")


# Each format's field list, in stored order, checked against its struct at import: a field
# added to a struct without a new format (and an upgrade of the old one) stops the build here.
ACCOUNT_FIELDS_V2 = (
    "user_id", "created_at_ms", "updated_at_ms", "balance_cents", "unbilled_micros",
    "held_cents", "lifetime_purchased_cents", "lifetime_granted_cents", "lifetime_used_cents",
    "plan", "auto_refill", "stripe_customer_id", "lago_customer_id", "overdraft_limit_cents",
    "status", "seq", "refill_count", "refill_pending", "refill_declines", "auto_refill_error",
    "subscription",
)
ACCOUNT_FIELDS_V3 = (*ACCOUNT_FIELDS_V2, "lots", "debt_cents")
ACCOUNT_FIELDS_V4 = (*ACCOUNT_FIELDS_V3, "controls")
assert Account.__struct_fields__ == ACCOUNT_FIELDS_V4, "Account changed: add ACCOUNT_FORMAT 5"
# Format 1 had no auto-refill state; its accounts are read with these appended.
_ACCOUNT_V1_MISSING = (0, False, 0, None, None)
assert ACCOUNT_FIELDS_V2[-len(_ACCOUNT_V1_MISSING):] == (
    "refill_count", "refill_pending", "refill_declines", "auto_refill_error", "subscription")
_USER_ID = ACCOUNT_FIELDS_V3.index("user_id")
_BALANCE = ACCOUNT_FIELDS_V3.index("balance_cents")
_AUTO_REFILL = ACCOUNT_FIELDS_V3.index("auto_refill")
_STATUS = ACCOUNT_FIELDS_V3.index("status")
_SUBSCRIPTION = ACCOUNT_FIELDS_V3.index("subscription")
_LOTS = ACCOUNT_FIELDS_V3.index("lots")
_CONTROLS = ACCOUNT_FIELDS_V4.index("controls")
_SUBSCRIPTION_V2_FIELDS = 9  # format 2's subscription had no grant_rollover
_STORED_FIELDS = {
    LedgerEntry: ("transaction_id", "user_id", "entry_type", "amount", "balance_after",
                  "created_at_ms", "source_key", "description", "metadata", "draws"),
    UsageEventRecord: ("event_id", "user_id", "fingerprint", "occurred_at_ms", "metric",
                       "agent_id", "result"),
    UsageResult: ("event_id", "user_id", "transaction_id", "cost_cents", "cost_micros",
                  "balance_cents", "held_cents"),
    KeyRecord: ("scope", "key", "user_id", "fingerprint", "result"),
    CreditResult: ("user_id", "transaction_id", "entry_type", "amount_cents", "balance_cents"),
    Reservation: ("reservation_id", "user_id", "amount_cents", "created_at_ms",
                  "expires_at_ms", "fingerprint", "status", "metadata", "closed_at_ms",
                  "released_cents", "commit", "commit_fingerprint", "lots", "agent_id",
                    "service"),
    WebhookMarker: ("provider", "event_id", "event_type", "received_at_ms"),
    RefillIntent: ("user_id", "number", "amount_cents", "plan", "customer_id", "declines"),
    Subscription: ("subscription_id", "plan", "status", "managed_by", "monthly_credits",
                   "period_start_ms", "period_end_ms", "last_granted_period_ms",
                   "past_due_since_ms", "grant_rollover"),
    WebhookEndpoint: ("endpoint_id", "url", "event_types", "secret", "created_at_ms",
                      "previous_secret", "previous_valid_until_ms", "deleted", "cursor"),
    Totals: ("events", "cost_micros", "debited_cents", "input_tokens", "output_tokens"),
    ParkedWebhook: ("endpoint_id", "sequence", "event", "attempts", "last_error"),
    Controls: ("timezone", "caps", "holds", "low_balance_cents"),
    SpendCap: ("scope", "name", "period", "limit_cents", "hard", "window_start_ms",
               "resets_at_ms", "spent_micros", "reached"),
    ScopeHold: ("scope", "name", "held_cents"),
    Lot: ("lot_id", "source", "category", "priority", "effective_at_ms", "expires_at_ms",
          "original_cents", "drawn_cents", "expired_cents", "voided_cents", "held_cents",
          "paid_usd_cents", "rollover_cents", "rollover_expires_at_ms"),
}
for _struct, _fields in _STORED_FIELDS.items():
    assert _fields == _struct.__struct_fields__, f"{_struct.__name__} changed: add a format"
# An account's lots are one msgspec JSON array of arrays inside its CBOR record: re-encoded
# with the account on every debit, they cost 1.9 µs for five lots this way against 14 µs as
# CBOR rows (cbor2 spends ~60 ns an item, more on the 128-bit lot ids, which msgpack cannot
# carry at all).
assert Lot.__struct_config__.array_like, "lots are stored as arrays"
_LOTS_ENCODER = msgspec.json.Encoder()
_LOTS_DECODER = msgspec.json.Decoder(tuple[Lot, ...])


def encode_account(account: Account) -> bytes:
    values = list(msgspec.structs.astuple(account))
    refill = account.auto_refill
    values[_USER_ID] = account.user_id.bytes
    values[_AUTO_REFILL] = [refill.enabled, refill.trigger_below_cents,
                            refill.refill_amount_cents]
    values[_STATUS] = account.status.value
    values[_SUBSCRIPTION] = _subscription_fields(account.subscription)
    values[_LOTS] = _LOTS_ENCODER.encode(account.lots) if account.lots else b""
    values[_CONTROLS] = _controls_fields(account.controls)
    return cbor2.dumps([ACCOUNT_FORMAT, *values])


def _controls_fields(controls: Controls | None) -> bytes | None:
    """Spend controls as one msgpack value inside the CBOR account: the caps are rewritten
    on every debit of a capped account, and msgspec encodes them in about a sixth of the
    time cbor2 takes for the same nested lists (measured: 2 µs against 12 µs for three)."""
    return None if controls is None else _controls_encoder.encode(controls)


def _controls(data: bytes | None) -> Controls | None:
    return None if data is None else _controls_decoder.decode(data)


def _subscription_fields(subscription: Subscription | None) -> list[Any] | None:
    if subscription is None:
        return None
    return [subscription.subscription_id, subscription.plan, subscription.status.value,
            subscription.managed_by.value, subscription.monthly_credits,
            subscription.period_start_ms, subscription.period_end_ms,
            subscription.last_granted_period_ms, subscription.past_due_since_ms,
            subscription.grant_rollover]


def _subscription(fields: list[Any] | None) -> Subscription | None:
    if fields is None:
        return None
    if len(fields) == _SUBSCRIPTION_V2_FIELDS:
        fields = [*fields, "none"]
    (subscription_id, plan, status, managed_by, monthly_credits, period_start_ms,
     period_end_ms, last_granted_period_ms, past_due_since_ms, grant_rollover) = fields
    return Subscription(subscription_id, plan, SubscriptionStatus(status), Manager(managed_by),
                        monthly_credits, period_start_ms, period_end_ms,
                        last_granted_period_ms, past_due_since_ms, grant_rollover)


def decode_account(data: bytes, *, checked: bool = True) -> Account:
    """The stored account, checked like the state after a transition (pair assertions)
    unless `checked` is false (`zbilling verify` reports what is wrong)."""
    fields = cbor2.loads(data)
    if fields and fields[0] == ACCOUNT_FORMAT_V1:
        fields = [ACCOUNT_FORMAT_V2, *fields[1:], *_ACCOUNT_V1_MISSING]
    if fields and fields[0] == ACCOUNT_FORMAT_V2:
        if len(fields) != 1 + len(ACCOUNT_FIELDS_V2):
            raise CodecError(f"account record has {len(fields) - 1} fields")
        lots, debt = balance_as_lots(fields[1 + _BALANCE])
        fields = [ACCOUNT_FORMAT, *fields[1:], lots, debt, None]
    else:
        if fields and fields[0] == ACCOUNT_FORMAT_V3:
            fields = [ACCOUNT_FORMAT, *fields[1:], None]
        _expect(fields, ACCOUNT_FORMAT, "account")
        if len(fields) != 1 + len(ACCOUNT_FIELDS_V4):
            raise CodecError(f"account record has {len(fields) - 1} fields")
        lots = fields[1 + _LOTS]
        fields[1 + _LOTS] = _LOTS_DECODER.decode(lots) if lots else ()
        fields[1 + _CONTROLS] = _controls(fields[1 + _CONTROLS])
    values = fields[1:]
    values[_USER_ID] = UserId(uuid.UUID(bytes=values[_USER_ID]))
    values[_AUTO_REFILL] = AutoRefillSettings(*values[_AUTO_REFILL])
    values[_STATUS] = AccountStatus(values[_STATUS])
    values[_SUBSCRIPTION] = _subscription(values[_SUBSCRIPTION])
    account = Account(*values)
    if checked:
        account.check_invariants()
    return account


def encode_entry(entry: LedgerEntry) -> bytes:
    """The transaction id is the record's key, so it is not repeated in the value."""
    return cbor2.dumps(
        [
            ENTRY_FORMAT,
            entry.user_id.bytes,
            entry.entry_type.value,
            entry.amount,
            entry.balance_after,
            entry.created_at_ms,
            entry.source_key,
            entry.description,
            dict(entry.metadata),
            [list(draw) for draw in entry.draws],
        ]
    )


def decode_entry(transaction_id: int, data: bytes) -> LedgerEntry:
    fields = cbor2.loads(data)
    if fields and fields[0] == ENTRY_FORMAT_V1:
        fields = [ENTRY_FORMAT, *fields[1:], []]
    _expect(fields, ENTRY_FORMAT, "entry")
    (_, user_id, entry_type, amount, balance_after, created_at_ms, source_key, description,
     meta, draws) = fields
    return LedgerEntry(
        transaction_id=TransactionId(transaction_id),
        user_id=UserId(uuid.UUID(bytes=user_id)),
        entry_type=EntryType(entry_type),
        amount=amount,
        balance_after=balance_after,
        created_at_ms=created_at_ms,
        source_key=source_key,
        description=description,
        metadata=meta,
        draws=tuple((lot_id, cents) for lot_id, cents in draws),
    )


def encode_usage_event(event: UsageEventRecord) -> bytes:
    """The event id is the key; the result keeps only what the event itself does not say."""
    result = event.result
    return cbor2.dumps(
        [
            USAGE_EVENT_FORMAT,
            event.user_id.bytes,
            event.fingerprint,
            event.occurred_at_ms,
            metric_to_wire(event.metric) if event.metric is not None else None,
            event.agent_id,
            _usage_result_fields(result),
        ]
    )


def _usage_result_fields(result: UsageResult) -> list[Any]:
    """A usage result without what its container already says (user id)."""
    return [
        result.event_id,
        result.transaction_id,
        result.cost_cents,
        result.cost_micros,
        result.balance_cents,
        result.held_cents,
    ]


def _usage_result(user_id: UserId, fields: list[Any]) -> UsageResult:
    event_id, transaction_id, cost_cents, cost_micros, balance_cents, held_cents = fields
    return UsageResult(
        event_id=event_id,
        user_id=user_id,
        transaction_id=TransactionId(transaction_id),
        cost_cents=cost_cents,
        cost_micros=cost_micros,
        balance_cents=balance_cents,
        held_cents=held_cents,
    )


def decode_usage_event(event_id: str, data: bytes) -> UsageEventRecord:
    fields = cbor2.loads(data)
    _expect(fields, USAGE_EVENT_FORMAT, "usage event")
    _, user_bytes, fingerprint, occurred_at_ms, metric, agent_id, result = fields
    user_id = UserId(uuid.UUID(bytes=user_bytes))
    return UsageEventRecord(
        event_id=event_id,
        user_id=user_id,
        fingerprint=fingerprint,
        occurred_at_ms=occurred_at_ms,
        metric=parse_metric(metric) if metric is not None else None,
        agent_id=AgentId(agent_id) if agent_id is not None else None,
        result=_usage_result(user_id, result),
    )


def encode_key_record(record: KeyRecord) -> bytes:
    result = record.result
    return cbor2.dumps(
        [
            KEY_FORMAT,
            record.user_id.bytes,
            record.fingerprint,
            [result.transaction_id, result.entry_type.value, result.amount_cents,
             result.balance_cents],
        ]
    )


def decode_key_record(scope: str, key: str, data: bytes) -> KeyRecord:
    fields = cbor2.loads(data)
    _expect(fields, KEY_FORMAT, "idempotency key")
    _, user_bytes, fingerprint, result = fields
    user_id = UserId(uuid.UUID(bytes=user_bytes))
    transaction_id, entry_type, amount_cents, balance_cents = result
    return KeyRecord(
        scope=scope,
        key=key,
        user_id=user_id,
        fingerprint=fingerprint,
        result=CreditResult(
            user_id=user_id,
            transaction_id=TransactionId(transaction_id),
            entry_type=EntryType(entry_type),
            amount_cents=amount_cents,
            balance_cents=balance_cents,
        ),
    )


def encode_reservation(reservation: Reservation) -> bytes:
    commit = reservation.commit
    return cbor2.dumps(
        [
            RESERVATION_FORMAT,
            reservation.user_id.bytes,
            reservation.amount_cents,
            reservation.created_at_ms,
            reservation.expires_at_ms,
            reservation.fingerprint,
            reservation.status.value,
            dict(reservation.metadata),
            reservation.closed_at_ms,
            reservation.released_cents,
            None if commit is None else _usage_result_fields(commit),
            reservation.commit_fingerprint,
            [list(promised) for promised in reservation.lots],
            reservation.agent_id,
            reservation.service,
        ]
    )


def decode_reservation(reservation_id: str, data: bytes) -> Reservation:
    fields = cbor2.loads(data)
    if fields and fields[0] == RESERVATION_FORMAT_V1:
        fields = [RESERVATION_FORMAT_V2, *fields[1:], []]
    if fields and fields[0] == RESERVATION_FORMAT_V2:
        fields = [RESERVATION_FORMAT, *fields[1:], None, None]
    _expect(fields, RESERVATION_FORMAT, "reservation")
    (
        _,
        user_bytes,
        amount_cents,
        created_at_ms,
        expires_at_ms,
        fingerprint,
        status,
        metadata,
        closed_at_ms,
        released_cents,
        commit,
        commit_fingerprint,
        lots,
        agent_id,
        service,
    ) = fields
    user_id = UserId(uuid.UUID(bytes=user_bytes))
    return Reservation(
        reservation_id=reservation_id,
        user_id=user_id,
        amount_cents=amount_cents,
        created_at_ms=created_at_ms,
        expires_at_ms=expires_at_ms,
        fingerprint=fingerprint,
        status=ReservationStatus(status),
        metadata=metadata,
        closed_at_ms=closed_at_ms,
        released_cents=released_cents,
        commit=_usage_result(user_id, commit) if commit is not None else None,
        commit_fingerprint=commit_fingerprint,
        lots=tuple((lot_id, cents) for lot_id, cents in lots),
        agent_id=agent_id,
        service=service,
    )


def encode_open_hold(reservation: Reservation) -> bytes:
    return cbor2.dumps(
        [OPEN_HOLD_FORMAT, reservation.user_id.bytes, reservation.amount_cents,
         reservation.expires_at_ms]
    )


def decode_open_hold(reservation_id: str, data: bytes) -> OpenHold:
    fields = cbor2.loads(data)
    _expect(fields, OPEN_HOLD_FORMAT, "open hold")
    _, user_bytes, amount_cents, expires_at_ms = fields
    return OpenHold(reservation_id, UserId(uuid.UUID(bytes=user_bytes)), amount_cents,
                    expires_at_ms)


def encode_parked(parked: ParkedEvent) -> bytes:
    return cbor2.dumps([PARKED_FORMAT, parked.sequence, parked.event, parked.status,
                        parked.reason])


def decode_parked(data: bytes) -> ParkedEvent:
    fields = cbor2.loads(data)
    _expect(fields, PARKED_FORMAT, "parked event")
    _, sequence, event, status, reason = fields
    return ParkedEvent(sequence, event, status, reason)


def encode_webhook(marker: WebhookMarker) -> bytes:
    return cbor2.dumps([WEBHOOK_FORMAT, marker.event_type, marker.received_at_ms])


def decode_webhook(provider: str, event_id: str, data: bytes) -> WebhookMarker:
    fields = cbor2.loads(data)
    _expect(fields, WEBHOOK_FORMAT, "webhook")
    _, event_type, received_at_ms = fields
    return WebhookMarker(provider, event_id, event_type, received_at_ms)


def encode_refill(intent: RefillIntent) -> bytes:
    return cbor2.dumps([REFILL_FORMAT, intent.number, intent.amount_cents, intent.plan,
                        intent.customer_id, intent.declines])


def decode_refill(user_id: UserId, data: bytes) -> RefillIntent:
    fields = cbor2.loads(data)
    _expect(fields, REFILL_FORMAT, "refill")
    _, number, amount_cents, plan, customer_id, declines = fields
    return RefillIntent(user_id, number, amount_cents, plan, customer_id, declines)


def encode_endpoint(endpoint: WebhookEndpoint) -> bytes:
    """The endpoint id is the key; a deleted endpoint is never stored."""
    return cbor2.dumps([ENDPOINT_FORMAT, endpoint.url,
                        [kind.value for kind in endpoint.event_types], endpoint.secret,
                        endpoint.created_at_ms, endpoint.previous_secret,
                        endpoint.previous_valid_until_ms, endpoint.cursor])


def decode_endpoint(endpoint_id: str, data: bytes) -> WebhookEndpoint:
    fields = cbor2.loads(data)
    _expect(fields, ENDPOINT_FORMAT, "webhook endpoint")
    _, url, kinds, secret, created_at_ms, previous, previous_until_ms, cursor = fields
    return WebhookEndpoint(endpoint_id, url, tuple(EventType(kind) for kind in kinds), secret,
                           created_at_ms, previous, previous_until_ms, False, cursor)


def encode_parked_webhook(parked: ParkedWebhook) -> bytes:
    return cbor2.dumps([PARKED_WEBHOOK_FORMAT, parked.endpoint_id, parked.sequence,
                        parked.event, parked.attempts, parked.last_error])


def decode_parked_webhook(data: bytes) -> ParkedWebhook:
    fields = cbor2.loads(data)
    _expect(fields, PARKED_WEBHOOK_FORMAT, "parked webhook")
    return ParkedWebhook(*fields[1:])


def encode_totals(totals: Totals) -> bytes:
    """Three of these are rewritten on every debit: msgpack (msgspec) rather than cbor2, for
    the reason `_controls_fields` gives."""
    return _totals_encoder.encode((TOTALS_FORMAT, *msgspec.structs.astuple(totals)))


def decode_totals(data: bytes) -> Totals:
    fields = _totals_decoder.decode(data)
    _expect(list(fields[:1]), TOTALS_FORMAT, "usage totals")
    return Totals(*fields[1:])
