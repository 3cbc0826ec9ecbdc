"""Usage metrics as they arrive from services: typed, tagged by `type`, validated on decoding.

These Structs are the wire schema too: the API decodes request bodies straight into them and
the OpenAPI document is generated from them, so the rules below are stated once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar

import msgspec

from engine.errors import InvalidInput

TOKENS_MAX = 10**10
API_CALLS_MAX = 10**9
QUANTITY_MAX = Decimal(10**9)
QUANTITY_DECIMALS_MAX = 9
# The largest exponent a quantity may be written with: that of QUANTITY_MAX itself (1E+9).
_QUANTITY_EXPONENT_MAX = len(str(int(QUANTITY_MAX))) - 1
NAME_LENGTH_MAX = 128
UNKNOWN_FIELD = "Object contains unknown field `"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_LENGTH_MAX)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=TOKENS_MAX)]
# JSON numbers and strings both decode exactly (never through float); the schema says so.
Quantity = Annotated[Decimal, msgspec.Meta(
    description=f"a decimal between 0 and {QUANTITY_MAX} with at most "
                f"{QUANTITY_DECIMALS_MAX} decimals, as a JSON number or string",
    # The OpenAPI document widens msgspec's "string, format decimal" to string or number.
)]


class QuantityError(ValueError):
    """Raised while decoding; msgspec turns it into a ValidationError at the metric's path."""

    def __init__(self, field: str) -> None:
        super().__init__(
            f"`{field}` must be a decimal number between 0 and {QUANTITY_MAX} "
            f"with at most {QUANTITY_DECIMALS_MAX} decimals"
        )


def _check_quantity(field: str, value: Decimal) -> None:
    """Non-negative, bounded, finite, at most nine decimals: cost stays exact in micros. An
    exponent above the bound's own (only zero can have one: "0E+10") is a spelling the
    document does not admit, so it is refused too."""
    exponent = value.as_tuple().exponent
    if (
        not value.is_finite()
        or not Decimal(0) <= value <= QUANTITY_MAX
        or -exponent > QUANTITY_DECIMALS_MAX  # type: ignore[operator]
        or exponent > _QUANTITY_EXPONENT_MAX  # type: ignore[operator]
    ):
        raise QuantityError(field)


class LlmTokens(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True,
                tag_field="type", tag="llm_tokens"):
    """Token counts of one model call. `input_tokens` are uncached prompt tokens; cache reads
    and cache writes are counted separately (they are priced separately)."""

    provider: Name
    model: Name
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0
    cache_write_tokens: TokenCount = 0
    type: ClassVar[str] = "llm_tokens"

    def __post_init__(self) -> None:
        # Providers are case-insensitive; folding once here keeps the price lookup exact.
        if not self.provider.islower():
            msgspec.structs.force_setattr(self, "provider", self.provider.lower())

    @property
    def prompt_tokens(self) -> int:
        """Every token of the prompt, the quantity long-context thresholds look at."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens


class Compute(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True,
              tag_field="type", tag="compute"):
    cpu_hours: Quantity = Decimal(0)
    memory_gb_hours: Quantity = Decimal(0)
    type: ClassVar[str] = "compute"

    def __post_init__(self) -> None:
        _check_quantity("cpu_hours", self.cpu_hours)
        _check_quantity("memory_gb_hours", self.memory_gb_hours)


class ApiCalls(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True,
               tag_field="type", tag="api_calls"):
    endpoint: Name = "default"
    count: Annotated[int, msgspec.Meta(ge=0, le=API_CALLS_MAX)] = 1
    type: ClassVar[str] = "api_calls"


class Storage(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True,
              tag_field="type", tag="storage"):
    gb_hours: Quantity
    type: ClassVar[str] = "storage"

    def __post_init__(self) -> None:
        _check_quantity("gb_hours", self.gb_hours)


Metric = LlmTokens | Compute | ApiCalls | Storage


def invalid_input(error: msgspec.ValidationError, prefix: str = "") -> InvalidInput:
    """A decoding error as the domain's InvalidInput, naming the field it is about.

    msgspec says where (`- at `$.metric``) and a QuantityError says which field inside it.
    """
    message, _, where = str(error).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if message.startswith("`") and "` must" in message:
        inner = message[1:message.index("`", 1)]
        path = f"{path}.{inner}" if path else inner
    field = ".".join(part for part in (prefix, path) if part)
    details: dict[str, Any] = {"field": field} if field else {}
    if message.startswith(UNKNOWN_FIELD):
        details["fields"] = [message[len(UNKNOWN_FIELD):].rstrip("`")]
    return InvalidInput(message if not field else f"{field}: {message}", details)


def parse_metric(obj: object) -> Metric:
    """Validate a decoded `metric` object (decimals as `Decimal`, str or int, never float)."""
    try:
        return msgspec.convert(obj, Metric)  # type: ignore[arg-type]
    except msgspec.ValidationError as error:
        raise invalid_input(error, "metric") from None


def metric_to_wire(metric: Metric) -> dict[str, Any]:
    """The metric as plain data (decimals as strings), for storage, fingerprints and export."""
    return msgspec.to_builtins(metric)  # type: ignore[no-any-return]
