"""Usage metrics as they arrive from services, validated into immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import msgspec

from engine.errors import InvalidInput

TOKENS_MAX = 10**10
API_CALLS_MAX = 10**9
QUANTITY_MAX = Decimal(10**9)
QUANTITY_DECIMALS_MAX = 9
NAME_LENGTH_MAX = 128


class LlmTokens(msgspec.Struct, frozen=True, gc=False):
    """Token counts of one model call. `input_tokens` are uncached prompt tokens; cache reads
    and cache writes are counted separately (they are priced separately)."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    type: ClassVar[str] = "llm_tokens"

    @property
    def prompt_tokens(self) -> int:
        """Every token of the prompt, the quantity long-context thresholds look at."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


class Compute(msgspec.Struct, frozen=True, gc=False):
    cpu_hours: Decimal
    memory_gb_hours: Decimal
    type: ClassVar[str] = "compute"


class ApiCalls(msgspec.Struct, frozen=True, gc=False):
    endpoint: str
    count: int
    type: ClassVar[str] = "api_calls"


class Storage(msgspec.Struct, frozen=True, gc=False):
    gb_hours: Decimal
    type: ClassVar[str] = "storage"


Metric = LlmTokens | Compute | ApiCalls | Storage


def _name(obj: Mapping[str, Any], field: str, default: str | None = None) -> str:
    value = obj.get(field, default)
    if not isinstance(value, str) or not 0 < len(value) <= NAME_LENGTH_MAX:
        raise InvalidInput(
            f"metric.{field} must be a string of 1..{NAME_LENGTH_MAX} characters",
            {"field": f"metric.{field}"},
        )
    return value


def _count(obj: Mapping[str, Any], field: str, high: int, default: int | None = None) -> int:
    value = obj.get(field, default)
    if type(value) is not int or not 0 <= value <= high:
        raise InvalidInput(
            f"metric.{field} must be an integer between 0 and {high}",
            {"field": f"metric.{field}"},
        )
    return value


def _quantity(obj: Mapping[str, Any], field: str, default: Decimal | None = None) -> Decimal:
    """A non-negative decimal quantity. Floats are refused: they would already be rounded."""
    value = obj.get(field, default)
    if type(value) is int:
        value = Decimal(value)
    elif isinstance(value, str):
        try:
            value = Decimal(value)
        except InvalidOperation:
            value = None
    if (
        not isinstance(value, Decimal)
        or not value.is_finite()
        or not Decimal(0) <= value <= QUANTITY_MAX
        or -value.as_tuple().exponent > QUANTITY_DECIMALS_MAX  # type: ignore[operator]
    ):
        raise InvalidInput(
            f"metric.{field} must be a decimal number between 0 and {QUANTITY_MAX} "
            f"with at most {QUANTITY_DECIMALS_MAX} decimals",
            {"field": f"metric.{field}"},
        )
    return value


_FIELDS: dict[str, frozenset[str]] = {
    "llm_tokens": frozenset(
        {"type", "provider", "model", "input_tokens", "output_tokens",
         "cached_input_tokens", "cache_write_tokens"}
    ),
    "compute": frozenset({"type", "cpu_hours", "memory_gb_hours"}),
    "api_calls": frozenset({"type", "endpoint", "count"}),
    "storage": frozenset({"type", "gb_hours"}),
}


def parse_metric(obj: object) -> Metric:
    """Validate a decoded `metric` object (decimals already `Decimal`, never float)."""
    if not isinstance(obj, Mapping):
        raise InvalidInput("metric must be an object", {"field": "metric"})
    kind = obj.get("type")
    allowed = _FIELDS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        raise InvalidInput(
            f"metric.type must be one of {sorted(_FIELDS)}", {"field": "metric.type"}
        )
    unknown = set(obj) - allowed
    if unknown:
        raise InvalidInput(
            f"unknown metric fields: {sorted(unknown)}", {"field": "metric"}
        )
    if kind == "llm_tokens":
        return LlmTokens(
            provider=_name(obj, "provider").lower(),
            model=_name(obj, "model"),
            input_tokens=_count(obj, "input_tokens", TOKENS_MAX, 0),
            output_tokens=_count(obj, "output_tokens", TOKENS_MAX, 0),
            cached_input_tokens=_count(obj, "cached_input_tokens", TOKENS_MAX, 0),
            cache_write_tokens=_count(obj, "cache_write_tokens", TOKENS_MAX, 0),
        )
    if kind == "compute":
        zero = Decimal(0)
        return Compute(
            cpu_hours=_quantity(obj, "cpu_hours", zero),
            memory_gb_hours=_quantity(obj, "memory_gb_hours", zero),
        )
    if kind == "api_calls":
        return ApiCalls(
            endpoint=_name(obj, "endpoint", "default"),
            count=_count(obj, "count", API_CALLS_MAX, 1),
        )
    return Storage(gb_hours=_quantity(obj, "gb_hours"))


def metric_to_wire(metric: Metric) -> dict[str, Any]:
    """The metric as plain data (decimals as strings), for storage, fingerprints and export."""
    if isinstance(metric, LlmTokens):
        return {
            "type": metric.type,
            "provider": metric.provider,
            "model": metric.model,
            "input_tokens": metric.input_tokens,
            "output_tokens": metric.output_tokens,
            "cached_input_tokens": metric.cached_input_tokens,
            "cache_write_tokens": metric.cache_write_tokens,
        }
    if isinstance(metric, Compute):
        return {
            "type": metric.type,
            "cpu_hours": str(metric.cpu_hours),
            "memory_gb_hours": str(metric.memory_gb_hours),
        }
    if isinstance(metric, ApiCalls):
        return {"type": metric.type, "endpoint": metric.endpoint, "count": metric.count}
    return {"type": metric.type, "gb_hours": str(metric.gb_hours)}
