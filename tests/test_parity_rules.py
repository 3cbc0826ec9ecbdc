"""The pure rules behind the v0.1 parity rows (engine/): metadata bounds, e-mail addresses,
the model reserve, and the Lago customer an account's opening exports."""

from __future__ import annotations

import uuid

import pytest

from actors.config import load_pricing
from engine.commands import OpenAccount
from engine.errors import InvalidInput
from engine.export import AccountOpened
from engine.ids import TransactionId, UserId, validate_email
from engine.metadata import METADATA_ENTRIES_MAX, METADATA_VALUE_LENGTH_MAX, validate_metadata
from engine.pricing import model_reserve_cents
from engine.transitions import Context, apply

USER = UserId(uuid.UUID("00000000-0000-4000-8000-000000000009"))


def test_metadata_keeps_any_json_object_within_its_bounds_verbatim():
    metadata = {"a": [1, 2.5, None, True, "x"], "b": {"c": [{"d": 1}], "e": None}}
    with pytest.raises(InvalidInput):  # four levels: one too many
        validate_metadata(metadata)
    kept = {"a": [1, 2.5, None, True, "x"], "b": {"c": [1, "x"], "e": {"f": "g"}}}
    assert validate_metadata(kept) == kept


@pytest.mark.parametrize("metadata", [
    [1, 2],
    "text",
    {"": 1},
    {"k" * 65: 1},
    {"k": "v" * (METADATA_VALUE_LENGTH_MAX + 1)},
    {str(n): n for n in range(METADATA_ENTRIES_MAX + 1)},
    {"k": list(range(METADATA_ENTRIES_MAX + 1))},
    {"k": object()},
])
def test_metadata_outside_its_bounds_is_refused(metadata):
    with pytest.raises(InvalidInput):
        validate_metadata(metadata)


@pytest.mark.parametrize("address", ["a@b.co", "first.last+tag@sub.example.org"])
def test_an_email_address_is_taken_as_given(address):
    assert validate_email(address) == address


@pytest.mark.parametrize("address", ["", "a@b", "@b.co", "a b@c.de", "a@b@c.de", "a\n@b.co",
                                     "x" * 250 + "@b.co", None, 5])
def test_a_malformed_or_long_email_is_refused(address):
    with pytest.raises(InvalidInput):
        validate_email(address)


def test_the_model_reserve_prices_2000_in_and_1000_out_rounded_up():
    pricing = load_pricing()
    assert model_reserve_cents(pricing, "anthropic", "claude-3-5-sonnet") == 3  # 2.1 credits
    assert model_reserve_cents(pricing, "anthropic", "claude-3-haiku") == 1  # at least 1


def test_opening_an_account_exports_its_lago_customer_named_by_email():
    opened = apply(None, OpenAccount(USER, email="a@b.co"),
                   Context(now_ms=1, transaction_id=TransactionId(1)))
    assert opened.records == (AccountOpened(USER, email="a@b.co"),)
    assert AccountOpened(USER, email="a@b.co").to_lago() == {"customer": {
        "external_id": str(USER), "name": "a@b.co", "email": "a@b.co"}}
    assert AccountOpened(USER).to_lago() == {"customer": {
        "external_id": str(USER), "name": f"User {USER}"}}
