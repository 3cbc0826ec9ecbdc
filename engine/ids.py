"""Identifiers: users are UUIDs, ledger entries are time-ordered ULIDs, agents are opaque names."""

from __future__ import annotations

import re
import uuid
from typing import NewType

from ulid import ULID

from engine.errors import InvalidInput

UserId = NewType("UserId", uuid.UUID)
# A ULID held as its 128-bit integer: 48 bits of milliseconds, then 80 bits that only grow.
TransactionId = NewType("TransactionId", int)
AgentId = NewType("AgentId", str)

ULID_RANDOM_BITS = 80
ULID_MAX = (1 << 128) - 1
AGENT_ID_LENGTH_MAX = 128
KEY_LENGTH_MAX = 256
_AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/-]+")


EMAIL_LENGTH_MAX = 254  # RFC 5321's path limit
# One @, no spaces or control characters, a dot in the domain: what a mailbox looks like
# (deliverability is the mail system's to decide).
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$"


def validate_email(text: object) -> str:
    if not isinstance(text, str) or len(text) > EMAIL_LENGTH_MAX or \
            re.fullmatch(EMAIL_PATTERN, text) is None:
        raise InvalidInput(f"email must be an address of at most {EMAIL_LENGTH_MAX} "
                           "characters", {"field": "email"})
    return text


def parse_user_id(text: object) -> UserId:
    if isinstance(text, uuid.UUID):
        return UserId(text)
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidInput("user_id must be a UUID string", {"field": "user_id"})
    try:
        return UserId(uuid.UUID(text))
    except ValueError:
        raise InvalidInput("user_id must be a UUID string", {"field": "user_id"}) from None


def parse_agent_id(text: object) -> AgentId:
    if (
        not isinstance(text, str)
        or not 0 < len(text) <= AGENT_ID_LENGTH_MAX
        or not _AGENT_ID_PATTERN.fullmatch(text)
    ):
        raise InvalidInput(
            f"agent_id must be 1..{AGENT_ID_LENGTH_MAX} characters of [A-Za-z0-9._:@/-]",
            {"field": "agent_id"},
        )
    return AgentId(text)


def parse_key(name: str, text: object) -> str:
    """An idempotency key (event id, reservation id, Idempotency-Key): printable, bounded."""
    if (
        not isinstance(text, str)
        or not 0 < len(text) <= KEY_LENGTH_MAX
        or not text.isprintable()
    ):
        raise InvalidInput(
            f"{name} must be 1..{KEY_LENGTH_MAX} printable characters", {"field": name}
        )
    return text


def next_transaction_id(previous: int, now_ms: int, random_bits: int) -> TransactionId:
    """The next ULID after `previous`: stamped `now_ms`, strictly greater even within one ms.

    When the clock has not moved past `previous` (same millisecond, or stepped back) the id is
    `previous + 1`, so a user's history always sorts in the order entries were made.
    """
    candidate = (now_ms << ULID_RANDOM_BITS) | (random_bits & ((1 << ULID_RANDOM_BITS) - 1))
    if candidate <= previous:
        candidate = previous + 1
    if candidate > ULID_MAX:
        raise OverflowError("ULID space exhausted")
    return TransactionId(candidate)


def transaction_id_str(transaction_id: int) -> str:
    return str(ULID.from_int(transaction_id))


def parse_transaction_id(text: object, field: str = "before") -> TransactionId:
    if not isinstance(text, str) or len(text) != 26:
        raise InvalidInput("transaction id must be a 26-character ULID", {"field": field})
    try:
        return TransactionId(int(ULID.from_str(text)))
    except ValueError:
        raise InvalidInput(
            "transaction id must be a 26-character ULID", {"field": field}
        ) from None


def transaction_id_ms(transaction_id: int) -> int:
    return transaction_id >> ULID_RANDOM_BITS
