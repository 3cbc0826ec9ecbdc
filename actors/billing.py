"""`Billing`: the facade the API and the CLI call. Each use case reads top to bottom:
validate, build the command, let the account's actor decide, wait until it is durable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from engine.pricing import PricingConfig, Quote, quote

from actors.journal import Journal
from actors.metrics import EngineMetrics
from actors.system import ActorSystem, Pending, WallClock
from engine.account import Account, AutoRefillSettings
from engine.commands import (
    AddCredits,
    BalanceCheck,
    CheckBalance,
    CloseAccount,
    CreditResult,
    GetAccount,
    OpenAccount,
    SetAutoRefill,
    UsageResult,
    credits_fingerprint,
)
from engine.errors import BillingError, InvalidInput
from engine.ids import TransactionId, UserId, parse_key
from engine.ledger import EntryType
from engine.metering import UsageRequest, usage_command, validate_metadata
from engine.money import AMOUNT_CENTS_MAX, require_amount_cents, require_int
from engine.usage import Metric
from storage.store import EntryPage, Store
from storage.verify import VerifyReport, verify_store

TRANSACTIONS_PAGE_MAX = 100
USAGE_BATCH_EVENTS_MAX = 1000
DESCRIPTION_LENGTH_MAX = 500


class Billing:
    def __init__(
        self,
        *,
        store: Store,
        journal: Journal,
        system: ActorSystem,
        pricing: PricingConfig,
        wall_clock_ms: WallClock,
        metrics: EngineMetrics,
    ) -> None:
        self._store = store
        self._journal = journal
        self._system = system
        self.pricing = pricing
        self._wall_clock_ms = wall_clock_ms
        self.metrics = metrics

    @property
    def accepting_writes(self) -> bool:
        return self._journal.failure is None

    @property
    def commits(self) -> int:
        """Group commits made so far (for benchmarks and diagnostics)."""
        return self._journal.commits

    @property
    def system(self) -> ActorSystem:
        return self._system

    # --- accounts ----------------------------------------------------------------------------

    async def open_account(self, user_id: UserId, *, must_be_new: bool = False) -> Account:
        reply = await self._system.execute(OpenAccount(user_id, must_be_new))
        assert isinstance(reply, Account)
        return reply

    async def get_account(self, user_id: UserId) -> Account:
        reply = await self._system.execute(GetAccount(user_id))
        assert isinstance(reply, Account)
        return reply

    async def close_account(self, user_id: UserId) -> Account:
        reply = await self._system.execute(CloseAccount(user_id))
        assert isinstance(reply, Account)
        return reply

    async def set_auto_refill(self, user_id: UserId, settings: AutoRefillSettings) -> Account:
        reply = await self._system.execute(SetAutoRefill(user_id, settings))
        assert isinstance(reply, Account)
        return reply

    # --- credits -----------------------------------------------------------------------------

    async def add_credits(
        self,
        user_id: UserId,
        amount_cents: int,
        *,
        entry_type: EntryType = EntryType.BONUS,
        description: str = "",
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CreditResult:
        amount_cents = require_amount_cents("amount_cents", amount_cents)
        if entry_type is EntryType.USAGE:
            raise InvalidInput("usage is not a credit type", {"field": "type"})
        if not isinstance(description, str) or len(description) > DESCRIPTION_LENGTH_MAX:
            raise InvalidInput(
                f"reason must be a string of at most {DESCRIPTION_LENGTH_MAX} characters",
                {"field": "reason"},
            )
        key = parse_key("idempotency_key", idempotency_key) if idempotency_key else None
        command = AddCredits(
            user_id=user_id,
            amount_cents=amount_cents,
            entry_type=entry_type,
            key=key,
            fingerprint=credits_fingerprint(user_id, amount_cents, entry_type),
            description=description,
            metadata=validate_metadata(metadata or {}),
        )
        reply = await self._system.execute(command)
        assert isinstance(reply, CreditResult)
        return reply

    # --- usage -------------------------------------------------------------------------------

    def _decide_usage(self, request: UsageRequest) -> Pending:
        try:
            command = usage_command(request, self.pricing, self._wall_clock_ms())
        except BillingError as error:
            return Pending(None, error, None)
        return self._system.apply_now(command)

    async def report_usage(self, request: UsageRequest) -> UsageResult:
        reply = await self._decide_usage(request).settle()
        assert isinstance(reply, UsageResult)
        return reply

    async def report_usage_many(
        self, requests: Sequence[UsageRequest]
    ) -> list[UsageResult | BillingError]:
        """Each event applied on its own, in request order (so in order per account), and
        all of them made durable together by as few commits as the journal needs."""
        if len(requests) > USAGE_BATCH_EVENTS_MAX:
            raise InvalidInput(
                f"a batch holds at most {USAGE_BATCH_EVENTS_MAX} events", {"field": "events"}
            )
        decided = [self._decide_usage(request) for request in requests]
        results: list[UsageResult | BillingError] = []
        for pending in decided:
            try:
                reply = await pending.settle()
            except BillingError as error:
                results.append(error)
            else:
                assert isinstance(reply, UsageResult)
                results.append(reply)
        return results

    async def check_balance(self, user_id: UserId, required_cents: int) -> BalanceCheck:
        required_cents = require_int("required_cents", required_cents, 0, AMOUNT_CENTS_MAX)
        reply = await self._system.execute(CheckBalance(user_id, required_cents))
        assert isinstance(reply, BalanceCheck)
        return reply

    def quote(self, metric: Metric) -> Quote:
        return quote(self.pricing, metric)

    async def list_transactions(
        self,
        user_id: UserId,
        *,
        limit: int = 50,
        offset: int = 0,
        before: TransactionId | None = None,
    ) -> EntryPage:
        limit = require_int("limit", limit, 1, TRANSACTIONS_PAGE_MAX)
        offset = require_int("offset", offset, 0, 10**9)
        await self.get_account(user_id)
        return self._store.list_entries(user_id, limit, offset, before)

    # --- operations --------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """A consistent copy while debits go on (LMDB copies inside one read transaction)."""
        async with self._journal.exclusive:
            await trio.to_thread.run_sync(self._store.backup, destination)

    async def verify(self) -> VerifyReport:
        async with self._journal.exclusive:
            return await trio.to_thread.run_sync(verify_store, self._store)
