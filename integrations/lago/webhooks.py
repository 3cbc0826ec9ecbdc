"""Lago's webhooks: verified (HMAC or Lago's RS256 JWT) and applied at most once.

`subscription.started` announces a period of the subscription we mirrored to Lago (its
external id is ours), `subscription.terminated` ends it; invoices and usage-threshold alerts
are recorded and counted. Each delivery's `X-Lago-Unique-Key` is remembered in the webhooks
database, so a redelivery is acknowledged without being applied again.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import uuid
from collections import Counter
from typing import Any

import jwt
import msgspec

from actors.payments import Payments
from actors.subscriptions import Subscriptions
from engine.errors import DuplicateEvent, InvalidInput
from engine.ids import UserId
from engine.subscriptions import MONTH_MS

PROVIDER = "lago"
RECORDED_TYPES = ("invoice.created", "subscription.usage_threshold_reached", "alert.triggered")
HANDLED_TYPES = ("subscription.started", "subscription.terminated", *RECORDED_TYPES)


def load_public_key(text: str) -> str:
    """Lago hands its public key out base64-encoded; a PEM is taken as it is."""
    if "BEGIN PUBLIC KEY" in text:
        return text
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("LAGO_PUBLIC_KEY is neither a PEM nor base64 of one") from None


class LagoWebhooks:
    def __init__(self, subscriptions: Subscriptions, payments: Payments, *,
                 hmac_key: str | None, public_key: str | None, issuer: str | None) -> None:
        self._subscriptions = subscriptions
        self._payments = payments
        self._hmac_key = hmac_key
        self._public_key = public_key
        self._issuer = issuer
        # (webhook type, outcome) -> count; exported as zbilling_lago_webhooks_total.
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def _verify(self, body: bytes, signature: str, algorithm: str) -> None:
        if algorithm == "hmac" and self._hmac_key:
            expected = base64.b64encode(
                hmac.new(self._hmac_key.encode(), body, hashlib.sha256).digest()).decode()
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return
        elif algorithm == "jwt" and self._public_key:
            try:
                claims = jwt.decode(signature, self._public_key, algorithms=["RS256"],
                                    issuer=self._issuer,
                                    options={"verify_iss": self._issuer is not None})
            except jwt.PyJWTError:
                pass
            else:
                if claims.get("data") == body.decode("utf-8", "replace"):
                    return
        self.outcomes["unverified", "refused"] += 1
        raise InvalidInput("invalid Lago signature")

    async def handle(self, body: bytes, headers: Any) -> str:
        self._verify(body, headers.get("X-Lago-Signature", ""),
                     headers.get("X-Lago-Signature-Algorithm", "jwt"))
        unique_key = headers.get("X-Lago-Unique-Key", "")
        if not 0 < len(unique_key) <= 256:
            raise InvalidInput("missing X-Lago-Unique-Key")
        try:
            payload = msgspec.json.decode(body)
            webhook_type = str(payload["webhook_type"])
        except (msgspec.DecodeError, KeyError, TypeError):
            raise InvalidInput("not a Lago webhook") from None
        label = webhook_type if webhook_type in HANDLED_TYPES else "other"
        if self._payments.webhook_applied(PROVIDER, unique_key):
            outcome = "duplicate"
        else:
            outcome = await self._apply(webhook_type, payload)
            await self._payments.record_webhook(
                self._payments.marker(PROVIDER, unique_key, webhook_type))
        self.outcomes[label, outcome] += 1
        return outcome

    async def _apply(self, webhook_type: str, payload: dict[str, Any]) -> str:
        if webhook_type in RECORDED_TYPES:
            return "recorded"
        if webhook_type not in ("subscription.started", "subscription.terminated"):
            return "ignored"
        subscription = payload.get("subscription") or {}
        try:
            user_id = UserId(uuid.UUID(str(subscription.get("external_customer_id"))))
        except ValueError:
            return "ignored"  # a customer z-billing did not create
        subscription_id = str(subscription.get("external_id"))
        if webhook_type == "subscription.terminated":
            await self._subscriptions.end(user_id, subscription_id)
            return "applied"
        start = _epoch_ms(subscription.get("current_billing_period_started_at")
                          or subscription.get("started_at"))
        ending = subscription.get("current_billing_period_ending_at")
        end = _epoch_ms(ending) if ending else start + MONTH_MS
        try:
            await self._subscriptions.grant(user_id, subscription_id, start, end,
                                            "lago:subscription.started")
        except DuplicateEvent:
            return "duplicate"
        return "applied"


def _epoch_ms(text: object) -> int:
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"not a time: {text!r}") from None
    return int(moment.timestamp() * 1000)
