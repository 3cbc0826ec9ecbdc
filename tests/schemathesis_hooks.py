"""Hooks for the schemathesis CLI run of tests/test_openapi.py (`SCHEMATHESIS_HOOKS`).

- Webhook deliveries are signed as Stripe and Lago sign them, with the secrets the server
  under test was given, so that a delivery the document calls valid can be verified. A case
  without the signature header (a "missing header" probe) is left without it.
- msgpack answers are decoded, so that their schema is checked too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
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


@schemathesis.deserializer("application/msgpack")
def msgpack_answer(context: Any, response: Any) -> Any:
    return msgspec.msgpack.decode(response.content)
