"""The engine on real LMDB: facade, journal, actors, durability, faults."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry
from trio.testing import wait_all_tasks_blocked

from actors.runtime import open_billing
from actors.system import MAILBOX_CAPACITY
from engine.commands import ReportUsage, UsageResult
from engine.errors import (
    AccountNotFound,
    BillingError,
    DuplicateEvent,
    EngineStopped,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    Overloaded,
)
from engine.ledger import EntryType
from engine.metering import UsageRequest
from engine.usage import Compute, LlmTokens
from storage.datadir_lock import DataDirLock, DataDirLocked
from storage.lmdb_store import LmdbStore
from storage.store import CommitBatch, Store, StoreError
from storage.verify import verify_store
from tests.conftest import new_user


def cost(event_id: str, user, cents: int) -> UsageRequest:
    return UsageRequest(event_id=event_id, user_id=user, cost_cents=cents)


async def test_account_credit_usage_round_trip(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        created = await billing.open_account(user)
        assert created.balance_cents == 0
        granted = await billing.add_credits(user, 1000, entry_type=EntryType.PURCHASE)
        assert granted.balance_cents == 1000
        result = await billing.report_usage(
            UsageRequest(
                event_id="call-1",
                user_id=user,
                metric=LlmTokens("anthropic", "claude-3-5-sonnet", 10_000, 5_000),
            )
        )
        assert (result.cost_cents, result.cost_micros, result.balance_cents) == (
            10, 10_500_000, 990,
        )
        compute = await billing.report_usage(
            UsageRequest(
                event_id="job-1",
                user_id=user,
                metric=Compute(cpu_hours=Decimal("2.0"), memory_gb_hours=Decimal("4.0")),
            )
        )
        assert compute.cost_cents == 20
        account = await billing.get_account(user)
        assert (account.balance_cents, account.unbilled_micros, account.lifetime_used_cents) == (
            970, 500_000, 30,
        )
        assert account.lifetime_purchased_cents == 1000
    # Everything acknowledged is on disk after a restart.
    async with open_billing(data_dir, pricing=pricing) as billing:
        account = await billing.get_account(user)
        assert (account.balance_cents, account.seq) == (970, 3)
        page = await billing.list_transactions(user, limit=2)
        assert [entry.entry_type for entry in page.entries] == [EntryType.USAGE, EntryType.USAGE]
        assert page.has_more
        report = await billing.verify()
        assert report.ok, report.violations
        assert (report.accounts, report.entries) == (1, 3)


async def test_duplicate_event_is_rejected_with_the_original_result_across_restart(
    data_dir, pricing
):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 100)
        first = await billing.report_usage(cost("e-1", user, 7))
        with pytest.raises(DuplicateEvent) as duplicate:
            await billing.report_usage(cost("e-1", user, 7))
        assert duplicate.value.original == first.to_dict()
    async with open_billing(data_dir, pricing=pricing) as billing:
        with pytest.raises(DuplicateEvent) as duplicate:
            await billing.report_usage(cost("e-1", user, 7))
        assert duplicate.value.original == first.to_dict()
        with pytest.raises(IdempotencyConflict):
            await billing.report_usage(cost("e-1", user, 8))
        assert (await billing.get_account(user)).balance_cents == 93


async def test_concurrent_duplicates_debit_once(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 100)
        outcomes: list[object] = []

        async def send() -> None:
            try:
                outcomes.append(await billing.report_usage(cost("same", user, 5)))
            except DuplicateEvent as duplicate:
                outcomes.append(duplicate)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(send)
        successes = [o for o in outcomes if isinstance(o, UsageResult)]
        duplicates = [o for o in outcomes if isinstance(o, DuplicateEvent)]
        assert len(successes) == 1
        assert len(duplicates) == 19
        assert all(d.original == successes[0].to_dict() for d in duplicates)
        assert (await billing.get_account(user)).balance_cents == 95


async def test_same_event_id_for_two_users_at_once_is_a_conflict(data_dir, pricing):
    alice, bob = new_user(), new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        for user in (alice, bob):
            await billing.open_account(user)
            await billing.add_credits(user, 100)
        results = await billing.report_usage_many([cost("shared", alice, 1),
                                                   cost("shared", bob, 1)])
        assert isinstance(results[0], UsageResult)
        assert isinstance(results[1], IdempotencyConflict)
        assert (await billing.get_account(bob)).balance_cents == 100


async def test_500_concurrent_debits_with_credit_for_300(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 300 * 7)
        succeeded = 0
        refused = 0

        async def debit(index: int) -> None:
            nonlocal succeeded, refused
            try:
                await billing.report_usage(cost(f"race-{index}", user, 7))
                succeeded += 1
            except InsufficientCredits as error:
                assert error.required_cents == 7
                refused += 1

        async with trio.open_nursery() as nursery:
            for index in range(500):
                nursery.start_soon(debit, index)
        assert (succeeded, refused) == (300, 200)
        account = await billing.get_account(user)
        assert account.balance_cents == 0
        assert account.lifetime_used_cents == 2100
        assert (await billing.verify()).ok


async def test_batch_applies_events_of_one_account_in_request_order(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10)
        results = await billing.report_usage_many(
            [cost("a", user, 4), cost("b", user, 4), cost("c", user, 4), cost("a", user, 4)]
        )
        assert [type(r).__name__ for r in results] == [
            "UsageResult", "UsageResult", "InsufficientCredits", "DuplicateEvent",
        ]
        assert [r.balance_cents for r in results[:2]] == [6, 2]


async def test_unknown_account_and_bad_input_change_nothing(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        with pytest.raises(AccountNotFound):
            await billing.report_usage(cost("e", user, 1))
        with pytest.raises(AccountNotFound):
            await billing.get_account(user)
        await billing.open_account(user)
        with pytest.raises(InvalidInput):
            await billing.add_credits(user, 0)
        with pytest.raises(InvalidInput):
            await billing.report_usage(UsageRequest(event_id="x", user_id=user))
        with pytest.raises(InvalidInput):
            await billing.report_usage(
                UsageRequest(event_id="x", user_id=user, cost_cents=1, cost_micros=1)
            )
        account = await billing.get_account(user)
        assert (account.balance_cents, account.seq) == (0, 0)


async def test_idempotent_admin_grant(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        first = await billing.add_credits(user, 500, idempotency_key="k1", description="promo")
        with pytest.raises(DuplicateEvent) as duplicate:
            await billing.add_credits(user, 500, idempotency_key="k1")
        assert duplicate.value.original == first.to_dict()
        with pytest.raises(IdempotencyConflict):
            await billing.add_credits(user, 501, idempotency_key="k1")
        assert (await billing.get_account(user)).balance_cents == 500


async def test_transactions_page_with_offset_and_before_cursor(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        for amount in range(1, 8):
            await billing.add_credits(user, amount)
        everything = (await billing.list_transactions(user, limit=100)).entries
        assert [entry.amount for entry in everything] == [7, 6, 5, 4, 3, 2, 1]
        page = await billing.list_transactions(user, limit=3, offset=2)
        assert [entry.amount for entry in page.entries] == [5, 4, 3]
        assert page.has_more
        after = await billing.list_transactions(
            user, limit=3, before=page.entries[-1].transaction_id
        )
        assert [entry.amount for entry in after.entries] == [2, 1]
        assert not after.has_more
        with pytest.raises(InvalidInput):
            await billing.list_transactions(user, limit=101)


async def test_second_process_on_the_same_data_dir_is_refused(data_dir, pricing):
    async with open_billing(data_dir, pricing=pricing):
        with pytest.raises(DataDirLocked):
            DataDirLock(data_dir)
    DataDirLock(data_dir).release()


async def test_a_tiny_map_grows_instead_of_failing(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing, map_size_bytes=64 * 1024) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**9)
        for round_index in range(20):
            results = await billing.report_usage_many(
                [cost(f"grow-{round_index}-{i}", user, 1) for i in range(200)]
            )
            assert all(isinstance(result, UsageResult) for result in results)
        assert (await billing.get_account(user)).seq == 4001
        assert (await billing.verify()).ok


async def test_backup_while_debiting_is_consistent(data_dir, tmp_path, pricing):
    user = new_user()
    backup_dir = tmp_path / "backup"
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10_000)

        async def debit_stream() -> None:
            for index in range(300):
                await billing.report_usage(cost(f"b-{index}", user, 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(debit_stream)
            await trio.sleep(0.01)
            await billing.backup(backup_dir)
    copy = LmdbStore(backup_dir)
    try:
        report = verify_store(copy)
        assert report.ok, report.violations
        assert report.accounts == 1
        assert 1 <= report.entries <= 301
    finally:
        copy.close()


class FailingStore:
    """A Store that fails the commit number `fail_at` (1-based) as a full disk would."""

    def __init__(self, inner: Store, fail_at: int) -> None:
        self._inner = inner
        self._fail_at = fail_at
        self.commits = 0

    def commit(self, batch: CommitBatch) -> None:
        self.commits += 1
        if self.commits == self._fail_at:
            raise StoreError("No space left on device")
        self._inner.commit(batch)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


async def test_a_failed_commit_tells_no_caller_success_and_stops_the_engine(data_dir, pricing):
    user = new_user()
    wrapper: list[FailingStore] = []

    def wrap(inner: Store) -> Store:
        wrapper.append(FailingStore(inner, fail_at=3))
        return wrapper[0]  # type: ignore[return-value]

    acknowledged: list[str] = []
    failed: list[str] = []
    async with open_billing(data_dir, pricing=pricing, wrap_store=wrap) as billing:
        await billing.open_account(user)  # commit 1
        await billing.add_credits(user, 1000)  # commit 2

        async def debit(index: int) -> None:
            try:
                await billing.report_usage(cost(f"f-{index}", user, 1))
                acknowledged.append(f"f-{index}")
            except EngineStopped:
                failed.append(f"f-{index}")

        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(debit, index)
        assert not billing.accepting_writes
        assert acknowledged == []
        assert len(failed) == 50
        with pytest.raises(EngineStopped):
            await billing.add_credits(user, 1)
        with pytest.raises(EngineStopped):
            await billing.report_usage(cost("after", user, 1))
    store = LmdbStore(data_dir)
    try:
        report = verify_store(store)
        assert report.ok, report.violations
        account = store.get_account(user)
        assert account is not None
        assert (account.balance_cents, account.seq) == (1000, 1)
    finally:
        store.close()


async def test_a_crashing_command_fails_alone_and_the_account_carries_on(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 50)
        # A malformed command that slipped past validation makes its transition raise.
        broken = ReportUsage(
            user_id=user, event_id="boom", cost_micros="1",  # type: ignore[arg-type]
            fingerprint=b"", occurred_at_ms=0,
        )
        with pytest.raises(BillingError) as crashed:
            await billing.system.execute(broken)
        assert type(crashed.value) is BillingError
        assert crashed.value.code == "internal_error"
        assert billing.system.counters.crashes == 1
        with pytest.raises(InvalidInput):
            await billing.report_usage(
                UsageRequest(event_id="meta", user_id=user, cost_cents=1,
                             metadata={"x": object()})  # type: ignore[dict-item]
            )
        result = await billing.report_usage(cost("fine", user, 1))
        assert result.balance_cents == 49


async def test_idle_actors_are_passivated_and_reloaded(data_dir, pricing, mock_clock):
    # The mock clock stands still unless jumped, so worker-thread commits take no trio time.
    user = new_user()
    async with open_billing(data_dir, pricing=pricing, actor_idle_s=60) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 5)
        assert billing.system.is_loaded(user)
        mock_clock.jump(30)
        await wait_all_tasks_blocked()
        assert billing.system.is_loaded(user)
        mock_clock.jump(41)
        await wait_all_tasks_blocked()
        assert not billing.system.is_loaded(user)
        assert billing.system.counters.passivations == 1
        assert (await billing.get_account(user)).balance_cents == 5
        assert billing.system.is_loaded(user)


async def test_mailbox_bound_turns_a_flood_on_one_account_into_overloaded(data_dir, pricing):
    user = new_user()
    async with open_billing(data_dir, pricing=pricing) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**6)
        results = await billing.report_usage_many(
            [cost(f"flood-{i}", user, 1) for i in range(1000)]
        )
        assert all(isinstance(result, UsageResult) for result in results)
        capacity = MAILBOX_CAPACITY
        requests = [cost(f"over-{i}", user, 1) for i in range(capacity + 5)]
        decided = [billing._decide_usage(request) for request in requests]
        errors = [pending.error for pending in decided if pending.error is not None]
        assert len(errors) == 5
        assert all(isinstance(error, Overloaded) for error in errors)
        for pending in decided:
            with contextlib.suppress(Overloaded):
                await pending.settle()


def test_lmdb_path_is_a_directory(tmp_path: Path):
    store = LmdbStore(tmp_path / "d")
    store.close()
    assert (tmp_path / "d" / "data.mdb").exists()


async def test_the_journal_counts_its_worker_threads_cpu_by_phase(data_dir):
    registry = CollectorRegistry()
    user = new_user()
    async with open_billing(data_dir, registry=registry, checkpoint_interval_s=0.0) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10_000)
        for n in range(200):
            await billing.report_usage(cost(f"cpu-{n}", user, 1))
        with trio.fail_after(10):
            while billing.checkpoints == 0:
                await trio.sleep(0.01)
        commit_s, checkpoint_s = billing.journal_cpu_s
        assert commit_s > 0 and checkpoint_s > 0
        for phase, seconds in (("commit", commit_s), ("checkpoint", checkpoint_s)):
            exported = registry.get_sample_value("zbilling_journal_cpu_seconds_total",
                                                 {"phase": phase})
            assert exported is not None and exported >= seconds


async def test_entry_metrics_count_every_committed_entry_by_type(data_dir):
    registry = CollectorRegistry()
    user = new_user()
    async with open_billing(data_dir, registry=registry) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 500)
        await billing.add_credits(user, 40, entry_type=EntryType.REFUND)
        for n in range(3):
            await billing.report_usage(cost(f"metric-{n}", user, 7))

        def sample(name: str, entry_type: str) -> float | None:
            return registry.get_sample_value(f"zbilling_ledger_{name}_total",
                                             {"type": entry_type})

        assert (sample("entries", "usage"), sample("credits", "usage")) == (3, 21)
        assert (sample("entries", "bonus"), sample("credits", "bonus")) == (1, 500)
        assert (sample("entries", "refund"), sample("credits", "refund")) == (1, 40)
