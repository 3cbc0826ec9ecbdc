"""Hooks for the schemathesis CLI run of tests/test_openapi.py (`SCHEMATHESIS_HOOKS`).

- Webhook deliveries are signed as Stripe and Lago sign them, with the secrets the server
  under test was given, so that a delivery the document calls valid can be verified. A case
  without the signature header (a "missing header" probe) is left without it.
- msgpack answers are decoded, so that their schema is checked too.
- A referral names two users, and one user referring themselves is refused (400): JSON Schema
  cannot state "these two fields differ", so a generated case naming one user twice names
  a second one instead.
- A lot's `expires_at` must be in the future and after its `effective_at` (400 otherwise):
  rules of the clock the document cannot state, so a generated expiry that breaks them is
  moved a day past the later of now and `effective_at`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import requests
import schemathesis

STRIPE_SIGNATURE = "Stripe-Signature"
LAGO_SIGNATURE = "X-Lago-Signature"


def _body(case: Any) -> bytes:
    """The exact bytes the transport will send for this case."""
    sent = case.as_transport_kwargs(base_url="http://127.0.0.1")
    prepared = requests.Request(sent["method"], sent["url"], data=sent.get("data"),
                                json=sent.get("json")).prepare()
    body = prepared.body or b""
    return body if isinstance(body, bytes) else body.encode()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if case.path == "/v1/credits/referral-grant" and isinstance(body, dict) and \
            isinstance(body.get("inviter_user_id"), str) and \
            body.get("inviter_user_id") == body.get("invitee_user_id"):
        body["invitee_user_id"] = str(uuid.uuid5(uuid.NAMESPACE_OID, body["inviter_user_id"]))
    if case.path == "/v1/credits/add" and isinstance(body, dict):
        _expiry_after_now_and_effective(body)
    headers = case.headers or {}
    if STRIPE_SIGNATURE in headers:
        timestamp = int(time.time())
        secret = os.environ["STRIPE_WEBHOOK_SECRET"].encode()
        mac = hmac.new(secret, f"{timestamp}.".encode() + _body(case), hashlib.sha256)
        headers[STRIPE_SIGNATURE] = f"t={timestamp},v1={mac.hexdigest()}"
    if LAGO_SIGNATURE in headers:
        secret = os.environ["LAGO_WEBHOOK_SECRET"].encode()
        digest = hmac.new(secret, _body(case), hashlib.sha256).digest()
        headers[LAGO_SIGNATURE] = base64.b64encode(digest).decode()


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _expiry_after_now_and_effective(body: dict[str, Any]) -> None:
    expires = _instant(body.get("expires_at"))
    if expires is None:
        return  # absent, or not a date-time at all (a negative case): left as generated
    floor = max(datetime.now(UTC), _instant(body.get("effective_at")) or datetime.now(UTC))
    if expires <= floor + timedelta(minutes=5):
        later = floor + timedelta(days=1)
        body["expires_at"] = (later.strftime("%Y-%m-%dT%H:%M:%S.")
                              + f"{later.microsecond // 1000:03d}Z")


@schemathesis.deserializer("application/msgpack")
def msgpack_answer(context: Any, response: Any) -> Any:
    return msgspec.msgpack.decode(response.content)
