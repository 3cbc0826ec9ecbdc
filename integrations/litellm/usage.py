"""What the callback sends to z-billing, computed from LiteLLM's objects without importing
LiteLLM (the objects are read by attribute or key, so unit tests can pass plain values)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Reservation, commit and late-report ids are this prefix and LiteLLM's call id, so every
# attempt at one call names the same z-billing key.
ID_PREFIX = "litellm-"


def billing_id(call_id: str) -> str:
    return f"{ID_PREFIX}{call_id}"


@dataclass(frozen=True, slots=True)
class Tokens:
    """One call's tokens in z-billing's split: `input` are uncached prompt tokens."""

    input: int = 0
    output: int = 0
    cached_read: int = 0
    cache_write: int = 0

    def metric(self, provider: str, model: str) -> dict[str, Any]:
        return {"type": "llm_tokens", "provider": provider, "model": model,
                "input_tokens": self.input, "output_tokens": self.output,
                "cached_input_tokens": self.cached_read, "cache_write_tokens": self.cache_write}

    def metadata(self) -> dict[str, int]:
        # Stored with the ledger entry, so a charge can be explained (and re-priced) later.
        return {"input_tokens": self.input, "output_tokens": self.output,
                "cached_input_tokens": self.cached_read, "cache_write_tokens": self.cache_write}


def _field(obj: object, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_from_usage(usage: object) -> Tokens:
    """LiteLLM's usage (OpenAI shape, normalised by LiteLLM for every provider):
    `prompt_tokens` counts every prompt token, cache reads and cache writes included, so the
    uncached part is what remains; Anthropic's own field names are read as a fallback."""
    details = _field(usage, "prompt_tokens_details")
    cached = _count(_field(details, "cached_tokens")) or _count(
        _field(usage, "cache_read_input_tokens"))
    written = (_count(_field(details, "cache_write_tokens"))
               or _count(_field(details, "cache_creation_tokens"))
               or _count(_field(usage, "cache_creation_input_tokens")))
    prompt = _count(_field(usage, "prompt_tokens"))
    return Tokens(input=max(prompt - cached - written, 0),
                  output=_count(_field(usage, "completion_tokens")),
                  cached_read=cached, cache_write=written)


def split_model(model: str, provider: str | None) -> tuple[str, str]:
    """(provider, model) for z-billing's price table from LiteLLM's model string."""
    if provider:
        prefix = f"{provider}/"
        return provider.lower(), model.removeprefix(prefix)
    head, slash, tail = model.partition("/")
    if slash and head and tail:
        return head.lower(), tail
    return "unknown", model


def parse_user_id(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None
