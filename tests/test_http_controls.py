"""Spend caps and affordability end to end: a real server on 127.0.0.1 whose engine clock the
test moves (ZBILLING_CLOCK_FILE), in one process and with two HTTP workers."""

from __future__ import annotations

import datetime
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import httpx
import pytest

from api.client import BillingClient, SpendLimitExceeded
from tests.conftest import new_user
from tests.http_support import ADMIN_KEY, SERVICE_KEY, Server, service_headers, user_headers
from tests.test_http_lots import Clock, grant, opened

CONCURRENT_DEBITS = 50
# The name of the key SERVICE_API_KEY configures (api/settings.py).
SERVICE_KEY_NAME = "default"
ADMIN = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def clock(tmp_path_factory) -> Clock:
    return Clock(tmp_path_factory.mktemp("clock") / "offset_ms")


@pytest.fixture(scope="module")
def server(tmp_path_factory, clock, workers):
    running = Server(tmp_path_factory.mktemp("controls") / "data", workers=workers,
                     env={"ZBILLING_CLOCK_FILE": str(clock.path)})
    yield running
    if running.process.poll() is None:
        running.stop()


def funded(server: Server, cents: int = 10_000):
    user = opened(server)
    assert grant(server, user, cents).status_code == 200
    return user


def set_caps(server: Server, user, caps: list[dict], **extra) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/credits/spend-controls", headers=user_headers(user),
                      json={"caps": caps, **extra})


def debit(server: Server, user, cents: int, **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/usage", headers=service_headers(), json={
        "event_id": str(uuid.uuid4()), "user_id": str(user), "cost_cents": cents, **fields})


def balance(server: Server, user) -> dict:
    return httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()


def test_a_hard_cap_holds_under_50_concurrent_debits(server):
    user = funded(server)
    assert set_caps(server, user, [{"period": "day", "limit_cents": 100}]).status_code == 200
    with ThreadPoolExecutor(CONCURRENT_DEBITS) as pool:
        answers = list(pool.map(lambda _: debit(server, user, 3), range(CONCURRENT_DEBITS)))
    accepted = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code == 402]
    assert (len(accepted), len(refused)) == (33, 17)  # 33 x 3 = 99 of 100
    assert {answer.json()["error"]["code"] for answer in refused} == {"spend_limit_exceeded"}
    details = refused[0].json()["error"]["details"]
    assert details["limit_cents"] == 100 and details["spent_cents"] in range(0, 100)
    (cap,) = balance(server, user)["spend_caps"]
    assert (cap["spent_cents"], cap["remaining_cents"]) == (99, 1)
    assert balance(server, user)["balance_cents"] == 10_000 - 99


def test_an_open_hold_counts_against_the_cap_and_a_clamp_holds_what_is_left(server):
    user = funded(server)
    with BillingClient(server.url, service_key=SERVICE_KEY) as service:
        with BillingClient(server.url, bearer_token=f"test-token:{user}") as me:
            me.set_spend_controls([{"period": "week", "limit_cents": 50}])
        service.reserve(user, amount_cents=40)
        with pytest.raises(SpendLimitExceeded) as refused:
            service.report_usage(user, cost_cents=11)
        assert refused.value.limit_cents == 50
        clamped = service.reserve(user, amount_cents=30, clamp=True,
                                  provider="openai", model="gpt-4o", input_tokens=1_000)
        assert (clamped.held_cents, clamped.requested_cents, clamped.clamped) == (10, 30, True)
        # 10 credits pay 1,000 x 250 micros of prompt and 9,750 output tokens at 1,000 each.
        assert clamped.max_output_tokens == 9_750


def test_affordability_answers_the_output_tokens_under_the_balance_and_every_cap(server):
    user = funded(server, 100)
    with BillingClient(server.url, service_key=SERVICE_KEY) as service:
        prompt = {"provider": "openai", "model": "gpt-4o", "input_tokens": 1_000}
        assert service.check_balance(user, **prompt).max_output_tokens == 99_750
        assert set_caps(server, user, [
            {"period": "month", "limit_cents": 10, "scope": "agent", "name": "bot"},
            {"period": "day", "limit_cents": 20, "scope": "service",
             "name": SERVICE_KEY_NAME}]).status_code == 200
        agent = service.check_balance(user, 15, agent_id="bot", **prompt)
        assert (agent.max_output_tokens, agent.sufficient, agent.within_caps) == (
            9_750, False, False)
        assert service.check_balance(user, **prompt).max_output_tokens == 19_750
        assert service.check_balance(user, 20).sufficient
        service.report_usage(user, cost_cents=20)
        with pytest.raises(SpendLimitExceeded) as refused:
            service.report_usage(user, cost_cents=1)
        assert refused.value.details["scope"] == "service"


