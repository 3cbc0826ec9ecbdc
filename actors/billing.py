"""`Billing`: the facade the API and the CLI call. Each use case reads top to bottom:
validate, build the command, let the account's actor decide, wait until it is durable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from msgspec.structs import replace

from actors.balance_feed import BalanceFeed
from actors.controls import SpendControls
from actors.deadlines import Deadlines
from actors.journal import OPERATOR, Journal
from actors.lots import CreditLots, checked_reason
from actors.metrics import EngineMetrics, Exporter
from actors.payments import Payments
from actors.reports import UsageReports
from actors.subscriptions import Subscriptions
from actors.system import ActorSystem, Pending, WallClock
from actors.webhooks import Webhooks
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
from engine.controls import max_output_tokens
from engine.errors import BillingError, InvalidInput, NotFound
from engine.export import ParkedEvent, RequeueParked
from engine.grants import (
    DailyGrant,
    GrantOutcome,
    ReferralGrant,
    ReferralOutcome,
    ReferralSide,
    SignupGrant,
    utc_day,
)
from engine.ids import AgentId, TransactionId, UserId, parse_key, validate_email
from engine.ledger import EntryType
from engine.lots import LotDefaults, LotRequest, LotTerms
from engine.metadata import validate_metadata
from engine.metering import UsageRequest, usage_command
from engine.money import (
    AMOUNT_CENTS_MAX,
    MICROS_PER_CREDIT,
    micros_to_cents_ceil,
    require_amount_cents,
    require_int,
)
from engine.plans import Plans
from engine.pricing import PricingConfig, Quote, price_micros, quote
from engine.reservations import (
    RESERVATION_TTL_S_DEFAULT,
    RESERVATION_TTL_S_MAX,
    SCOPE_RESERVATION,
    CommitReservation,
    ReleaseReservation,
    Reservation,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    Reserve,
    reserve_fingerprint,
)
from engine.usage import LlmTokens, Metric
from storage.store import EntryPage, Store
from storage.verify import VerifyReport, verify_store

TRANSACTIONS_PAGE_MAX = 100
USAGE_BATCH_EVENTS_MAX = 1000


def _grant_amount(amount_cents: int) -> int:
    """A configured grant: 0 switches it off, else an amount within the ledger's bounds."""
    return amount_cents if amount_cents == 0 else require_amount_cents("amount_cents",
                                                                       amount_cents)


