"""The price table: one place that turns a metric into exact micro-credits.

Rates are credits per million tokens (so `tokens * rate` is already micro-credits), or credits
per unit for compute, storage and API calls. Rates in the TOML are integers or decimal strings,
never floats. When a rate or multiplier makes the cost fractional, the whole metric's cost is
rounded once, half-even.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import msgspec

from engine.money import MICROS_PER_CREDIT, round_half_even
from engine.usage import ApiCalls, Compute, LlmTokens, Metric, Storage

Rate = int | Fraction


class PricingError(ValueError):
    """The pricing file is wrong; the message names the key."""


class LongContextRule(msgspec.Struct, frozen=True):
    """Reprices the whole request when the prompt crosses `threshold_input_tokens`."""

    threshold_input_tokens: int
    inclusive: bool
    input_multiplier: Rate
    output_multiplier: Rate

    def applies(self, prompt_tokens: int) -> bool:
        if self.inclusive:
            return prompt_tokens >= self.threshold_input_tokens
        return prompt_tokens > self.threshold_input_tokens


class ModelPrice(msgspec.Struct, frozen=True):
    """Credits per million tokens; cached and cache-write rates default to the input rate."""

    input: Rate
    output: Rate
    cached_input: Rate
    cache_write: Rate
    long_context: LongContextRule | None = None


class Quote(msgspec.Struct, frozen=True):
    cost_micros: int
    provider: str | None = None
    model: str | None = None
    default_price: bool = False
    long_context: bool = False
    min_charge_applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        whole, fraction = divmod(self.cost_micros, MICROS_PER_CREDIT)
        exact = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
        return {
            "cost_micros": self.cost_micros,
            "cost_cents_exact": exact,
            "provider": self.provider,
            "model": self.model,
            "default_price": self.default_price,
            "long_context": self.long_context,
            "min_charge_applied": self.min_charge_applied,
        }


class PricingConfig(msgspec.Struct, frozen=True):
    models: Mapping[tuple[str, str], ModelPrice]
    aliases: Mapping[tuple[str, str], tuple[str, str]]
    default_model: ModelPrice
    cpu_hour: Rate
    memory_gb_hour: Rate
    storage_gb_hour: Rate
    api_call_default: Rate
    api_call_endpoints: Mapping[str, Rate]
    min_charge_credits: int = 0

    @classmethod
    def from_toml(cls, text: str) -> PricingConfig:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PricingError(f"pricing file is not valid TOML: {error}") from error
        return _parse(document)

    def resolve(self, provider: str, model: str) -> tuple[tuple[str, str], ModelPrice | None]:
        """The model key after aliases, and its price (None: unknown, the default applies)."""
        key = (provider.lower(), model.lower())
        key = self.aliases.get(key, key)
        return key, self.models.get(key)


# --- pricing --------------------------------------------------------------------------------


def price_micros(pricing: PricingConfig, metric: Metric) -> int:
    """Exact micro-credits for one metric (the hot path: no Quote object)."""
    return _with_minimum(pricing, _cost(pricing, metric)[0])[0]


def quote(pricing: PricingConfig, metric: Metric) -> Quote:
    cost, provider, model, default_price, long_context = _cost(pricing, metric)
    cost, min_charge_applied = _with_minimum(pricing, cost)
    return Quote(
        cost_micros=cost,
        provider=provider,
        model=model,
        default_price=default_price,
        long_context=long_context,
        min_charge_applied=min_charge_applied,
    )


def _with_minimum(pricing: PricingConfig, cost_micros: int) -> tuple[int, bool]:
    """The opt-in per-event minimum; an event that costs nothing stays free."""
    minimum = pricing.min_charge_credits * MICROS_PER_CREDIT
    if 0 < cost_micros < minimum:
        return minimum, True
    return cost_micros, False


def _cost(
    pricing: PricingConfig, metric: Metric
) -> tuple[int, str | None, str | None, bool, bool]:
    if isinstance(metric, LlmTokens):
        key, price = pricing.resolve(metric.provider, metric.model)
        chosen = price if price is not None else pricing.default_model
        cost, long_context = _llm_cost(chosen, metric)
        return cost, key[0], key[1], price is None, long_context
    if isinstance(metric, Compute):
        credits = (
            Fraction(metric.cpu_hours) * pricing.cpu_hour
            + Fraction(metric.memory_gb_hours) * pricing.memory_gb_hour
        )
        return round_half_even(credits * MICROS_PER_CREDIT), None, None, False, False
    if isinstance(metric, Storage):
        credits = Fraction(metric.gb_hours) * pricing.storage_gb_hour
        return round_half_even(credits * MICROS_PER_CREDIT), None, None, False, False
    assert isinstance(metric, ApiCalls)
    rate = pricing.api_call_endpoints.get(metric.endpoint, pricing.api_call_default)
    return _micros(metric.count * rate * MICROS_PER_CREDIT), None, None, False, False


def _llm_cost(price: ModelPrice, metric: LlmTokens) -> tuple[int, bool]:
    input_rate, cached_rate, write_rate = price.input, price.cached_input, price.cache_write
    output_rate = price.output
    rule = price.long_context
    long_context = rule is not None and rule.applies(metric.prompt_tokens)
    if long_context:
        assert rule is not None
        input_rate = input_rate * rule.input_multiplier
        cached_rate = cached_rate * rule.input_multiplier
        write_rate = write_rate * rule.input_multiplier
        output_rate = output_rate * rule.output_multiplier
    cost = (
        metric.input_tokens * input_rate
        + metric.output_tokens * output_rate
        + metric.cached_input_tokens * cached_rate
        + metric.cache_write_tokens * write_rate
    )
    return _micros(cost), long_context


def _micros(value: Rate) -> int:
    return value if isinstance(value, int) else round_half_even(value)


# --- parsing --------------------------------------------------------------------------------


def _rate(value: object, where: str) -> Rate:
    """An exact, non-negative rate: an integer or a decimal string. Floats are refused."""
    if type(value) is int:
        if value < 0:
            raise PricingError(f"{where} must not be negative")
        return value
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            raise PricingError(f"{where} is not a decimal number: {value!r}") from None
        if not parsed.is_finite() or parsed < 0:
            raise PricingError(f"{where} must be a finite, non-negative number")
        exact = Fraction(parsed)
        return exact.numerator if exact.denominator == 1 else exact
    raise PricingError(
        f"{where} must be an integer or a decimal string (floats are not exact), "
        f"got {type(value).__name__}"
    )


def _table(document: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise PricingError(f"{where}{name} must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise PricingError(f"unknown keys in {where}: {sorted(unknown)}")


def _parse_rule(name: str, table: object) -> LongContextRule:
    where = f"llm.long_context.{name}"
    if not isinstance(table, Mapping):
        raise PricingError(f"{where} must be a table")
    _only(table, {"threshold_input_tokens", "inclusive", "input_multiplier",
                  "output_multiplier"}, where)
    threshold = table.get("threshold_input_tokens")
    inclusive = table.get("inclusive", False)
    if type(threshold) is not int or threshold <= 0:
        raise PricingError(f"{where}.threshold_input_tokens must be a positive integer")
    if type(inclusive) is not bool:
        raise PricingError(f"{where}.inclusive must be true or false")
    for field in ("input_multiplier", "output_multiplier"):
        if field not in table:
            raise PricingError(f"{where}.{field} is missing")
    return LongContextRule(
        threshold_input_tokens=threshold,
        inclusive=inclusive,
        input_multiplier=_rate(table["input_multiplier"], f"{where}.input_multiplier"),
        output_multiplier=_rate(table["output_multiplier"], f"{where}.output_multiplier"),
    )


def _parse_model(
    where: str, table: object, rules: Mapping[str, LongContextRule]
) -> ModelPrice:
    if not isinstance(table, Mapping):
        raise PricingError(f"{where} must be a table")
    _only(table, {"input", "output", "cached_input", "cache_write", "long_context"}, where)
    for field in ("input", "output"):
        if field not in table:
            raise PricingError(f"{where}.{field} is missing")
    input_rate = _rate(table["input"], f"{where}.input")
    rule_name = table.get("long_context")
    if rule_name is not None and rule_name not in rules:
        raise PricingError(f"{where}.long_context names an unknown rule {rule_name!r}")
    return ModelPrice(
        input=input_rate,
        output=_rate(table["output"], f"{where}.output"),
        cached_input=_rate(table["cached_input"], f"{where}.cached_input")
        if "cached_input" in table else input_rate,
        cache_write=_rate(table["cache_write"], f"{where}.cache_write")
        if "cache_write" in table else input_rate,
        long_context=rules[rule_name] if rule_name is not None else None,
    )


def _model_key(text: object, where: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count("/") != 1:
        raise PricingError(f"{where} must be written 'provider/model', got {text!r}")
    provider, model = text.lower().split("/")
    return provider, model


def _parse(document: Mapping[str, Any]) -> PricingConfig:
    _only(document, {"min_charge_credits", "llm", "compute", "storage", "api_calls"}, "pricing")
    llm = _table(document, "llm", "")
    _only(llm, {"default", "long_context", "models", "aliases"}, "llm")
    rules = {
        name: _parse_rule(name, table)
        for name, table in _table(llm, "long_context", "llm.").items()
    }
    models: dict[tuple[str, str], ModelPrice] = {}
    for provider, provider_models in _table(llm, "models", "llm.").items():
        if not isinstance(provider_models, Mapping):
            raise PricingError(f"llm.models.{provider} must be a table")
        for model, table in provider_models.items():
            where = f'llm.models.{provider}."{model}"'
            models[(provider.lower(), model.lower())] = _parse_model(where, table, rules)
    aliases = {
        _model_key(alias, f"llm.aliases key {alias!r}"): _model_key(
            target, f"llm.aliases.{alias!r}"
        )
        for alias, target in _table(llm, "aliases", "llm.").items()
    }
    for alias, target in aliases.items():
        if target not in models:
            raise PricingError(f"alias {'/'.join(alias)} points to unknown model "
                               f"{'/'.join(target)}")
    if "default" not in llm:
        raise PricingError("llm.default is missing")
    default_model = _parse_model("llm.default", llm["default"], rules)
    compute = _table(document, "compute", "")
    _only(compute, {"cpu_hour", "memory_gb_hour"}, "compute")
    storage = _table(document, "storage", "")
    _only(storage, {"gb_hour"}, "storage")
    api_calls = _table(document, "api_calls", "")
    _only(api_calls, {"default", "endpoints"}, "api_calls")
    min_charge = document.get("min_charge_credits", 0)
    if type(min_charge) is not int or min_charge < 0:
        raise PricingError("min_charge_credits must be a non-negative integer")
    return PricingConfig(
        models=models,
        aliases=aliases,
        default_model=default_model,
        cpu_hour=_rate(compute.get("cpu_hour", 0), "compute.cpu_hour"),
        memory_gb_hour=_rate(compute.get("memory_gb_hour", 0), "compute.memory_gb_hour"),
        storage_gb_hour=_rate(storage.get("gb_hour", 0), "storage.gb_hour"),
        api_call_default=_rate(api_calls.get("default", 0), "api_calls.default"),
        api_call_endpoints={
            endpoint: _rate(rate, f"api_calls.endpoints.{endpoint}")
            for endpoint, rate in _table(api_calls, "endpoints", "api_calls.").items()
        },
        min_charge_credits=min_charge,
    )
