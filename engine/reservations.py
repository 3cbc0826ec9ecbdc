"""Reservations: two-phase debits for streaming calls whose cost is known only at the end.

A reservation holds credits (`Account.held_cents`), then is committed with the actual usage (priced
like any usage event), released, or expires. Its id is an idempotency key for all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec
from msgspec.structs import replace

from engine import caps
from engine.account import Account, live_account
from engine.caps import Controls
from engine.commands import (
    SCOPE_USAGE,
    CommandBase,
    Context,
    Reads,
    ReportUsage,
    Transition,
    UsageResult,
    digest,
)
from engine.deadlines import Deadline, DeadlineKind
from engine.errors import (
    AccountNotFound,
    DuplicateEvent,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    ReservationClosed,
    ReservationExpired,
    require,
)
from engine.ids import UserId, transaction_id_str
from engine.lots import Draw, hold, unhold
from engine.metering import charge_usage, check_cost
from engine.money import MICROS_PER_CREDIT
from engine.posting import repeat_or_conflict

SCOPE_RESERVATION = "reservation"
RESERVATION_TTL_S_DEFAULT = 300
RESERVATION_TTL_S_MAX = 3600
assert 1 <= RESERVATION_TTL_S_DEFAULT <= RESERVATION_TTL_S_MAX


class ReservationStatus(StrEnum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


class Reservation(msgspec.Struct, frozen=True, gc=False):
    """One hold and, once closed, what became of it."""

    reservation_id: str
    user_id: UserId
    amount_cents: int
    created_at_ms: int
    expires_at_ms: int
    fingerprint: bytes
    status: ReservationStatus = ReservationStatus.HELD
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    closed_at_ms: int | None = None
    released_cents: int = 0
    # Set by a commit: the usage it charged and the fingerprint of the commit request.
    commit: UsageResult | None = None
    commit_fingerprint: bytes | None = None
    # (lot id, credits) promised to this hold: kept past those lots' expiry until it ends,
    # and burnt first by its commit.
    lots: tuple[Draw, ...] = ()
    # The agent and service key whose spend caps the hold counts against while open.
    agent_id: str | None = None
    service: str | None = None

    @property
    def scope(self) -> str:
        return SCOPE_RESERVATION

    @property
    def key(self) -> str:
        return self.reservation_id

    @property
    def is_open(self) -> bool:
        return self.status is ReservationStatus.HELD

    def to_dict(self) -> dict[str, Any]:
        commit = self.commit
        return {
            "reservation_id": self.reservation_id,
            "user_id": str(self.user_id),
            "status": self.status.value,
            "held_cents": self.amount_cents if self.is_open else 0,
            "amount_cents": self.amount_cents,
            "released_cents": self.released_cents,
            "created_at_ms": self.created_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "closed_at_ms": self.closed_at_ms,
            "transaction_id": transaction_id_str(commit.transaction_id) if commit else None,
            "cost_cents": commit.cost_cents if commit else None,
            "cost_micros": commit.cost_micros if commit else None,
            "metadata": dict(self.metadata),
        }


class OpenHold(msgspec.Struct, frozen=True, gc=False):
    """What start-up needs to re-arm an expiry timer."""

    reservation_id: str
    user_id: UserId
    amount_cents: int
    expires_at_ms: int


# --- commands -------------------------------------------------------------------------------


class Reserve(CommandBase):
    user_id: UserId
    reservation_id: str
    amount_cents: int
    ttl_s: int
    fingerprint: bytes
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)
    agent_id: str | None = None
    service: str | None = None
    # Hold what can be paid (the balance and every cap) when that is less than asked.
    clamp: bool = False

    def reads(self) -> Reads:
        return Reads(reservation_id=self.reservation_id)


class CommitReservation(CommandBase):
    """The actual usage of a reservation: a usage event, priced like any other. Reads the
    reservation and the event id (another event may have used it)."""

    reservation_id: str
    usage: ReportUsage

    @property
    def user_id(self) -> UserId:
        return self.usage.user_id

    def reads(self) -> Reads:
        return Reads((SCOPE_USAGE, self.usage.event_id), self.reservation_id)


class ReleaseReservation(CommandBase):
    user_id: UserId
    reservation_id: str

    def reads(self) -> Reads:
        return Reads(reservation_id=self.reservation_id)


class ExpireReservation(CommandBase):
    """Sent by the expiry timer; a no-op for a reservation no longer held."""

    user_id: UserId
    reservation_id: str

    def reads(self) -> Reads:
        return Reads(reservation_id=self.reservation_id)


ReservationCommand = Reserve | CommitReservation | ReleaseReservation | ExpireReservation


# --- replies --------------------------------------------------------------------------------


class ReservationHeld(msgspec.Struct, frozen=True, gc=False):
    reservation: Reservation
    balance_cents: int
    held_cents: int
    # What was asked; more than the hold when a clamped hold held what could be paid.
    requested_cents: int = 0
    # Set by the facade for a hold sized for a model call: the output tokens it pays for.
    max_output_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation.reservation_id,
            "user_id": str(self.reservation.user_id),
            "status": self.reservation.status.value,
            "held_cents": self.reservation.amount_cents,
            "balance_cents": self.balance_cents,
            "available_cents": self.balance_cents - self.held_cents,
            "expires_at_ms": self.reservation.expires_at_ms,
        }


class ReservationCommitted(msgspec.Struct, frozen=True, gc=False):
    reservation_id: str
    usage: UsageResult
    released_cents: int
    above_hold: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.usage.to_dict(),
            "reservation_id": self.reservation_id,
            "released_cents": self.released_cents,
        }


class ReservationReleased(msgspec.Struct, frozen=True, gc=False):
    reservation_id: str
    user_id: UserId
    status: ReservationStatus
    released_cents: int
    balance_cents: int
    held_cents: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "user_id": str(self.user_id),
            "status": self.status.value,
            "released_cents": self.released_cents,
            "balance_cents": self.balance_cents,
            "available_cents": self.balance_cents - self.held_cents,
        }


def reserve_fingerprint(user_id: UserId, amount_cents: int) -> bytes:
    """A repeated reserve is "the same" when it names the same user and amount."""
    return digest((user_id.bytes, "reserve", amount_cents))


# --- transitions ----------------------------------------------------------------------------


def _named(command: CommitReservation | ReleaseReservation, context: Context) -> Reservation:
    reservation = context.reservation
    if reservation is None or reservation.user_id != command.user_id:
        raise NotFound(f"no reservation {command.reservation_id!r}",
                       {"reservation_id": command.reservation_id})
    return reservation


def reserve(account: Account | None, command: Reserve, context: Context) -> Transition:
    prior = context.reservation
    if prior is not None:
        repeat_or_conflict(command.reservation_id, command.fingerprint, prior.fingerprint,
                           prior.to_dict())
    live = live_account(account, command.user_id)
    if not 1 <= command.ttl_s <= RESERVATION_TTL_S_MAX:
        raise InvalidInput(f"ttl_seconds must be between 1 and {RESERVATION_TTL_S_MAX}",
                           {"field": "ttl_seconds"})
    amount = _holdable(live, command, context.now_ms) if command.clamp else command.amount_cents
    available = live.available_cents(context.now_ms)
    if available - amount < -live.overdraft_limit_cents:
        raise InsufficientCredits(
            balance_cents=live.balance_cents,
            available_cents=available,
            required_cents=amount,
        )
    controls = live.controls
    if controls is not None:
        caps.check(controls, live.held_cents, command.agent_id, command.service,
                   amount * MICROS_PER_CREDIT, now_ms=context.now_ms)
        controls = caps.hold_scopes(controls, command.agent_id, command.service, amount)
        controls, _ = caps.mark_reached(caps.roll(controls, context.now_ms),
                                        live.held_cents + amount, context.now_ms)
    lots, promised = hold(live.lots, amount, context.now_ms)
    reservation = Reservation(
        reservation_id=command.reservation_id,
        user_id=live.user_id,
        amount_cents=amount,
        created_at_ms=context.now_ms,
        expires_at_ms=context.now_ms + command.ttl_s * 1000,
        fingerprint=command.fingerprint,
        metadata=command.metadata,
        lots=promised,
        agent_id=command.agent_id,
        service=command.service,
    )
    updated = replace(live, held_cents=live.held_cents + amount, lots=lots,
                      updated_at_ms=context.now_ms, controls=controls)
    require(updated.available_cents(context.now_ms) >= -updated.overdraft_limit_cents,
            "hold passed overdraft")
    reply = ReservationHeld(reservation, updated.balance_cents, updated.held_cents,
                            command.amount_cents)
    expiry = _expiry(reservation, reservation.expires_at_ms)
    return Transition(updated, (reservation, expiry), reply, (reservation,))


def _holdable(live: Account, command: Reserve, now_ms: int) -> int:
    """A clamped hold: what was asked, or less when the balance or a hard cap allows less
    (at least 1 credit, so a hold that cannot be paid at all is still refused)."""
    room = live.available_cents(now_ms) + live.overdraft_limit_cents
    if live.controls is not None:
        capped = caps.headroom_micros(live.controls, live.held_cents, command.agent_id,
                                      command.service, now_ms)
        if capped is not None:
            room = min(room, capped // MICROS_PER_CREDIT)
    return max(1, min(command.amount_cents, room))


def _unhold_scopes(account: Account, reservation: Reservation) -> Controls | None:
    if account.controls is None:
        return None
    return caps.hold_scopes(account.controls, reservation.agent_id, reservation.service,
                            -reservation.amount_cents)


def _expiry(reservation: Reservation, due_ms: int | None) -> Deadline:
    return Deadline(DeadlineKind.RESERVATION_EXPIRY, reservation.reservation_id,
                    reservation.user_id, due_ms)


def commit(account: Account | None, command: CommitReservation, context: Context) -> Transition:
    reservation = _named(command, context)
    if reservation.status is ReservationStatus.COMMITTED:
        require(reservation.commit is not None, "a committed reservation has its commit")
        assert reservation.commit is not None
        original = ReservationCommitted(reservation.reservation_id, reservation.commit,
                                        reservation.released_cents, False)
        repeat_or_conflict(command.reservation_id, command.usage.fingerprint,
                           reservation.commit_fingerprint, original.to_dict())
    if reservation.status is ReservationStatus.RELEASED:
        raise ReservationClosed(f"reservation {command.reservation_id!r} was released",
                                reservation.to_dict())
    if reservation.status is ReservationStatus.EXPIRED or (
        context.now_ms >= reservation.expires_at_ms
    ):
        raise ReservationExpired(f"reservation {command.reservation_id!r} expired",
                                 reservation.to_dict())
    usage = command.usage
    if context.prior is not None:
        # The commit's event id was used by another usage event.
        raise IdempotencyConflict(usage.event_id)
    live = live_account(account, usage.user_id)
    check_cost(usage.cost_micros)
    # The service was delivered: the commit is charged even above the hold or the balance,
    # first from the lots the hold was promised from (even if they expired since).
    unheld = replace(live, lots=unhold(live.lots, reservation.lots),
                     controls=_unhold_scopes(live, reservation))
    transition = charge_usage(unheld, usage, context,
                              live.held_cents - reservation.amount_cents,
                              extra_metadata={"reservation_id": reservation.reservation_id},
                              first=reservation.lots)
    result = transition.reply
    assert isinstance(result, UsageResult)
    released = max(reservation.amount_cents - result.cost_cents, 0)
    closed = replace(
        reservation,
        status=ReservationStatus.COMMITTED,
        closed_at_ms=context.now_ms,
        released_cents=released,
        commit=result,
        commit_fingerprint=usage.fingerprint,
    )
    reply = ReservationCommitted(reservation.reservation_id, result, released,
                                 result.cost_cents > reservation.amount_cents)
    return Transition(
        transition.account,
        (*transition.records, _expiry(closed, None), closed),
        reply,
        (*transition.keyed, closed),
    )


def _close_hold(
    account: Account | None,
    reservation: Reservation,
    status: ReservationStatus,
    context: Context,
) -> Transition:
    if account is None:
        raise AccountNotFound(f"no account for user {reservation.user_id}")
    updated = replace(account, held_cents=account.held_cents - reservation.amount_cents,
                      lots=unhold(account.lots, reservation.lots), updated_at_ms=context.now_ms,
                      controls=_unhold_scopes(account, reservation))
    closed = replace(reservation, status=status, closed_at_ms=context.now_ms,
                     released_cents=reservation.amount_cents)
    reply = ReservationReleased(reservation.reservation_id, reservation.user_id, status,
                                reservation.amount_cents, updated.balance_cents,
                                updated.held_cents)
    return Transition(updated, (_expiry(closed, None), closed), reply, (closed,))


def release(account: Account | None, command: ReleaseReservation, context: Context
            ) -> Transition:
    reservation = _named(command, context)
    if reservation.status is ReservationStatus.RELEASED:
        raise DuplicateEvent(command.reservation_id, reservation.to_dict())
    if reservation.status is ReservationStatus.COMMITTED:
        raise ReservationClosed(f"reservation {command.reservation_id!r} was committed",
                                reservation.to_dict())
    if reservation.status is ReservationStatus.EXPIRED:
        raise ReservationExpired(f"reservation {command.reservation_id!r} expired",
                                 reservation.to_dict())
    return _close_hold(account, reservation, ReservationStatus.RELEASED, context)


def expire(account: Account | None, command: ExpireReservation, context: Context
           ) -> Transition:
    reservation = context.reservation
    if (
        reservation is None
        or not reservation.is_open
        or context.now_ms < reservation.expires_at_ms
    ):
        # Already closed, or the timer woke early: nothing to do.
        return Transition(account, (), None)
    return _close_hold(account, reservation, ReservationStatus.EXPIRED, context)


HANDLERS = {
    Reserve: reserve,
    CommitReservation: commit,
    ReleaseReservation: release,
    ExpireReservation: expire,
}
