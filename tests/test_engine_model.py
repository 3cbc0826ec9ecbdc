"""Model-based test: random command sequences against the real engine (LMDB on disk, restarts
included) and a plain reference model; the ledger invariants hold after every step.

The model keeps credit lots its own plain way (a list per account, sorted by the burn order on
every use) so that burn order, expiry at the instant, holds across an expiry and debt are
checked against an independent reading of the rules."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.config import load_pricing
from actors.runtime import open_billing
from engine.account import AccountStatus
from engine.commands import UsageResult
from engine.errors import (
    AccountClosed,
    AccountNotFound,
    BillingError,
    DuplicateEvent,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    ReservationClosed,
    ReservationExpired,
)
from engine.expiry import ExpireLots
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import LotCategory, LotRequest, default_terms
from engine.metering import UsageRequest
from engine.money import MICROS_PER_CREDIT
from engine.payments import refunded_credits
from engine.reservations import ExpireReservation, ReservationStatus

USERS = [UserId(uuid.UUID(int=index + 1)) for index in range(3)]
EVENT_IDS = [f"evt-{index}" for index in range(12)]
RESERVATION_IDS = [f"res-{index}" for index in range(6)]
GRANT_KEYS = [None, "grant-a", "grant-b"]
PAYMENT_IDS = ["pi-1", "pi-2", "pi-3"]
PRICING = load_pricing()


class EngineThread:
    """A real engine in its own trio.run on a thread; calls cross over with from_thread."""

    def __init__(self, data_dir: Path, clock: Any) -> None:
        self._data_dir = data_dir
        self._clock = clock
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.billing: Any = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)

    async def _main(self) -> None:
        async with open_billing(self._data_dir, pricing=PRICING,
                                wall_clock_ms=self._clock) as billing:
            self.billing = billing
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        async def invoke() -> Any:
            return await function(*args, **kwargs)

        return trio.from_thread.run(invoke, trio_token=self._token)

    def stop(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=30)


@dataclass
class ModelLot:
    lot_id: int
    priority: int
    expires_at_ms: int | None
    paid: bool
    remaining: int
    held: int = 0

    def key(self) -> tuple[int, int, bool, int]:
        expires = self.expires_at_ms if self.expires_at_ms is not None else 1 << 62
        return (self.priority, expires, self.paid, self.lot_id)

    def live(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


@dataclass
class ModelAccount:
    balance_cents: int = 0
    unbilled: int = 0
    closed: bool = False
    seq: int = 0
    purchased: int = 0
    granted: int = 0
    used: int = 0
    lots: list[ModelLot] = field(default_factory=list)
    debt: int = 0
    # Expiry entries are not in `seq`: the engine's own timer may split one expiry in two
    # (before and after a hold ends) or not, by when it runs; their total is exact.
    expired: int = 0

    def ordered(self) -> list[ModelLot]:
        self.lots = sorted((lot for lot in self.lots if lot.remaining or lot.held),
                           key=ModelLot.key)
        return self.lots

    def credit(self, lot: ModelLot) -> None:
        paid_off = min(self.debt, lot.remaining)
        self.debt -= paid_off
        lot.remaining -= paid_off
        self.lots.append(lot)
        self.balance_cents += lot.remaining + paid_off
        self.seq += 1
        self.ordered()

    def debit(self, cents: int, now_ms: int, first: dict[int, int] | None = None) -> None:
        need = cents
        for lot in self.ordered():
            take = min(need, (first or {}).get(lot.lot_id, 0), lot.remaining - lot.held)
            lot.remaining -= max(take, 0)
            need -= max(take, 0)
        for lot in self.lots:
            if lot.live(now_ms):
                take = min(need, lot.remaining - lot.held)
                lot.remaining -= take
                need -= take
        self.debt += need
        self.balance_cents -= cents
        self.seq += 1
        self.ordered()

    def available(self, now_ms: int, held: int) -> int:
        out_of_effect = sum(lot.remaining - lot.held for lot in self.lots if not lot.live(now_ms))
        return self.balance_cents - held - out_of_effect

    def hold(self, cents: int, now_ms: int) -> dict[int, int]:
        promised: dict[int, int] = {}
        for lot in self.ordered():
            take = min(cents, lot.remaining - lot.held) if lot.live(now_ms) else 0
            if take > 0:
                lot.held += take
                promised[lot.lot_id] = take
                cents -= take
        return promised

    def unhold(self, promised: dict[int, int]) -> None:
        for lot in self.lots:
            lot.held -= promised.get(lot.lot_id, 0)
        self.ordered()

    def expire(self, now_ms: int) -> bool:
        """Expire the free part of every lot past its expiry; whether anything expired."""
        expired = 0
        for lot in self.lots:
            if not lot.live(now_ms) and lot.remaining > lot.held:
                expired += lot.remaining - lot.held
                lot.remaining = lot.held
        if expired:
            self.balance_cents -= expired
            self.expired += expired
            self.ordered()
        return bool(expired)


@dataclass
class ModelHold:
    user: UserId
    amount: int
    expires_at_ms: int
    status: str = "held"
    cost_micros: int | None = None
    promised: dict[int, int] = field(default_factory=dict)


@dataclass
class Model:
    accounts: dict[UserId, ModelAccount] = field(default_factory=dict)
    events: dict[str, tuple[UserId, int, int]] = field(default_factory=dict)
    grants: dict[str, tuple[UserId, int, EntryType, int | None, int]] = field(
        default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    payments: dict[str, tuple[UserId, int]] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)

    def held(self, user: UserId) -> int:
        return sum(h.amount for h in self.holds.values() if h.user == user and
                   h.status == "held")


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.data_dir = Path(self._tmp.name) / "data"
        self.now_ms = 1_700_000_000_000
        self.engine = EngineThread(self.data_dir, self.clock)
        self.model = Model()
        self.crashes = 0

    def clock(self) -> int:
        return self.now_ms

    def teardown(self) -> None:
        self.engine.stop()
        self._tmp.cleanup()

    @staticmethod
    def refused(account: ModelAccount | None, got: Any) -> bool:
        """The command met a missing or closed account: the engine must have said so."""
        if account is None:
            assert isinstance(got, AccountNotFound)
            return True
        if account.closed:
            assert isinstance(got, AccountClosed)
            return True
        return False

    def outcome(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.engine.call(function, *args, **kwargs)
        except BillingError as error:
            return error

    @rule(user=st.sampled_from(USERS))
    def open_account(self, user: UserId) -> None:
        account = self.outcome(self.engine.billing.open_account, user)
        self.model.accounts.setdefault(user, ModelAccount())
        assert account.balance_cents == self.model.accounts[user].balance_cents

    @rule(
        user=st.sampled_from(USERS),
        amount=st.integers(1, 2000),
        kind=st.sampled_from([EntryType.PURCHASE, EntryType.BONUS, EntryType.REFUND,
                              EntryType.SUBSCRIPTION_GRANT, EntryType.AUTO_REFILL,
                              EntryType.ADJUSTMENT]),
        key=st.sampled_from(GRANT_KEYS),
        expires_in_s=st.sampled_from([None, None, 45, 120, 5000]),
        priority=st.sampled_from([50, 50, 10, 90]),
    )
    def add_credits(self, user: UserId, amount: int, kind: EntryType,  # noqa: PLR0917
                    key: str | None, expires_in_s: int | None, priority: int) -> None:
        expires_at_ms = self.now_ms + expires_in_s * 1000 if expires_in_s else None
        terms = (None if expires_at_ms is None and priority == 50 else LotRequest(
            priority=priority, expires_at_ms=expires_at_ms))
        got = self.outcome(
            self.engine.billing.add_credits, user, amount, entry_type=kind, idempotency_key=key,
            lot=terms,
        )
        request = (user, amount, kind, expires_at_ms, priority)
        if key is not None and key in self.model.grants:
            seen = self.model.grants[key]
            # A grant without lot terms keeps its pre-lot fingerprint; terms count otherwise.
            same = seen == request or (seen[:3] == request[:3] and terms is None
                                       and seen[3:] == (None, 50))
            assert isinstance(got, DuplicateEvent if same else IdempotencyConflict)
            return
        account = self.model.accounts.get(user)
        if self.refused(account, got):
            return
        account.credit(ModelLot(got.transaction_id, priority, expires_at_ms,
                                default_terms(kind).category is LotCategory.PAID, amount))
        if kind in (EntryType.PURCHASE, EntryType.AUTO_REFILL):
            account.purchased += amount
        elif kind is EntryType.SUBSCRIPTION_GRANT:
            account.granted += amount
        assert got.balance_cents == account.balance_cents
        if key is not None:
            self.model.grants[key] = request

    @rule(
        user=st.sampled_from(USERS),
        amount=st.integers(1, 600),
        promotional=st.booleans(),
        expires_in_s=st.sampled_from([45, 120]),
        priority=st.sampled_from([10, 50, 90]),
    )
    def expiring_lot(self, user: UserId, amount: int, promotional: bool,
                     expires_in_s: int, priority: int) -> None:
        """A lot that expires soon on an open account: the time steps reach its expiry."""
        self.open_account(user)
        kind = EntryType.BONUS if promotional else EntryType.PURCHASE
        self.add_credits(user, amount, kind, None, expires_in_s, priority)

    @rule(
        user=st.sampled_from(USERS),
        event_id=st.sampled_from(EVENT_IDS),
        cost_micros=st.one_of(st.integers(0, 3 * MICROS_PER_CREDIT),
                              st.sampled_from([1, 450_000, 999_999, 1_000_000])),
    )
    def report_usage(self, user: UserId, event_id: str, cost_micros: int) -> None:
        got = self.outcome(
            self.engine.billing.report_usage,
            UsageRequest(event_id=event_id, user_id=user, cost_micros=cost_micros),
        )
        seen = self.model.events.get(event_id)
        if seen is not None:
            if seen[:2] == (user, cost_micros):
                assert isinstance(got, DuplicateEvent)
                assert got.original["balance_cents"] == seen[2]
            else:
                assert isinstance(got, IdempotencyConflict)
            return
        account = self.model.accounts.get(user)
        if self.refused(account, got):
            return
        available = account.available(self.now_ms, self.model.held(user))
        if available * MICROS_PER_CREDIT - account.unbilled < cost_micros:
            assert isinstance(got, InsufficientCredits)
            return
        debit, account.unbilled = divmod(account.unbilled + cost_micros, MICROS_PER_CREDIT)
        if debit:
            account.debit(debit, self.now_ms)
        else:
            account.seq += 1
        account.used += debit
        assert isinstance(got, UsageResult)
        assert (got.cost_cents, got.balance_cents) == (debit, account.balance_cents)
        self.model.events[event_id] = (user, cost_micros, account.balance_cents)

    @precondition(lambda self: self.model.accounts)
    @rule(user=st.sampled_from(USERS))
    def close_account(self, user: UserId) -> None:
        got = self.outcome(self.engine.billing.close_account, user)
        account = self.model.accounts.get(user)
        if account is None:
            assert isinstance(got, AccountNotFound)
        elif account.closed:
            assert isinstance(got, AccountClosed)
        else:
            account.closed = True
            assert got.status is AccountStatus.CLOSED

    @rule(
        user=st.sampled_from(USERS),
        reservation_id=st.sampled_from(RESERVATION_IDS),
        amount=st.integers(1, 800),
        ttl_s=st.sampled_from([60, 3600]),
    )
    def reserve(self, user: UserId, reservation_id: str, amount: int, ttl_s: int) -> None:
        got = self.outcome(self.engine.billing.reserve, user, reservation_id,
                           amount_cents=amount, ttl_s=ttl_s)
        seen = self.model.holds.get(reservation_id)
        if seen is not None:
            assert isinstance(got, DuplicateEvent if (seen.user, seen.amount) == (user, amount)
                              else IdempotencyConflict)
            return
        account = self.model.accounts.get(user)
        if self.refused(account, got):
            return
        if account.available(self.now_ms, self.model.held(user)) - amount < 0:
            assert isinstance(got, InsufficientCredits)
            return
        assert got.reservation.amount_cents == amount
        promised = account.hold(amount, self.now_ms)
        assert dict(got.reservation.lots) == promised
        self.model.holds[reservation_id] = ModelHold(user, amount, self.now_ms + ttl_s * 1000,
                                                     promised=promised)

    @rule(
        reservation_id=st.sampled_from(RESERVATION_IDS),
        cost_micros=st.integers(0, 900 * MICROS_PER_CREDIT),
    )
    def commit_reservation(self, reservation_id: str, cost_micros: int) -> None:
        got = self.outcome(self.engine.billing.commit_reservation, reservation_id,
                           cost_micros=cost_micros)
        hold = self.model.holds.get(reservation_id)
        if hold is None:
            assert isinstance(got, NotFound)
            return
        if hold.status == "committed":
            expected = DuplicateEvent if hold.cost_micros == cost_micros else (
                IdempotencyConflict)
            assert isinstance(got, expected)
            return
        if hold.status == "released":
            assert isinstance(got, ReservationClosed)
            return
        if hold.status == "expired" or self.now_ms >= hold.expires_at_ms:
            assert isinstance(got, ReservationExpired)
            return
        if reservation_id in self.model.events:
            assert isinstance(got, IdempotencyConflict)
            return
        account = self.model.accounts[hold.user]
        if account.closed:
            assert isinstance(got, AccountClosed)
            return
        debit, account.unbilled = divmod(account.unbilled + cost_micros, MICROS_PER_CREDIT)
        account.unhold(hold.promised)
        if debit:
            account.debit(debit, self.now_ms, hold.promised)
        else:
            account.seq += 1
        account.used += debit
        hold.status, hold.cost_micros = "committed", cost_micros
        self.model.events[reservation_id] = (hold.user, cost_micros, account.balance_cents)
        assert got.usage.balance_cents == account.balance_cents
        assert got.released_cents == max(hold.amount - debit, 0)
        self.expire_lots(hold.user)  # what the hold kept past an expiry goes now

    @rule(reservation_id=st.sampled_from(RESERVATION_IDS))
    def release_reservation(self, reservation_id: str) -> None:
        got = self.outcome(self.engine.billing.release_reservation, reservation_id)
        hold = self.model.holds.get(reservation_id)
        if hold is None:
            assert isinstance(got, NotFound)
        elif hold.status == "released":
            assert isinstance(got, DuplicateEvent)
        elif hold.status == "committed":
            assert isinstance(got, ReservationClosed)
        elif hold.status == "expired":
            assert isinstance(got, ReservationExpired)
        else:
            hold.status = "released"
            assert got.released_cents == hold.amount
            self.model.accounts[hold.user].unhold(hold.promised)
            self.expire_lots(hold.user)

    @rule(user=st.sampled_from(USERS), payment_id=st.sampled_from(PAYMENT_IDS),
          amount=st.integers(1, 2000))
    def stripe_payment(self, user: UserId, payment_id: str, amount: int) -> None:
        """A paid PaymentIntent announced (again and again, as webhooks do)."""
        got = self.outcome(self.engine.billing.payments.credit_payment, user, payment_id,
                           amount, entry_type=EntryType.PURCHASE, description="",
                           metadata={})
        seen = self.model.payments.get(payment_id)
        if seen is not None:
            assert isinstance(got, DuplicateEvent if seen == (user, amount)
                              else IdempotencyConflict)
            return
        account = self.model.accounts.get(user)
        if self.refused(account, got):
            return
        account.credit(ModelLot(got.transaction_id, 50, None, True, amount))
        account.purchased += amount
        self.model.payments[payment_id] = (user, amount)
        assert got.balance_cents == account.balance_cents

    @precondition(lambda self: self.model.payments)
    @rule(payment_id=st.sampled_from(PAYMENT_IDS), quarters=st.integers(1, 4))
    def stripe_refund(self, payment_id: str, quarters: int) -> None:
        """charge.refunded with `quarters`/4 of the payment refunded so far (in any order)."""
        if payment_id not in self.model.payments:
            return
        user, credited = self.model.payments[payment_id]
        total = refunded_credits(credited, credited, credited * quarters // 4)
        got = self.outcome(self.engine.billing.payments.take_back, user, f"ch-{payment_id}",
                           total, description="", metadata={})
        taken = self.model.refunded.get(payment_id, 0)
        account = self.model.accounts[user]
        if total <= 0:
            assert isinstance(got, InvalidInput)
        elif total <= taken:
            assert isinstance(got, DuplicateEvent)
        elif account.closed:
            assert isinstance(got, AccountClosed)
        else:
            account.debit(total - taken, self.now_ms)
            self.model.refunded[payment_id] = total
            assert got.balance_cents == account.balance_cents

    @rule(seconds=st.sampled_from([30, 90, 4000]))
    def time_passes(self, seconds: int) -> None:
        """Advance the clock and run what the timers would run for every due hold and lot.
        The engine's own scheduler may run them first: either way each happens once."""
        self.now_ms += seconds * 1000
        for user in self.model.accounts:
            self.expire_lots(user)
        for reservation_id, hold in self.model.holds.items():
            if hold.status == "held" and self.now_ms >= hold.expires_at_ms:
                reply = self.engine.call(
                    self.engine.billing.system.execute,
                    ExpireReservation(hold.user, reservation_id),
                )
                assert reply is None or reply.status is ReservationStatus.EXPIRED
                hold.status = "expired"
                self.model.accounts[hold.user].unhold(hold.promised)
                self.expire_lots(hold.user)

    def expire_lots(self, user: UserId) -> None:
        """The lot-expiry timer's command, now; the model expires what is due."""
        account = self.model.accounts[user]
        if account.closed:
            return
        self.engine.call(self.engine.billing.system.execute, ExpireLots(user))
        account.expire(self.now_ms)

    @rule()
    def restart(self) -> None:
        self.engine.stop()
        self.engine = EngineThread(self.data_dir, self.clock)

    @rule(torn=st.booleans())
    def crash(self, torn: bool) -> None:
        """A crash at this step: the disk as the last acknowledged commit left it (some of it
        checkpointed, the rest only in the log), maybe with a torn append after it. The
        engine starts from that image and replays the log."""
        self.crashes += 1
        image = Path(self._tmp.name) / f"crash-{self.crashes}"

        async def copy_disk() -> None:
            # No checkpoint writes LMDB while the files are copied (they take this lock).
            async with self.engine.billing._journal.exclusive:
                shutil.copytree(self.data_dir, image)

        self.engine.call(copy_disk)
        if torn:
            segments = sorted((image / "wal").glob("*.wal"))
            if segments:
                with segments[-1].open("ab") as segment:
                    segment.write(b"ZBWL\x00\x00\x00\x00\x00\x00\x00\x09" + bytes(7))
        self.engine.stop()
        self.data_dir = image
        self.engine = EngineThread(self.data_dir, self.clock)

    async def expiry_entries(self, user: UserId) -> list[Any]:
        store = self.engine.billing._store
        return [entry for entry in store.iter_user_entries(user)
                if entry.entry_type is EntryType.EXPIRY]

    @invariant()
    def engine_matches_model_and_invariants_hold(self) -> None:
        for user, expected in self.model.accounts.items():
            account = self.engine.call(self.engine.billing.get_account, user)
            expiries = self.engine.call(self.expiry_entries, user)
            assert (account.balance_cents, account.unbilled_micros, account.seq) == (
                expected.balance_cents, expected.unbilled, expected.seq + len(expiries),
            )
            assert -sum(entry.amount for entry in expiries) == expected.expired
            assert (account.lifetime_purchased_cents, account.lifetime_granted_cents,
                    account.lifetime_used_cents) == (expected.purchased, expected.granted,
                                               expected.used)
            assert (account.status is AccountStatus.CLOSED) == expected.closed
            assert account.held_cents == self.model.held(user)
            assert [(lot.lot_id, lot.remaining_cents, lot.held_cents) for lot in account.lots] == [
                (lot.lot_id, lot.remaining, lot.held) for lot in expected.ordered()]
            assert account.debt_cents == expected.debt
        report = self.engine.call(self.engine.billing.verify)
        assert report.ok, report.violations
        assert report.accounts == len(self.model.accounts)


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerModel = LedgerMachine.TestCase
