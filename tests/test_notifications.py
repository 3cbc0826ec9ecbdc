"""Notifications derived once per command (pure), and the webhook outbox they land in (LMDB):
kept only for an endpoint that wants them, in order, trimmed behind every endpoint's cursor."""

from __future__ import annotations

import uuid

import httpx
import pytest
import trio
from click.testing import CliRunner

from actors.runtime import open_billing
from api.cli import main
from engine.account import Account
from engine.caps import CapSetting, validated_caps
from engine.commands import AddCredits, ReportUsage, credits_fingerprint, usage_fingerprint
from engine.controls import SetSpendControls
from engine.errors import InvalidInput
from engine.ids import TransactionId, UserId, transaction_id_str
from engine.ledger import EntryType
from engine.lots import LotRequest, balance_as_lots
from engine.notifications import EventType, Notification
from engine.transitions import Context, apply
from engine.webhooks import (
    ParkedWebhook,
    RequeueWebhooks,
    WebhookAck,
    WebhookEndpoint,
    validated_event_types,
    validated_url,
)
from integrations.webhooks.delivery import WebhookDelivery
from storage import codec
from storage.lmdb_store import LmdbStore
from storage.store import CommitBatch
from tests.conftest import new_user

USER = UserId(uuid.UUID(int=21))
NOW = 1_800_000_000_000
MICROS = 1_000_000


def ctx(tid: int) -> Context:
    return Context(NOW, TransactionId(tid))


def account(balance_cents: int) -> Account:
    lots, debt = balance_as_lots(balance_cents)
    return Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=balance_cents,
                   lots=lots, debt_cents=debt)


def with_thresholds(state: Account, *thresholds: int, caps=()) -> Account:
    transition = apply(state, SetSpendControls(USER, validated_caps(caps), None, thresholds),
                       ctx(1))
    assert transition.account is not None
    return transition.account


def spend(state: Account, cents: int, tid: int) -> tuple[Account, list[Notification]]:
    usage = ReportUsage(USER, f"e{tid}", cents * MICROS,
                        usage_fingerprint(USER, None, cents * MICROS), NOW)
    transition = apply(state, usage, ctx(tid))
    assert transition.account is not None
    return transition.account, [record for record in transition.records
                                if isinstance(record, Notification)]


def grant(state: Account, cents: int, tid: int) -> tuple[Account, list[Notification]]:
    command = AddCredits(USER, cents, EntryType.BONUS, None,
                         credits_fingerprint(USER, cents, EntryType.BONUS))
    transition = apply(state, command, ctx(tid))
    assert transition.account is not None
    return transition.account, [record for record in transition.records
                                if isinstance(record, Notification)]


def kinds(events: list[Notification]) -> list[EventType]:
    return [event.event_type for event in events]


def test_low_balance_fires_when_crossed_downwards_and_rearms_above_it():
    state = with_thresholds(account(100), 50, 20)
    state, events = spend(state, 40, 2)
    assert kinds(events) == []
    state, events = spend(state, 15, 3)  # 60 -> 45: below 50
    assert kinds(events) == [EventType.BALANCE_LOW]
    assert events[0].data["threshold_cents"] == 50
    state, events = spend(state, 5, 4)  # still below 50: not again
    assert kinds(events) == []
    state, events = grant(state, 20, 5)  # 60: above 50 again (re-armed)
    assert kinds(events) == []
    state, events = spend(state, 45, 6)  # 60 -> 15: both thresholds at once
    assert [event.data["threshold_cents"] for event in events] == [50, 20]


def test_depleted_and_recovered_with_stable_ids():
    state, events = spend(account(10), 10, 7)
    assert kinds(events) == [EventType.BALANCE_DEPLETED]
    assert events[0].event_id == "evt_00000000000000000000000007_0"
    state, events = grant(state, 5, 8)
    assert kinds(events) == [EventType.BALANCE_RECOVERED]


