"""Account actors: the single writer of each account's state.

An actor is the owner of one account's state, not a trio task: a command is decided and
handed to the journal synchronously, with no checkpoint in between, so trio's single thread
gives each account strictly ordered, exclusive updates without locks. A task per account
would cost about 3.4 KB more per active account (measured in bench/engine.py) for no gain,
since every transition is synchronous. The bounded mailbox is the number of commands an
account may have waiting for one commit; beyond it the caller gets `Overloaded`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from actors.journal import Batch, Journal
from engine.account import Account
from engine.commands import Context, PriorOutcome, Transition, UsageResult
from engine.errors import (
    BillingError,
    DuplicateEvent,
    InsufficientCredits,
    Overloaded,
    require,
)
from engine.ids import TransactionId, UserId, next_transaction_id
from engine.reservations import (
    SCOPE_RESERVATION,
    Reservation,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    ReservationStatus,
)
from engine.transitions import AnyCommand, apply
from storage.store import Store

log = logging.getLogger("zbilling.actors")
R = TypeVar("R")

# Commands one account may have waiting for their commit (its mailbox bound).
MAILBOX_CAPACITY = 1024
# An actor unused this long, with nothing uncommitted, is dropped from memory.
ACTOR_IDLE_S = 300.0
PASSIVATION_SWEEP_S = 10.0
# Hard bound on actors in memory; the least recently used idle ones go first.
ACTORS_MAX = 2_000_000
_ULID_RANDOM = random.Random()

WallClock = Callable[[], int]


class AccountActor:
    """`in_flight` counts this account's commands waiting for their commit (the mailbox)."""

    __slots__ = ("batch", "in_flight", "last_used_s", "state", "user_id")

    def __init__(self, user_id: UserId, state: Account | None, now_s: float) -> None:
        self.user_id = user_id
        self.state = state
        self.batch: Batch | None = None
        self.in_flight = 0
        self.last_used_s = now_s

    def uncommitted(self) -> Batch | None:
        batch = self.batch
        return batch if batch is not None and not batch.done else None


class Pending:
    """A command decided in memory; `settle` returns its reply once that is durable."""

    __slots__ = ("barrier", "error", "reply")

    def __init__(self, reply: Any, error: BillingError | None, barrier: Batch | None) -> None:
        self.reply = reply
        self.error = error
        self.barrier = barrier

    async def settle(self) -> Any:
        if self.barrier is not None:
            await self.barrier.wait()
        if self.error is not None:
            raise self.error
        return self.reply


@dataclass(slots=True)
class ActorCounters:
    """Plain integers bumped on the hot path and read by the metrics collector."""

    insufficient_credits: int = 0
    duplicate_events: int = 0
    overloaded: int = 0
    crashes: int = 0
    loads: int = 0
    passivations: int = 0
    held_cents: int = 0
    open_holds: int = 0
    reservations_opened: int = 0
    reservation_commits: int = 0
    reservation_commits_above_hold: int = 0
    reservation_releases: int = 0
    reservation_expiries: int = 0

    def count_reservation(self, reply: object) -> None:
        if isinstance(reply, ReservationHeld):
            self.reservations_opened += 1
            self.open_holds += 1
        elif isinstance(reply, ReservationCommitted):
            self.reservation_commits += 1
            self.reservation_commits_above_hold += reply.above_hold
            self.open_holds -= 1
        elif isinstance(reply, ReservationReleased):
            self.open_holds -= 1
            if reply.status is ReservationStatus.EXPIRED:
                self.reservation_expiries += 1
            else:
                self.reservation_releases += 1


