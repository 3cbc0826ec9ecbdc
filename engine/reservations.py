"""Reservations: two-phase debits for streaming calls whose cost is known only at the end.

A reservation holds credits (`Account.held_cents`), then is committed with the actual usage (priced
like any usage event), released, or expires. Its id is an idempotency key for all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from engine.commands import SCOPE_USAGE, ReportUsage, UsageResult, digest
from engine.ids import UserId, transaction_id_str

SCOPE_RESERVATION = "reservation"
RESERVATION_TTL_S_DEFAULT = 300
RESERVATION_TTL_S_MAX = 3600


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


class Reserve(msgspec.Struct, frozen=True, gc=False):
    user_id: UserId
    reservation_id: str
    amount_cents: int
    ttl_s: int
    fingerprint: bytes
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)


class CommitReservation(msgspec.Struct, frozen=True, gc=False):
    """The actual usage of a reservation: a usage event, priced like any other."""

    reservation_id: str
    usage: ReportUsage

    @property
    def user_id(self) -> UserId:
        return self.usage.user_id

    @property
    def key(self) -> str:
        return self.usage.event_id

    @property
    def scope(self) -> str:
        return SCOPE_USAGE


class ReleaseReservation(msgspec.Struct, frozen=True, gc=False):
    user_id: UserId
    reservation_id: str


class ExpireReservation(msgspec.Struct, frozen=True, gc=False):
    """Sent by the expiry timer; a no-op for a reservation no longer held."""

    user_id: UserId
    reservation_id: str


ReservationCommand = Reserve | CommitReservation | ReleaseReservation | ExpireReservation


# --- replies --------------------------------------------------------------------------------


class ReservationHeld(msgspec.Struct, frozen=True, gc=False):
    reservation: Reservation
    balance_cents: int
    held_cents: int

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