def test_spend_limit_reached_is_announced_once_per_window():
    state = with_thresholds(account(1_000), caps=[CapSetting("day", 30, hard=False)])
    state, events = spend(state, 30, 2)
    assert kinds(events) == [EventType.SPEND_LIMIT_REACHED]
    assert events[0].data["limit_cents"] == 30
    state, events = spend(state, 5, 3)
    assert kinds(events) == []


def test_a_command_that_changes_nothing_announces_nothing():
    state = with_thresholds(account(100), 50)
    assert apply(state, SetSpendControls(USER, (), None, None), ctx(2)).records == ()


@pytest.mark.parametrize("url", ["ftp://x.io/hook", "http:///hook", "http://x.io/a#b",
                                 "http://x .io/", "http://x.io/\n", "hook"])
def test_bad_endpoint_urls_are_refused(url):
    with pytest.raises(InvalidInput) as refused:
        validated_url(url)
    assert refused.value.details["field"] == "url"


def test_unknown_and_missing_event_types_are_refused():
    with pytest.raises(InvalidInput) as refused:
        validated_event_types(["balance.low", "balance.lower"])
    assert refused.value.details["field"] == "event_types[1]"
    with pytest.raises(InvalidInput):
        validated_event_types([])
    assert validated_event_types(["balance.low", "balance.low"]) == (EventType.BALANCE_LOW,)


def event(index: int, kind: EventType = EventType.BALANCE_LOW) -> Notification:
    return Notification(f"evt_{index}", USER, kind, NOW + index, {"n": index})


def endpoint(endpoint_id: str, *wanted: EventType) -> WebhookEndpoint:
    return WebhookEndpoint(endpoint_id, "http://127.0.0.1:9/h", wanted, "whsec_x", NOW)


def test_the_webhook_outbox_keeps_events_for_endpoints_that_want_them(tmp_path):
    store = LmdbStore(tmp_path / "data")
    try:
        store.commit(CommitBatch([], [event(1)]))  # nobody listens: not kept
        assert store.read_webhooks(0, 10) == []
        store.commit(CommitBatch([], [endpoint("a", EventType.BALANCE_LOW),
                                      endpoint("b", EventType.BALANCE_DEPLETED)]))
        store.commit(CommitBatch([], [event(2), event(3, EventType.PAYMENT_SUCCEEDED),
                                      event(4, EventType.BALANCE_DEPLETED)]))
        rows = store.read_webhooks(0, 10)
        assert [row["event"]["id"] for _, row in rows] == ["evt_2", "evt_4"]
        (first, _), (second, _) = rows
        parked = ParkedWebhook("a", first, rows[0][1]["event"], 9, "HTTP 500")
        store.commit(CommitBatch([], [WebhookAck("a", second, (parked,))]))
        # "b" has not taken either: both stay until it does.
        assert len(store.read_webhooks(0, 10)) == 2
        store.commit(CommitBatch([], [WebhookAck("b", second)]))
        assert store.read_webhooks(0, 10) == []
        assert store.webhook_dead_letters("a") == [parked]
        assert store.webhook_dead_letters("b") == []
        store.commit(CommitBatch([], [RequeueWebhooks("a", (first,))]))
        ((_, again),) = store.read_webhooks(0, 10)
        assert (again["event"]["id"], again["only"]) == ("evt_2", "a")
        assert store.webhook_dead_letters() == []
    finally:
        store.close()
    reopened = LmdbStore(tmp_path / "data")
    try:
        cursors = {found.endpoint_id: found.cursor for found in reopened.webhook_endpoints()}
        assert cursors == {"a": second, "b": second}
        assert len(reopened.read_webhooks(0, 10)) == 1
    finally:
        reopened.close()


def test_endpoint_and_parked_records_round_trip():
    stored = WebhookEndpoint("we_1", "https://x.io/h", (EventType.BALANCE_LOW,), "whsec_a", 5,
                             "whsec_b", 99, False, 12)
    assert codec.decode_endpoint("we_1", codec.encode_endpoint(stored)) == stored
    parked = ParkedWebhook("we_1", 3, {"id": "evt_1", "type": "balance.low"}, 4, "timeout")
    assert codec.decode_parked_webhook(codec.encode_parked_webhook(parked)) == parked


