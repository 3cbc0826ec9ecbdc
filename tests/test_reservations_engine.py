"""Reservations on the real engine: races, expiry timers, restarts, durability."""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from actors.runtime import open_billing
from engine.errors import (
    DuplicateEvent,
    InsufficientCredits,
    NotFound,
    ReservationExpired,
)
from engine.metering import UsageRequest
from engine.reservations import ReservationStatus
from engine.usage import LlmTokens
from storage.lmdb_store import LmdbStore
from storage.verify import verify_store
from tests.conftest import new_user

BASE_MS = 1_700_000_000_000


def trio_wall_clock() -> int:
    """Wall time that follows trio's (mock) clock, so expiry can be tested without sleeping."""
    return BASE_MS + int(trio.current_time() * 1000)


async def test_100_concurrent_reservations_on_credit_for_40_hold_exactly_40(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 400)
        held: list[str] = []
        refused = 0

        async def try_reserve(index: int) -> None:
            nonlocal refused
            try:
                await billing.reserve(user, f"race-{index}", amount_cents=10)
                held.append(f"race-{index}")
            except InsufficientCredits:
                refused += 1

        async with trio.open_nursery() as nursery:
            for index in range(100):
                nursery.start_soon(try_reserve, index)
        assert (len(held), refused) == (40, 60)
        account = await billing.get_account(user)
        assert (account.balance_cents, account.held_cents,
                account.available_cents(billing.wall_clock_ms())) == (400, 400, 0)
        assert (await billing.verify()).ok


async def test_commit_release_and_get_through_the_facade(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 100)
        estimate = LlmTokens("anthropic", "claude-3-5-sonnet", 10_000, 5_000)  # 10.5 credits
        held = await billing.reserve(user, "stream-1", metric=estimate)
        assert held.reservation.amount_cents == 11
        committed = await billing.commit_reservation(
            "stream-1", metric=LlmTokens("anthropic", "claude-3-5-sonnet", 2_000, 1_000)
        )
        assert (committed.usage.cost_cents, committed.usage.cost_micros) == (2, 2_100_000)
        assert committed.released_cents == 9
        with pytest.raises(DuplicateEvent) as duplicate:
            await billing.commit_reservation(
                "stream-1", metric=LlmTokens("anthropic", "claude-3-5-sonnet", 2_000, 1_000)
            )
        assert duplicate.value.original == committed.to_dict()
        # The commit's event id is a usage event id like any other.
        with pytest.raises(DuplicateEvent):
            await billing.report_usage(UsageRequest(
                event_id="stream-1", user_id=user,
                metric=LlmTokens("anthropic", "claude-3-5-sonnet", 2_000, 1_000)))
        stored = await billing.get_reservation("stream-1")
        assert stored.status is ReservationStatus.COMMITTED
        await billing.reserve(user, "stream-2", amount_cents=20)
        released = await billing.release_reservation("stream-2")
        assert released.released_cents == 20
        account = await billing.get_account(user)
        assert (account.balance_cents, account.held_cents) == (98, 0)
        with pytest.raises(NotFound):
            await billing.release_reservation("never")
        assert billing.system.counters.reservation_commits == 1
        assert billing.system.counters.reservation_releases == 1
        assert (await billing.verify()).ok


async def test_expiry_fires_on_time_under_a_running_engine(data_dir, pricing, mock_clock):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing, wall_clock_ms=trio_wall_clock) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 50)
        await billing.reserve(user, "short", amount_cents=30, ttl_s=5)
        mock_clock.jump(4.9)
        await wait_all_tasks_blocked()
        assert (await billing.get_account(user)).held_cents == 30
        mock_clock.jump(0.2)
        await wait_all_tasks_blocked()
        assert (await billing.get_account(user)).held_cents == 0
        assert (await billing.get_reservation("short")).status is ReservationStatus.EXPIRED
        with pytest.raises(ReservationExpired):
            await billing.commit_reservation("short", cost_cents=1)
        assert (await billing.get_account(user)).balance_cents == 50
        assert billing.system.counters.reservation_expiries == 1


async def test_a_hold_that_expired_while_down_is_released_on_start(data_dir, pricing):
    user = new_user()
    offset_ms = [0]

    def clock() -> int:
        return BASE_MS + offset_ms[0]

    async with open_billing(data_dir, pricing=pricing, wall_clock_ms=clock) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 50)
        await billing.reserve(user, "stale", amount_cents=30, ttl_s=60)
        await billing.reserve(user, "fresh", amount_cents=10, ttl_s=3600)
    offset_ms[0] = 120_000  # two minutes pass while the server is down
    async with open_billing(data_dir, pricing=pricing, wall_clock_ms=clock) as billing:
        await wait_all_tasks_blocked()
        account = await billing.get_account(user)
        assert account.held_cents == 10
        assert (await billing.get_reservation("stale")).status is ReservationStatus.EXPIRED
        assert (await billing.get_reservation("fresh")).status is ReservationStatus.HELD
        committed = await billing.commit_reservation("fresh", cost_cents=4)
        assert committed.released_cents == 6
    store = LmdbStore(data_dir)
    try:
        report = verify_store(store)
        assert report.ok, report.violations
        assert store.get_account(user).held_cents == 0
    finally:
        store.close()