def test_the_day_resets_at_midnight_in_the_accounts_time_zone(server, clock):
    user = funded(server)
    zone = "America/New_York"
    assert set_caps(server, user, [{"period": "day", "limit_cents": 10}],
                    timezone=zone).status_code == 200
    now_s = time.time() + clock.offset_ms / 1000
    local = datetime.datetime.fromtimestamp(now_s, ZoneInfo(zone))
    midnight = datetime.datetime.combine(local.date() + datetime.timedelta(days=1),
                                         datetime.time(), ZoneInfo(zone))
    clock.advance(int((midnight.timestamp() - 60 - now_s) * 1000))  # 23:59 in New York
    assert debit(server, user, 10).status_code == 200
    refused = debit(server, user, 1)
    assert refused.status_code == 402, refused.text
    resets_at = refused.json()["error"]["details"]["resets_at"]
    assert datetime.datetime.fromisoformat(resets_at) == midnight
    clock.advance(2 * 60 * 1000)  # 00:01: a new day
    assert debit(server, user, 10).status_code == 200
    (cap,) = balance(server, user)["spend_caps"]
    assert cap["spent_cents"] == 10
    assert datetime.datetime.fromisoformat(cap["window_start"]) == midnight


def test_a_soft_cap_allows_and_shows_the_limit_reached(server):
    user = funded(server)
    assert set_caps(server, user, [{"period": "month", "limit_cents": 5,
                                    "hard": False}]).status_code == 200
    assert debit(server, user, 8).status_code == 200
    (cap,) = balance(server, user)["spend_caps"]
    assert (cap["spent_cents"], cap["remaining_cents"], cap["reached"]) == (8, 0, True)


def test_an_admin_sets_and_reads_any_accounts_caps(server):
    user = funded(server)
    with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
        set_by_admin = admin.admin_set_spend_controls(
            user, [{"period": "day", "limit_cents": 7}], timezone="Asia/Tokyo")
        assert set_by_admin.timezone == "Asia/Tokyo"
        assert admin.admin_spend_controls(user).caps[0].limit_cents == 7
        assert admin.admin_account(user).spend_caps[0].limit_cents == 7
    with BillingClient(server.url, bearer_token=f"test-token:{user}") as me:
        assert me.spend_controls().caps[0].limit_cents == 7
    unknown = httpx.get(f"{server.url}/v1/admin/accounts/{new_user()}/spend-controls",
                        headers=ADMIN)
    assert unknown.status_code == 404


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"caps": [{"period": "day", "limit_cents": 0}]}, 400, None),
    ({"caps": [{"period": "day", "limit_cents": -3}]}, 400, None),
    ({"caps": [{"period": "year", "limit_cents": 5}]}, 400, None),
    ({"caps": [{"period": "day", "limit_cents": 5, "scope": "agent"}]}, 400, "caps[0].name"),
    ({"caps": [{"period": "day", "limit_cents": 5}], "timezone": "Mars/Olympus"}, 400,
     "timezone"),
    ({"caps": [{"period": "day", "limit_cents": 5},
               {"period": "day", "limit_cents": 6}]}, 409, "caps[1]"),
])
def test_bad_caps_are_refused_in_the_one_error_format(server, body, status, field):
    user = opened(server)
    answer = httpx.post(f"{server.url}/v1/credits/spend-controls", headers=user_headers(user),
                        json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if field is not None:
        assert error["details"]["field"] == field


def test_usage_summary_per_day_model_and_agent_matches_the_ledger(server):
    user = funded(server)
    llm = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o",
           "input_tokens": 1_000, "output_tokens": 333}  # 583,000 micros
    for agent in ("a", "a", "b"):
        answer = httpx.post(f"{server.url}/v1/usage", headers=service_headers(), json={
            "event_id": str(uuid.uuid4()), "user_id": str(user), "metric": llm,
            "agent_id": agent})
        assert answer.status_code == 200, answer.text
    assert debit(server, user, 7).status_code == 200
    with BillingClient(server.url, bearer_token=f"test-token:{user}") as me:
        by_model = me.usage_summary(group_by="model")
        by_agent = me.usage_summary(group_by="agent")
        by_day = me.usage_summary()
        transactions = me.transactions(limit=100).transactions
    assert {group.key: group.totals.cost_micros for group in by_model.groups} == {
        "openai/gpt-4o": 3 * 583_000, "-": 7_000_000}
    assert {group.key: group.totals.events for group in by_agent.groups} == {
        "": 1, "a": 2, "b": 1}
    total = by_day.total
    assert (total.events, total.cost_micros, total.cost_credits) == (4, 8_749_000, "8.749000")
    assert (total.input_tokens, total.output_tokens) == (3_000, 999)
    debited = -sum(entry.amount_cents for entry in transactions if entry.type == "usage")
    assert total.debited_cents == debited == 8  # floor of 8.749 with the carry rule
    with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
        assert admin.admin_usage_summary(user, group_by="model").total == total
        nothing = admin.admin_usage_summary(user, from_day="2020-01-01", to_day="2020-01-31")
        assert (nothing.groups, nothing.total.events) == ([], 0)
    unknown = httpx.get(f"{server.url}/v1/admin/accounts/{new_user()}/usage/summary",
                        headers=ADMIN)
    assert unknown.status_code == 404