def test_the_cli_lists_endpoints_and_parked_events_and_resends_them(tmp_path):
    data_dir = tmp_path / "data"
    store = LmdbStore(data_dir)
    try:
        store.commit(CommitBatch([], [endpoint("we_a", EventType.BALANCE_LOW)]))
        store.commit(CommitBatch([], [event(1), event(2)]))
        rows = store.read_webhooks(0, 10)
        parked = tuple(ParkedWebhook("we_a", sequence, row["event"], 7, "HTTP 503: down")
                       for sequence, row in rows)
        store.commit(CommitBatch([], [WebhookAck("we_a", rows[-1][0], parked)]))
    finally:
        store.close()
    runner = CliRunner()
    listed = runner.invoke(main, ["webhooks", "list", "--data-dir", str(data_dir)])
    assert listed.exit_code == 0, listed.output
    assert "we_a  http://127.0.0.1:9/h" in listed.output
    letters = runner.invoke(main, ["webhooks", "dead-letters", "--data-dir", str(data_dir)])
    assert letters.exit_code == 0, letters.output
    assert "2 parked webhook events" in letters.output and "HTTP 503: down" in letters.output
    resent = runner.invoke(main, ["webhooks", "resend", "we_a", "--sequence",
                                  str(rows[0][0]), "--data-dir", str(data_dir)])
    assert resent.exit_code == 0, resent.output
    assert "1 events back in the outbox for we_a" in resent.output
    reopened = LmdbStore(data_dir)
    try:
        assert [letter.event["id"] for letter in reopened.webhook_dead_letters()] == ["evt_2"]
        ((_, row),) = reopened.read_webhooks(0, 10)
        assert (row["event"]["id"], row["only"]) == ("evt_1", "we_a")
    finally:
        reopened.close()


def test_a_host_label_longer_than_dns_allows_is_refused_and_never_reaches_delivery():
    with pytest.raises(InvalidInput):
        validated_url(f"https://{'a' * 64}.example.com/hook")
    assert validated_url(f"https://{'a' * 63}.example.com/hook")


async def test_an_attempt_that_fails_outside_httpx_is_a_failed_attempt_not_a_crash():
    """A URL stored before a rule tightened (or one the resolver refuses) must cost one
    attempt, not the delivery task: getaddrinfo raises UnicodeError for a 64-byte label."""
    endpoint = WebhookEndpoint("we_1", f"http://{'a' * 64}.invalid/h", (EventType.BALANCE_LOW,),
                               "whsec_x", NOW)
    delivery = WebhookDelivery(_NoWebhooks(), lambda: NOW)  # type: ignore[arg-type]
    async with httpx.AsyncClient() as client:
        error = await delivery._post(client, endpoint, "evt_1", b"{}")
    assert error is not None and error.startswith(("request:", "connection:"))


class _NoWebhooks:
    """The delivery's view of the store, unused by a single attempt."""


async def test_credits_expiring_reaches_the_webhook_outbox_from_the_lots_own_timer(data_dir):
    """A lot expiring within the notice is announced at once by its timer, through the
    deadline scheduler, in a commit of its own; a lot that never expires is not."""
    user = new_user()
    async with open_billing(data_dir) as billing:
        endpoint = await billing.webhooks.create("http://127.0.0.1:9/hook",
                                                 ["credits.expiring"])
        await billing.open_account(user)
        await billing.add_credits(user, 500)
        expires_at_ms = billing.wall_clock_ms() + 86_400_000
        granted = await billing.add_credits(user, 300,
                                            lot=LotRequest(expires_at_ms=expires_at_ms))
        with trio.fail_after(10):
            while not (rows := billing.webhooks.outbox_after(endpoint.cursor, 10)):
                await trio.sleep(0.02)
    (row,) = [event for _, event in rows]
    event = row["event"]
    assert (event["type"], event["user_id"]) == ("credits.expiring", str(user))
    assert event["data"]["lot_id"] == transaction_id_str(granted.transaction_id)
    assert (event["data"]["remaining_cents"], event["data"]["expires_at_ms"]) == (
        300, expires_at_ms)