class ActorSystem:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        wall_clock_ms: WallClock,
        *,
        idle_s: float = ACTOR_IDLE_S,
        actors_max: int = ACTORS_MAX,
        last_transaction_id: int = 0,
    ) -> None:
        self._store = store
        self._journal = journal
        self._wall_clock_ms = wall_clock_ms
        self._idle_s = idle_s
        self._actors_max = actors_max
        # Insertion order is recency order: an actor is moved to the end on every use. Keyed by
        # the user id's integer: UUID's own __hash__ is a Python-level call, three per debit.
        self._actors: dict[int, AccountActor] = {}
        self._last_transaction_id = last_transaction_id
        self.counters = ActorCounters()
        # The run's clock read directly: trio.current_time() is three Python calls per command.
        self._monotonic_s = trio.lowlevel.current_clock().current_time

    @property
    def active_actors(self) -> int:
        return len(self._actors)

    def is_loaded(self, user_id: UserId) -> bool:
        return user_id.int in self._actors

    # --- commands ----------------------------------------------------------------------------

    async def execute(self, command: AnyCommand) -> Any:
        return await self.apply_now(command).settle()

    async def call(self, command: AnyCommand, reply_type: type[R]) -> R:
        """`execute` for a command whose reply has a known type (checked: a transition that
        answers otherwise is a bug, and the caller would misread the reply)."""
        reply = await self.apply_now(command).settle()
        require(isinstance(reply, reply_type), "%s replied %s", type(command).__name__,
                type(reply).__name__)
        return reply  # type: ignore[no-any-return]

    def apply_now(self, command: AnyCommand) -> Pending:
        """Decide `command` against the account's current state and queue its records.

        Runs without a checkpoint, which is what makes the actor the account's only writer.
        """
        try:
            return self._decide(self._actor(command.user_id), command)
        except BillingError as error:
            self._count(error)
            return Pending(None, error, self._journal.pending_barrier())

    def apply_together(self, commands: list[AnyCommand]) -> list[Pending]:
        """Decide commands for distinct accounts all or none: if any is refused, none is
        queued. Queued with no checkpoint between them, they share the open batch, so they
        become durable in one log record (a crash keeps both or neither)."""
        require(len({command.user_id for command in commands}) == len(commands),
                "commands applied together name distinct accounts")
        try:
            self._journal.check_accepting(len(commands))
            decided = []
            for command in commands:
                actor = self._actor(command.user_id)
                if actor.in_flight >= MAILBOX_CAPACITY:
                    raise Overloaded(f"account {actor.user_id} has too many commands in flight")
                decided.append((actor, self._transition(actor, command)))
        except BillingError as error:
            self._count(error)
            return [Pending(None, error, self._journal.pending_barrier())] * len(commands)
        return [self._submit(actor, transition) for actor, transition in decided]

    def _decide(self, actor: AccountActor, command: AnyCommand) -> Pending:
        return self._submit(actor, self._transition(actor, command))

    def _transition(self, actor: AccountActor, command: AnyCommand) -> Transition:
        journal = self._journal
        key, reservation_id, other_keys = command.reads()
        prior: PriorOutcome | None = None
        if key is not None:
            prior = journal.inflight_outcome(*key) or self._store.get_outcome(*key)
        reservation = (self.find_reservation(reservation_id) if reservation_id is not None
                       else None)
        others = tuple(journal.inflight_outcome(*other) or self._store.get_outcome(*other)
                       for other in other_keys) if other_keys else ()
        now_ms = self._wall_clock_ms()
        self._last_transaction_id = next_transaction_id(
            self._last_transaction_id, now_ms, _ULID_RANDOM.getrandbits(80)
        )
        context = Context(now_ms, TransactionId(self._last_transaction_id), prior, reservation,
                          others)
        try:
            # The transition checks the key before the account: a retry of an applied event
            # gets its original result even if the account was closed since.
            transition = apply(actor.state, command, context)
        except BillingError:
            raise
        except Exception as error:
            # Supervision: the state is untouched (transitions are pure), so only this
            # command fails; the account and every other account carry on.
            self.counters.crashes += 1
            log.exception("command %s failed on account %s", type(command).__name__,
                          actor.user_id)
            raise BillingError("internal error while applying the command") from error
        return transition

    def _submit(self, actor: AccountActor, transition: Transition) -> Pending:
        journal = self._journal
        if transition.account is actor.state and not transition.records:
            return Pending(transition.reply, None, actor.uncommitted())
        if actor.in_flight >= MAILBOX_CAPACITY:
            raise Overloaded(f"account {actor.user_id} has too many commands in flight")
        batch = journal.submit(actor, transition.account, transition.records, transition.keyed)
        if actor.state is not None and transition.account is not None:
            self.counters.held_cents += transition.account.held_cents - actor.state.held_cents
        if not isinstance(transition.reply, UsageResult):
            self.counters.count_reservation(transition.reply)
        if actor.state is None:
            self._actors[actor.user_id.int] = actor  # a transient actor whose account now exists
        actor.state = transition.account
        actor.batch = batch
        return Pending(transition.reply, None, batch)

    def find_reservation(self, reservation_id: str) -> Reservation | None:
        """The latest version of a reservation, committed or not."""
        found = self._journal.inflight_outcome(SCOPE_RESERVATION, reservation_id)
        if found is not None:
            assert isinstance(found, Reservation)
            return found
        return self._store.get_reservation(reservation_id)

    def _actor(self, user_id: UserId) -> AccountActor:
        """The account's actor, loaded on first use. An unknown account gets a transient
        actor with no state, kept only if a command creates the account."""
        actors = self._actors
        key = user_id.int
        actor = actors.pop(key, None)
        now_s = self._monotonic_s()
        if actor is None:
            actor = AccountActor(user_id, self._store.get_account(user_id), now_s)
            self.counters.loads += 1
            if len(actors) >= self._actors_max:
                self._evict(len(actors) - self._actors_max + 1, ignore_age=True)
        else:
            actor.last_used_s = now_s
        if actor.state is not None:
            actors[key] = actor
        return actor

    def _count(self, error: BillingError) -> None:
        if isinstance(error, InsufficientCredits):
            self.counters.insufficient_credits += 1
        elif isinstance(error, DuplicateEvent):
            self.counters.duplicate_events += 1
        elif isinstance(error, Overloaded):
            self.counters.overloaded += 1

    # --- passivation -------------------------------------------------------------------------

    async def run_passivation(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(PASSIVATION_SWEEP_S)
            self._evict(len(self._actors), ignore_age=False)

    def _evict(self, count: int, *, ignore_age: bool) -> None:
        """Drop up to `count` least recently used actors that have nothing uncommitted."""
        oldest_kept = self._monotonic_s() - self._idle_s
        busy: list[AccountActor] = []
        evicted = 0
        while self._actors and evicted < count:
            key, actor = next(iter(self._actors.items()))
            if not ignore_age and actor.last_used_s > oldest_kept:
                break
            del self._actors[key]
            if actor.in_flight:
                busy.append(actor)
                continue
            evicted += 1
        for actor in busy:
            self._actors[actor.user_id.int] = actor
        self.counters.passivations += evicted

    def snapshot(self, user_id: UserId) -> Account | None:
        """The in-memory state, for tests and diagnostics (may be ahead of storage)."""
        actor = self._actors.get(user_id.int)
        return actor.state if actor is not None else None

