"""Lago export: the transactional outbox, batches, outages, crashes, dead letters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from actors.runtime import open_billing
from engine.export import CODE_LLM_INPUT_TOKENS, CODE_LLM_OUTPUT_TOKENS
from engine.metering import UsageRequest
from engine.subscription_state import Manager
from engine.usage import Compute, LlmTokens
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter
from storage.lmdb_store import LmdbStore
from tests.conftest import new_user
from tests.fake_lago import BATCH_EVENTS_MAX, FakeLago

ROOT = Path(__file__).resolve().parents[1]
DRAIN_TIMEOUT_S = 60
CHILD_WAIT_S = 60
LLM_CODES = (CODE_LLM_INPUT_TOKENS, CODE_LLM_OUTPUT_TOKENS)


def to(lago: FakeLago):
    return lago_exporter(LagoClient(lago.url, lago.api_key))


async def drained(billing) -> None:
    with trio.fail_after(DRAIN_TIMEOUT_S):
        while billing.export_backlog():
            await trio.sleep(0.05)


async def until(condition) -> None:
    with trio.fail_after(DRAIN_TIMEOUT_S):
        while not condition():
            await trio.sleep(0.02)


def check_schema(lago: FakeLago) -> None:
    assert lago.schema_errors == []
    if not lago.validates_schema:
        pytest.skip("Lago's OpenAPI document is not on this machine; checked in CI")


async def test_20000_debits_arrive_exactly_once_in_batches(data_dir, pricing):
    lago = FakeLago()
    users = [new_user() for _ in range(20)]
    async with open_billing(data_dir, pricing=pricing,
                            exporter=to(lago)) as billing:
        for user in users:
            await billing.open_account(user)
            await billing.add_credits(user, 10**9)
        event_ids = []
        for chunk in range(20):
            requests = []
            for index in range(1000):
                event_id = f"e-{chunk}-{index}"
                event_ids.append(event_id)
                requests.append(UsageRequest(
                    event_id=event_id, user_id=users[index % len(users)],
                    metric=LlmTokens("anthropic", "claude-3-haiku", 1000 + index, 10),
                    agent_id="agent-1",
                ))
            results = await billing.report_usage_many(requests)
            assert not [r for r in results if isinstance(r, Exception)]
        await drained(billing)
    assert set(lago.events) == {f"{e}:{code}" for e in event_ids for code in LLM_CODES}
    assert len(lago.events) == 40_000
    assert max(lago.batch_sizes) <= BATCH_EVENTS_MAX
    assert lago.duplicates_refused == 0
    sample = lago.events["e-3-7:llm_input_tokens"]
    assert sample["properties"] == {"tokens": "1007", "provider": "anthropic",
                                    "model": "claude-3-haiku", "agent_id": "agent-1"}
    assert sample["external_subscription_id"] == str(users[7])
    # Every account's customer reached Lago before its first event.
    assert set(lago.customers) == {str(user) for user in users}
    assert lago.events_before_customer == 0
    check_schema(lago)


async def test_cost_only_events_export_nothing_and_compute_exports_exact_decimals(
    data_dir, pricing
):
    lago = FakeLago()
    user = new_user()
    async with open_billing(data_dir, pricing=pricing,
                            exporter=to(lago)) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 1000)
        await billing.report_usage(UsageRequest(event_id="cost", user_id=user, cost_cents=3))
        await billing.report_usage(UsageRequest(
            event_id="job", user_id=user,
            metric=Compute(cpu_hours=Decimal("2.5"), memory_gb_hours=Decimal("0.125"))))
        await drained(billing)
    assert sorted(lago.events) == ["job:cpu_hours", "job:memory_gb_hours"]
    assert lago.events["job:cpu_hours"]["properties"] == {"cpu_hours": "2.5"}
    assert lago.events["job:memory_gb_hours"]["properties"] == {"memory_gb_hours": "0.125"}
    check_schema(lago)


async def test_an_event_lago_refuses_is_parked_and_resent_after_the_fix(data_dir, pricing):
    lago = FakeLago()
    lago.reject.add("bad:llm_input_tokens")
    user = new_user()
    async with open_billing(data_dir, pricing=pricing,
                            exporter=to(lago)) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**6)
        ids = [f"ok-{i}" for i in range(150)] + ["bad"] + [f"ok-{i}" for i in range(150, 300)]
        await billing.report_usage_many([
            UsageRequest(event_id=e, user_id=user, metric=LlmTokens("openai", "gpt-4o", 10, 1))
            for e in ids
        ])
        await drained(billing)
        (parked,) = billing.dead_letters()
        assert parked.event["transaction_id"] == "bad:llm_input_tokens"
        assert parked.status == 422
        assert "metric_not_found" in parked.reason
        assert len(lago.events) == 601
        assert "bad:llm_output_tokens" in lago.events
        lago.reject.clear()
        assert await billing.requeue_dead_letters() == 1
        await drained(billing)
        assert billing.dead_letters() == []
    assert len(lago.events) == 602
    assert "bad:llm_input_tokens" in lago.events
    check_schema(lago)


async def test_shutdown_in_the_middle_of_an_export_round_is_clean_and_loses_nothing(
    data_dir, pricing
):
    lago = FakeLago()
    lago.mode = "slow"  # every request takes a while: the round is in flight at shutdown
    user = new_user()
    async with open_billing(data_dir, pricing=pricing, exporter=to(lago)) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**6)
        await billing.report_usage_many([
            UsageRequest(event_id=f"s-{i}", user_id=user,
                         metric=LlmTokens("openai", "gpt-4o", 10, 1)) for i in range(300)
        ])
        await until(lambda: lago.requests >= 1)
    # The block exited without an error; what was not acknowledged is sent on the next start.
    lago.mode = "ok"
    async with open_billing(data_dir, pricing=pricing, exporter=to(lago)) as billing:
        await drained(billing)
    assert len(lago.events) == 600
    assert set(lago.customers) == {str(user)}


async def test_rate_limits_and_server_errors_are_retried_without_loss(data_dir, pricing):
    lago = FakeLago()
    lago.mode = "rate_limited"
    user = new_user()
    async with open_billing(data_dir, pricing=pricing,
                            exporter=to(lago)) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**6)
        await billing.report_usage_many([
            UsageRequest(event_id=f"r-{i}", user_id=user,
                         metric=LlmTokens("openai", "gpt-4o", 10, 1)) for i in range(50)
        ])
        await until(lambda: lago.statuses[429] >= 2)
        assert billing.export_backlog() == 101  # the customer row and 100 events
        lago.mode = "error"
        await until(lambda: lago.statuses[500] >= 2)
        assert billing.export_backlog() == 101
        lago.mode = "ok"
        await drained(billing)
    assert len(lago.events) == 100
    assert lago.statuses[429] >= 1
    assert lago.statuses[500] >= 1


def read_acks(child: subprocess.Popen, count: int, acked: list[str]) -> None:
    deadline = time.monotonic() + CHILD_WAIT_S
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("ACK "):
            acked.append(line.split()[1])
            if len(acked) >= count:
                return
        assert time.monotonic() < deadline, "child too slow"
    raise AssertionError("child ended early")


def outbox_depth(data_dir: Path) -> int:
    store = LmdbStore(data_dir, readonly=True)
    try:
        return store.outbox_depth()
    finally:
        store.close()


def start_child(data_dir: Path, lago: FakeLago, events: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.export_child", str(data_dir), lago.url, lago.api_key,
         str(events)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_lago_outage_and_a_crash_lose_and_double_nothing(tmp_path):
    data_dir = tmp_path / "data"
    lago = FakeLago()
    child = start_child(data_dir, lago, 4000)
    acked: list[str] = []
    try:
        read_acks(child, 300, acked)
        lago.mode = "error"  # Lago answers 5xx ...
        read_acks(child, 1200, acked)
        lago.stop()  # ... then refuses connections
        read_acks(child, 2000, acked)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # and we crash during the outage
        child.wait(timeout=CHILD_WAIT_S)
    lago.start()
    lago.mode = "ok"
    child = start_child(data_dir, lago, 0)
    try:
        store = LmdbStore(data_dir, readonly=True)
        try:
            committed = {outcome.key for outcome in store.iter_outcomes()
                         if outcome.scope == "usage"}
        finally:
            store.close()
        assert set(acked) <= committed
        expected = {f"{e}:{code}" for e in committed for code in LLM_CODES}
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while set(lago.events) != expected:
            assert time.monotonic() < deadline, (len(lago.events), len(expected))
            time.sleep(0.1)
        # Lago has every event; the exporter commits its cursor just after Lago's answer,
        # so the outbox empties a moment later (a read-only view beside the running child).
        while (depth := outbox_depth(data_dir)) != 0:
            assert time.monotonic() < deadline, f"{depth} exported events still in the outbox"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=CHILD_WAIT_S)
    store = LmdbStore(data_dir, readonly=True)
    try:
        assert store.outbox_depth() == 0
        assert store.dead_letters() == []
    finally:
        store.close()
    assert lago.schema_errors == []


async def test_plan_subscriptions_are_mirrored_to_lago_through_the_outbox(data_dir, pricing):
    lago = FakeLago()
    user = new_user()
    async with open_billing(data_dir, pricing=pricing, exporter=to(lago)) as billing:
        await billing.open_account(user)
        await billing.subscriptions.subscribe(
            user, "zb-sub-1", "pro", monthly_credits=6_000, managed_by=Manager.ADMIN,
            period_start_ms=1_700_000_000_000, period_end_ms=1_702_592_000_000,
            lago_plan_code="pro")
        await until(lambda: "zb-sub-1" in lago.subscriptions)
        assert lago.subscriptions["zb-sub-1"] == {
            "external_customer_id": str(user), "external_id": "zb-sub-1", "plan_code": "pro"}
        await billing.subscriptions.subscribe(
            user, "zb-sub-2", "standard", monthly_credits=2_500, managed_by=Manager.ADMIN,
            period_start_ms=1_700_000_000_000, period_end_ms=1_702_592_000_000,
            lago_plan_code="standard")
        await until(lambda: "zb-sub-2" in lago.subscriptions)
        await billing.subscriptions.end(user, "zb-sub-2")
        await until(lambda: lago.terminated == ["zb-sub-1", "zb-sub-2"])
        await drained(billing)
    check_schema(lago)
    assert lago.subscriptions == {}
    lago.stop()