class Billing:
    def __init__(
        self,
        *,
        store: Store,
        journal: Journal,
        system: ActorSystem,
        pricing: PricingConfig,
        plans: Plans,
        wall_clock_ms: WallClock,
        metrics: EngineMetrics,
        deadlines: Deadlines,
        balance_feed: BalanceFeed,
        exporter: Exporter | None = None,
        lot_defaults: LotDefaults | None = None,
    ) -> None:
        self._exporter = exporter
        # Committed balances pushed to subscribers (GET /ws/balance), a journal listener.
        self.balance_feed = balance_feed
        self._store = store
        self._journal = journal
        self._system = system
        self.pricing = pricing
        self.plans = plans
        self._wall_clock_ms = wall_clock_ms
        self.metrics = metrics
        self.lot_defaults = lot_defaults if lot_defaults is not None else LotDefaults()
        self.payments = Payments(store, journal, system, deadlines, wall_clock_ms,
                                 lot_defaults=self.lot_defaults)
        self.subscriptions = Subscriptions(store, system, wall_clock_ms)
        self.lots = CreditLots(store, journal, system, wall_clock_ms)
        self.controls = SpendControls(system, wall_clock_ms)
        self.webhooks = Webhooks(store, journal, wall_clock_ms)
        self.reports = UsageReports(store, journal, wall_clock_ms)

    @property
    def accepting_writes(self) -> bool:
        return self._journal.failure is None

    @property
    def commits(self) -> int:
        """Group commits made so far (for benchmarks and diagnostics)."""
        return self._journal.commits

    @property
    def checkpoints(self) -> int:
        """Checkpoints of the log into the indexes made so far."""
        return self._journal.checkpoints

    @property
    def checkpoint_lag_s(self) -> float:
        """Age of the oldest write waiting for a checkpoint (for benchmarks and diagnostics)."""
        return self._journal.checkpoint_lag_s

    @property
    def journal_cpu_s(self) -> tuple[float, float]:
        """CPU seconds the journal's worker threads spent (committing, checkpointing)."""
        return self._journal.commit_cpu_s, self._journal.checkpoint_cpu_s

    def wall_clock_ms(self) -> int:
        return self._wall_clock_ms()

    @property
    def system(self) -> ActorSystem:
        return self._system

    # --- accounts ----------------------------------------------------------------------------

    async def open_account(self, user_id: UserId, *, must_be_new: bool = False,
                           email: str | None = None) -> Account:
        if email is not None:
            email = validate_email(email)
        reply = await self._system.call(OpenAccount(user_id, must_be_new, email), Account)
        return reply

    async def get_account(self, user_id: UserId) -> Account:
        reply = await self._system.call(GetAccount(user_id), Account)
        return reply

    async def close_account(self, user_id: UserId) -> Account:
        reply = await self._system.call(CloseAccount(user_id), Account)
        return reply

    async def set_auto_refill(self, user_id: UserId, settings: AutoRefillSettings) -> Account:
        reply = await self._system.call(SetAutoRefill(user_id, settings), Account)
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
        lot: LotRequest | None = None,
    ) -> CreditResult:
        """Credits of a credit type: a lot with what `lot` says over the type's defaults
        (the configuration's, else engine/lots.py `LOT_DEFAULTS`)."""
        amount_cents = require_amount_cents("amount_cents", amount_cents)
        if entry_type is EntryType.USAGE:
            raise InvalidInput("usage is not a credit type", {"field": "type"})
        description = checked_reason(description)
        key = parse_key("idempotency_key", idempotency_key) if idempotency_key else None
        command = AddCredits(
            user_id=user_id,
            amount_cents=amount_cents,
            entry_type=entry_type,
            key=key,
            fingerprint=credits_fingerprint(user_id, amount_cents, entry_type, lot),
            description=description,
            metadata=validate_metadata(metadata or {}),
            lot=self.lot_defaults.terms(entry_type, self._wall_clock_ms(), lot),
        )
        reply = await self._system.call(command, CreditResult)
        return reply

    # --- promotional grants (engine/grants.py) ----------------------------------------------

    def _grant_lot(self, source: EntryType) -> LotTerms:
        """The lot a promotional grant opens: `[lot_defaults.<type>]`, else promotional and
        never expiring."""
        return self.lot_defaults.terms(source, self._wall_clock_ms())

    async def signup_grant(self, user_id: UserId, amount_cents: int) -> GrantOutcome:
        """`amount_cents` once per account (0: switched off); opens the account if needed."""
        command = SignupGrant(user_id, _grant_amount(amount_cents),
                              self._grant_lot(EntryType.SIGNUP_GRANT))
        return await self._system.call(command, GrantOutcome)

    async def daily_grant(self, user_id: UserId) -> GrantOutcome:
        """The plan's `daily_grant_credits` once per UTC day, after the signup grant."""
        command = DailyGrant(user_id, utc_day(self._wall_clock_ms()),
                             self.plans.daily_grant_credits(),
                             self._grant_lot(EntryType.DAILY_GRANT))
        return await self._system.call(command, GrantOutcome)

    async def referral_grant(self, inviter_id: UserId, invitee_id: UserId, amount_cents: int
                             ) -> ReferralOutcome:
        """`amount_cents` to each side, once per invitee: both sides or neither, in one
        commit (`ActorSystem.apply_together`)."""
        if inviter_id == invitee_id:
            raise InvalidInput("a user cannot refer themselves",
                               {"field": "invitee_user_id"})
        amount_cents = _grant_amount(amount_cents)
        lot = self._grant_lot(EntryType.REFERRAL_GRANT)
        invitee, inviter = self._system.apply_together([
            ReferralGrant(invitee_id, invitee_id, ReferralSide.INVITEE, amount_cents, lot),
            ReferralGrant(inviter_id, invitee_id, ReferralSide.INVITER, amount_cents, lot),
        ])
        invitee_outcome = await invitee.settle()
        inviter_outcome = await inviter.settle()
        assert isinstance(invitee_outcome, GrantOutcome)
        assert isinstance(inviter_outcome, GrantOutcome)
        return ReferralOutcome(invitee_outcome, inviter_outcome)

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

    async def check_balance(self, user_id: UserId, required_cents: int = 0, *,
                            agent_id: AgentId | None = None, service: str | None = None,
                            estimate: LlmTokens | None = None) -> BalanceCheck:
        """Would `required_cents` be spendable (balance and hard caps)? With an `estimate`
        (provider, model, input tokens), also the output tokens the caller can afford."""
        required_cents = require_int("required_cents", required_cents, 0, AMOUNT_CENTS_MAX)
        reply = await self._system.call(
            CheckBalance(user_id, required_cents, agent_id, service), BalanceCheck)
        if estimate is None:
            return reply
        return replace(reply, max_output_tokens=max_output_tokens(
            self.pricing, estimate, reply.spendable_micros))

    # --- reservations ------------------------------------------------------------------------

    async def reserve(
        self,
        user_id: UserId,
        reservation_id: str,
        *,
        amount_cents: int | None = None,
        metric: Metric | None = None,
        ttl_s: int = RESERVATION_TTL_S_DEFAULT,
        metadata: Mapping[str, Any] | None = None,
        agent_id: AgentId | None = None,
        service: str | None = None,
        clamp: bool = False,
        estimate: LlmTokens | None = None,
    ) -> ReservationHeld:
        """Hold `amount_cents`, or the price of an estimated `metric` rounded up to credits;
        `clamp`: hold what the balance and the caps allow when that is less. With an
        `estimate` of the prompt, the reply says how many output tokens the hold pays for."""
        reservation_id = parse_key("reservation_id", reservation_id)
        if (amount_cents is None) == (metric is None):
            raise InvalidInput("send amount_cents or an estimated metric, not both",
                               {"field": "amount_cents"})
        amount = (
            require_amount_cents("amount_cents", amount_cents)
            if amount_cents is not None
            else max(1, micros_to_cents_ceil(price_micros(self.pricing, metric)))  # type: ignore[arg-type]
        )
        ttl_s = require_int("ttl_seconds", ttl_s, 1, RESERVATION_TTL_S_MAX)
        command = Reserve(
            user_id=user_id,
            reservation_id=reservation_id,
            amount_cents=amount,
            ttl_s=ttl_s,
            fingerprint=reserve_fingerprint(user_id, amount),
            metadata=validate_metadata(metadata or {}),
            agent_id=agent_id,
            service=service,
            clamp=clamp,
        )
        held = await self._system.call(command, ReservationHeld)
        if estimate is None:
            return held
        return replace(held, max_output_tokens=max_output_tokens(
            self.pricing, estimate, held.reservation.amount_cents * MICROS_PER_CREDIT))

    def _reservation_owner(self, reservation_id: str) -> UserId:
        reservation = self._system.find_reservation(parse_key("reservation_id", reservation_id))
        if reservation is None:
            raise NotFound(f"no reservation {reservation_id!r}",
                           {"reservation_id": reservation_id})
        return reservation.user_id

    async def commit_reservation(
        self,
        reservation_id: str,
        *,
        event_id: str | None = None,
        metric: Metric | None = None,
        cost_cents: int | None = None,
        cost_micros: int | None = None,
        agent_id: AgentId | None = None,
        metadata: Mapping[str, Any] | None = None,
        service: str | None = None,
    ) -> ReservationCommitted:
        """Charge the actual usage (priced like /v1/usage) and release the rest of the hold."""
        user_id = self._reservation_owner(reservation_id)
        usage = usage_command(
            UsageRequest(
                event_id=parse_key("event_id", event_id or reservation_id),
                user_id=user_id,
                metric=metric,
                cost_cents=cost_cents,
                cost_micros=cost_micros,
                agent_id=agent_id,
                metadata=metadata or {},
                service=service,
            ),
            self.pricing,
            self._wall_clock_ms(),
        )
        return await self._system.call(CommitReservation(reservation_id, usage),
                                       ReservationCommitted)

    async def release_reservation(self, reservation_id: str) -> ReservationReleased:
        user_id = self._reservation_owner(reservation_id)
        return await self._system.call(ReleaseReservation(user_id, reservation_id),
                                       ReservationReleased)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """The reservation as durably stored (waits for a commit in flight)."""
        reservation_id = parse_key("reservation_id", reservation_id)
        if self._journal.inflight_outcome(SCOPE_RESERVATION, reservation_id) is not None:
            barrier = self._journal.pending_barrier()
            if barrier is not None:
                await barrier.wait()
        reservation = self._store.get_reservation(reservation_id)
        if reservation is None:
            raise NotFound(f"no reservation {reservation_id!r}",
                           {"reservation_id": reservation_id})
        return reservation

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

    # --- Lago export --------------------------------------------------------------------------

    def export_backlog(self) -> int:
        """Lago events committed but not yet exported (or parked)."""
        return self._store.outbox_depth()

    def export_lag_s(self) -> float:
        """Age of the oldest Lago event not yet exported (0 when none waits)."""
        return self._exporter.lag_s(self._wall_clock_ms()) if self._exporter else 0.0

    def dead_letters(self) -> list[ParkedEvent]:
        return self._store.dead_letters()

    async def requeue_dead_letters(self) -> int:
        """Send parked events again (after the cause in Lago was fixed); returns how many."""
        sequences = tuple(parked.sequence for parked in self._store.dead_letters())
        if sequences:
            await self._journal.submit(OPERATOR, None, [RequeueParked(sequences)]).wait()
        return len(sequences)

    # --- operations --------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """A consistent copy while debits go on (LMDB copies inside one read transaction)."""
        async with self._journal.exclusive:
            await trio.to_thread.run_sync(self._store.backup, destination)

    async def verify(self) -> VerifyReport:
        async with self._journal.exclusive:
            return await trio.to_thread.run_sync(verify_store, self._store)
