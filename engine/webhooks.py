"""Outbound webhook endpoints and the records that move their delivery cursors.

An endpoint is registered by an operator: a URL, the event types it wants and a signing secret
(generated, shown once). Every endpoint has a durable cursor over the webhook outbox: the last
sequence delivered (or parked) to it. Pure values and validation; delivery is
integrations/webhooks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.errors import InvalidInput
from engine.notifications import EventType

URL_LENGTH_MAX = 2048
ENDPOINTS_MAX = 64
# A rotated secret keeps signing beside the new one this long, so receivers can switch over.
SECRET_OVERLAP_MS = 24 * 3600 * 1000
# Scheme, host (name or IPv4, optional port), then a path or query of printable ASCII other
# than '#' and '"'. Read alike by Python's `re` and ECMA-262 (the document's pattern).
# A host's labels are 1..63 characters (DNS; a longer one fails at name resolution).
URL_PATTERN = (r"^https?://[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*\.?(:[0-9]{1,5})?"
               r"([/?][!$-~]*)?$")
# Python's `$` also matches before a final newline: `\Z` is the pattern's end here.
URL_RULE = re.compile(URL_PATTERN[:-1] + r"\Z")


class WebhookEndpoint(msgspec.Struct, frozen=True, gc=False):
    """A record: the endpoint as registered (or, with `deleted`, its removal). The store
    keeps the cursor it has when one is put again (a secret rotation)."""

    endpoint_id: str
    url: str
    event_types: tuple[EventType, ...]
    secret: str
    created_at_ms: int
    previous_secret: str | None = None
    previous_valid_until_ms: int = 0
    deleted: bool = False
    # The last outbox sequence delivered or parked; set by the store.
    cursor: int = 0

    def wants(self, event_type: str) -> bool:
        return event_type in self.event_types

    def secrets(self, now_ms: int) -> tuple[str, ...]:
        """The secrets a delivery is signed with now (two while a rotation overlaps)."""
        if self.previous_secret is not None and now_ms < self.previous_valid_until_ms:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    def public(self) -> dict[str, Any]:
        """The endpoint without its secrets."""
        return {"endpoint_id": self.endpoint_id, "url": self.url,
                "event_types": [kind.value for kind in self.event_types],
                "created_at_ms": self.created_at_ms, "cursor": self.cursor}


class ParkedWebhook(msgspec.Struct, frozen=True, gc=False):
    """An event an endpoint did not accept within the retry window, kept for a re-send."""

    endpoint_id: str
    sequence: int
    event: dict[str, Any]
    attempts: int
    last_error: str


class WebhookAck(msgspec.Struct, frozen=True, gc=False):
    """A record: `endpoint_id` got (or parked) everything up to `sequence`."""

    endpoint_id: str
    sequence: int
    parked: tuple[ParkedWebhook, ...] = ()


class RequeueWebhooks(msgspec.Struct, frozen=True, gc=False):
    """A record: put these parked events back in the outbox for their endpoint alone."""

    endpoint_id: str
    sequences: tuple[int, ...]


def validated_url(url: object) -> str:
    """An absolute http(s) URL with a host, in printable ASCII and without a fragment: where
    deliveries are POSTed (the API document states the same pattern)."""
    if not isinstance(url, str) or len(url) > URL_LENGTH_MAX or not URL_RULE.match(url):
        raise InvalidInput("url must be an absolute http or https URL with a host (printable "
                           f"ASCII, no fragment, at most {URL_LENGTH_MAX} characters)",
                           {"field": "url"})
    return url


def validated_event_types(event_types: Sequence[str]) -> tuple[EventType, ...]:
    """At least one known event type, each once."""
    if not event_types:
        raise InvalidInput("name at least one event type", {"field": "event_types"})
    found: list[EventType] = []
    for index, name in enumerate(event_types):
        try:
            kind = EventType(name)
        except ValueError:
            known = ", ".join(kind.value for kind in EventType)
            raise InvalidInput(f"unknown event type {name!r}; known: {known}",
                               {"field": f"event_types[{index}]"}) from None
        if kind not in found:
            found.append(kind)
    return tuple(found)
