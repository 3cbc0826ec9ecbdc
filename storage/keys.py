"""Key layout of the LMDB databases (README "Architecture"). Big-endian so bytes sort as numbers."""

from __future__ import annotations

import uuid

TRANSACTION_ID_BYTES = 16
USER_ID_BYTES = 16
_SEPARATOR = b"\x00"


def transaction_key(transaction_id: int) -> bytes:
    return transaction_id.to_bytes(TRANSACTION_ID_BYTES, "big")


def transaction_id_from_key(key: bytes) -> int:
    return int.from_bytes(key[-TRANSACTION_ID_BYTES:], "big")


def user_key(user_id: uuid.UUID) -> bytes:
    return user_id.bytes


def user_transaction_key(user_id: uuid.UUID, transaction_id: int) -> bytes:
    return user_id.bytes + transaction_key(transaction_id)


def idempotency_key(scope: str, key: str) -> bytes:
    return scope.encode() + _SEPARATOR + key.encode()


def text_key(text: str) -> bytes:
    return text.encode()


def sequence_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


def webhook_letter_key(endpoint_id: str, sequence: int) -> bytes:
    return endpoint_id.encode() + _SEPARATOR + sequence_key(sequence)


def webhook_letter_range(endpoint_id: str) -> tuple[bytes, bytes]:
    """The keys of one endpoint's dead letters: [low, high)."""
    prefix = endpoint_id.encode()
    return prefix + _SEPARATOR, prefix + bytes([_SEPARATOR[0] + 1])


def due_key(due_ms: int, name: bytes) -> bytes:
    """A deadline in the due-time index: `due_ms ‖ name`, so a scan from the start meets the
    earliest first (`name` is the deadline's `idempotency_key(kind, key)`)."""
    return sequence_key(due_ms) + name


def aggregate_key(user_id: uuid.UUID, day: int, kind: str, group: str) -> bytes:
    return user_key(user_id) + day.to_bytes(4, "big") + kind.encode()[:1] + group.encode()


def aggregate_range(user_id: uuid.UUID, from_day: int, to_day: int) -> tuple[bytes, bytes]:
    """The keys of a user's aggregates from `from_day` to `to_day` included: [low, high)
    (days before the epoch hold none: empty when the whole range is before it)."""
    user = user_key(user_id)
    return (user + max(from_day, 0).to_bytes(4, "big"),
            user + max(to_day + 1, 0).to_bytes(4, "big"))


def aggregate_parts(key: bytes) -> tuple[int, str, str]:
    """(day, kind's first letter, group) of an aggregate key."""
    return int.from_bytes(key[16:20], "big"), key[20:21].decode(), key[21:].decode()
