"""The price table: one place that turns a usage metric into exact micro-credits.

Units (README "Money"): 1 credit = US$0.01 = 1,000,000 micro-credits. LLM rates
are credits per 1,000,000 tokens, which is the same number as micro-credits per token, so
`tokens * rate` is already an exact micro-credit count when the rate is an integer. Compute,
storage and API-call rates are credits per unit (CPU-hour, GB-hour, call).

Rates are exact: integers or decimal strings in the TOML, `Fraction` in memory, never floats.
A metric's cost is computed exactly and, only when a fractional rate, multiplier or quantity
makes it fractional, rounded ONCE for the whole metric, half-even (`engine.money`).

This module is pure: no file or network I/O. `price_micros` is on the hot debit path, so
`PricingConfig` compiles every price at load time into integer numerators over one common
denominator per model; pricing a metric is then a dict lookup and a few integer products.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from math import lcm
from types import MappingProxyType
from typing import Any

from engine.money import MICROS_PER_CREDIT, micros_to_cents_ceil, round_half_even
from engine.usage import TOKENS_MAX, ApiCalls, Compute, LlmTokens, Metric, Storage

__all__ = [
    "LongContextRule",
    "ModelPrice",
    "PricingConfig",
    "PricingError",
    "Quote",
    "price_micros",
    "quote",
]

# Above any prompt size a metric can carry (3 x TOKENS_MAX): "this model has no long-context
# rule" becomes one integer comparison that is never true, instead of a branch on None.
_NEVER = 1 << 62
assert _NEVER > 3 * TOKENS_MAX

# Reference values (the original price table), used when a pricing file leaves a rate out: a
# forgotten section must not make a resource free.
MODEL_CREDITS_PER_MILLION_DEFAULT = (100, 300)
CPU_HOUR_CREDITS = Fraction(6)
MEMORY_GB_HOUR_CREDITS = Fraction(2)
# Our choice, not from the reference: about 10 credits per GB-month.
STORAGE_GB_HOUR_CREDITS = Fraction("0.014")
# Our choice, not from the reference.
API_CALL_CREDITS = Fraction("0.1")


class PricingError(ValueError):
    """The pricing configuration is wrong; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class LongContextRule:
    """Reprices a WHOLE request once its prompt tokens cross `threshold_input_tokens`.

    `inclusive` true means "at or above the threshold", false means "strictly above". Input,
    cached-input and cache-write rates are multiplied by `input_multiplier`, the output rate by
    `output_multiplier`.
    """

    threshold_input_tokens: int
    inclusive: bool
    input_multiplier: Fraction
    output_multiplier: Fraction

    def applies(self, prompt_tokens: int) -> bool:
        """Whether a request with this many prompt tokens is priced by the rule."""
        if self.inclusive:
            return prompt_tokens >= self.threshold_input_tokens
        return prompt_tokens > self.threshold_input_tokens

    @property
    def first_long_prompt(self) -> int:
        """The smallest prompt size the rule applies to (folds `inclusive` into the bound)."""
        return self.threshold_input_tokens + (0 if self.inclusive else 1)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's rates in credits per 1,000,000 tokens.

    `cached_input` / `cache_write` None means those tokens are billed at the input rate.
    `long_context` names a rule in `PricingConfig.long_context_rules`.
    """

    input: Fraction
    output: Fraction
    cached_input: Fraction | None = None
    cache_write: Fraction | None = None
    long_context: str | None = None


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one metric and how it was reached.

    `provider`/`model` are the resolved table key after aliases (for an unknown model, the
    metric's own names; None for non-LLM metrics). `default_price`: an unknown model priced
    by the default rates. `long_context`: a long-context rule repriced the request.
    """

    cost_micros: int
    provider: str | None = None
    model: str | None = None
    default_price: bool = False
    long_context: bool = False
    min_charge_applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for an API reply; `cost_cents_exact` is an exact decimal string."""
        return {
            "cost_micros": self.cost_micros,
            "cost_cents_exact": _micros_as_credits(self.cost_micros),
            "provider": self.provider,
            "model": self.model,
            "default_price": self.default_price,
            "long_context": self.long_context,
            "min_charge_applied": self.min_charge_applied,
        }


_MODEL_DEFAULT = ModelPrice(
    Fraction(MODEL_CREDITS_PER_MILLION_DEFAULT[0]), Fraction(MODEL_CREDITS_PER_MILLION_DEFAULT[1])
)


def _micros_as_credits(micros: int) -> str:
    """10_500_000 -> "10.5", 105_000 -> "0.105", 250_000_000 -> "250" (exact, no float)."""
    sign = "-" if micros < 0 else ""
    whole, rest = divmod(abs(micros), MICROS_PER_CREDIT)
    if rest == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{rest:06d}".rstrip("0")


# --- compiled form (built once per PricingConfig) --------------------------------------------

# (denominator, input, output, cached_input, cache_write): micro-credits per token are
# numerator / denominator. One shared denominator lets the four products be summed as ints and
# rounded once; denominator 1 (every reference price) means no rounding at all.
_Rates = tuple[int, int, int, int, int]

# (numerator, denominator) of micro-credits per unit (CPU-hour, GB-hour, call).
_Unit = tuple[int, int]


class _LlmEntry:
    """A model's prices compiled for `price_micros`. Aliases share their target's entry."""

    __slots__ = ("base", "default", "long", "long_from", "model", "provider")

    def __init__(
        self,
        provider: str | None,
        model: str | None,
        price: ModelPrice,
        rule: LongContextRule | None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.default = provider is None
        self.base = _compile_rates(price, Fraction(1), Fraction(1))
        if rule is None:
            self.long = self.base
            self.long_from = _NEVER
        else:
            self.long = _compile_rates(price, rule.input_multiplier, rule.output_multiplier)
            self.long_from = rule.first_long_prompt


def _compile_rates(price: ModelPrice, input_mult: Fraction, output_mult: Fraction) -> _Rates:
    cached = price.input if price.cached_input is None else price.cached_input
    write = price.input if price.cache_write is None else price.cache_write
    rates = (
        price.input * input_mult,
        price.output * output_mult,
        cached * input_mult,
        write * input_mult,
    )
    denominator = lcm(*(rate.denominator for rate in rates))
    numerators = [rate.numerator * (denominator // rate.denominator) for rate in rates]
    return (denominator, numerators[0], numerators[1], numerators[2], numerators[3])


def _unit(credits_per_unit: Fraction) -> _Unit:
    micros = credits_per_unit * MICROS_PER_CREDIT
    return (micros.numerator, micros.denominator)


def _finish(numerator: int, denominator: int) -> int:
    """numerator / denominator micro-credits as an int: exact when it divides, otherwise
    the one half-even rounding of the whole metric's cost."""
    if denominator == 1:
        return numerator
    whole, rest = divmod(numerator, denominator)
    return whole if rest == 0 else round_half_even(Fraction(numerator, denominator))


def _decimal_cost(quantity: Decimal, unit: _Unit) -> int:
    """quantity x unit price, exactly, rounded once."""
    q_num, q_den = quantity.as_integer_ratio()
    return _finish(q_num * unit[0], q_den * unit[1])


def _compute_cost(metric: Compute, cpu: _Unit, memory: _Unit) -> int:
    """CPU and memory summed exactly before the single rounding."""
    c_num, c_den = metric.cpu_hours.as_integer_ratio()
    m_num, m_den = metric.memory_gb_hours.as_integer_ratio()
    cpu_den = c_den * cpu[1]
    memory_den = m_den * memory[1]
    return _finish(
        c_num * cpu[0] * memory_den + m_num * memory[0] * cpu_den, cpu_den * memory_den
    )


def _key_text(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def _check_rate(value: object, where: str) -> Fraction:
    # Checked again here, not only in the TOML parser, because a PricingConfig can also be
    # built directly in code; an int is accepted and read as an exact Fraction.
    if type(value) is int:
        value = Fraction(value)
    if not isinstance(value, Fraction):
        raise PricingError(f"{where} must be an exact Fraction or int, got {value!r}")
    if value < 0:
        raise PricingError(f"{where} must not be negative")
    return value


def _check_model(price: ModelPrice, where: str) -> ModelPrice:
    return ModelPrice(
        input=_check_rate(price.input, f"{where}.input"),
        output=_check_rate(price.output, f"{where}.output"),
        cached_input=None
        if price.cached_input is None
        else _check_rate(price.cached_input, f"{where}.cached_input"),
        cache_write=None
        if price.cache_write is None
        else _check_rate(price.cache_write, f"{where}.cache_write"),
        long_context=price.long_context,
    )


# --- the configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """Every price the engine charges. Build it with `from_toml`; every field has the
    reference value as its default, so `PricingConfig()` prices unknown models, compute,
    storage and API calls like the shipped table (but knows no models).

    `models` and `aliases` are keyed by lowercase (provider, model); an alias maps to a key of
    `models`. Rates are `Fraction` credits (per 1M tokens for LLMs, per unit otherwise).
    """

    models: Mapping[tuple[str, str], ModelPrice] = field(default_factory=dict)
    default_model: ModelPrice = _MODEL_DEFAULT
    long_context_rules: Mapping[str, LongContextRule] = field(default_factory=dict)
    aliases: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    cpu_hour: Fraction = CPU_HOUR_CREDITS
    memory_gb_hour: Fraction = MEMORY_GB_HOUR_CREDITS
    storage_gb_hour: Fraction = STORAGE_GB_HOUR_CREDITS
    api_call_default: Fraction = API_CALL_CREDITS
    api_call_endpoints: Mapping[str, Fraction] = field(default_factory=dict)
    min_charge_credits: int = 0

    # Compiled at construction for the hot path; not part of equality or repr.
    _llm: Mapping[tuple[str, str], _LlmEntry] = field(init=False, repr=False, compare=False)
    _default_llm: _LlmEntry = field(init=False, repr=False, compare=False)
    _cpu: _Unit = field(init=False, repr=False, compare=False)
    _memory: _Unit = field(init=False, repr=False, compare=False)
    _storage: _Unit = field(init=False, repr=False, compare=False)
    _api_default: _Unit = field(init=False, repr=False, compare=False)
    _api: Mapping[str, _Unit] = field(init=False, repr=False, compare=False)
    _min_micros: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = dict(self.long_context_rules)
        for name, rule in rules.items():
            where = f"llm.long_context.{name}"
            if type(rule.threshold_input_tokens) is not int or rule.threshold_input_tokens <= 0:
                raise PricingError(f"{where}.threshold_input_tokens must be a positive integer")
            if type(rule.inclusive) is not bool:
                raise PricingError(f"{where}.inclusive must be true or false")
            _check_rate(rule.input_multiplier, f"{where}.input_multiplier")
            _check_rate(rule.output_multiplier, f"{where}.output_multiplier")

        def compile_model(
            provider: str | None, model: str | None, price: ModelPrice, where: str
        ) -> _LlmEntry:
            price = _check_model(price, where)
            rule = None
            if price.long_context is not None:
                rule = rules.get(price.long_context)
                if rule is None:
                    raise PricingError(
                        f"{where}.long_context names an unknown rule {price.long_context!r}"
                    )
            return _LlmEntry(provider, model, price, rule)

        llm: dict[tuple[str, str], _LlmEntry] = {}
        for (provider, model), price in self.models.items():
            if provider != provider.lower() or model != model.lower():
                raise PricingError(f"llm.models key {_key_text(provider, model)!r} must be "
                                   "lowercase (lookups are case-insensitive)")
            llm[(provider, model)] = compile_model(
                provider, model, price, f'llm.models.{provider}."{model}"'
            )
        for alias, target in self.aliases.items():
            where = f'llm.aliases."{_key_text(*alias)}"'
            if alias != (alias[0].lower(), alias[1].lower()):
                raise PricingError(f"{where} must be lowercase")
            if alias in self.models:
                raise PricingError(f"{where} would shadow a priced model")
            if target not in llm:
                raise PricingError(
                    f"{where} points to {_key_text(*target)!r}, which is not in llm.models"
                )
            llm[alias] = llm[target]

        if type(self.min_charge_credits) is not int or self.min_charge_credits < 0:
            raise PricingError("min_charge_credits must be a non-negative integer")

        # A frozen dataclass: the compiled fields are set once, here, and never again.
        def init(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        init("_llm", MappingProxyType(llm))
        init("_default_llm", compile_model(None, None, self.default_model, "llm.default"))
        init("_cpu", _unit(_check_rate(self.cpu_hour, "compute.cpu_hour")))
        init("_memory", _unit(_check_rate(self.memory_gb_hour, "compute.memory_gb_hour")))
        init("_storage", _unit(_check_rate(self.storage_gb_hour, "storage.gb_hour")))
        init("_api_default", _unit(_check_rate(self.api_call_default, "api_calls.default")))
        init("_api", MappingProxyType({
            endpoint: _unit(_check_rate(rate, f"api_calls.endpoints.{endpoint}"))
            for endpoint, rate in self.api_call_endpoints.items()
        }))
        init("_min_micros", self.min_charge_credits * MICROS_PER_CREDIT)

    @classmethod
    def from_toml(cls, text: str) -> PricingConfig:
        """Parse a pricing file (schema: the shipped `engine/pricing.toml`).

        Raises `PricingError` naming the key for invalid TOML, unknown keys, missing model
        rates, floats, negative rates and references to unknown rules or models.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PricingError(f"pricing file is not valid TOML: {error}") from error
        return _parse(document)

    def resolve(self, provider: str, model: str) -> tuple[tuple[str, str], ModelPrice | None]:
        """The (provider, model) key after case-folding and aliases, and its table price
        (None: an unknown model, priced by `default_model`)."""
        entry = _lookup(self, provider, model)
        if entry.provider is None or entry.model is None:
            return (provider.lower(), model.lower()), None
        key = (entry.provider, entry.model)
        return key, self.models[key]


def _lookup(pricing: PricingConfig, provider: str, model: str) -> _LlmEntry:
    """Exact key first (the usual case: parse_metric already lowercased the provider), then
    case-folded; aliases live in the same dict. Unknown models get the default entry."""
    entry = pricing._llm.get((provider, model))
    if entry is None:
        entry = pricing._llm.get((provider.lower(), model.lower()), pricing._default_llm)
    return entry


# --- pricing --------------------------------------------------------------------------------


def price_micros(pricing: PricingConfig, metric: Metric) -> int:
    """Exact micro-credits for one metric, the minimum charge included.

    Equal to `quote(pricing, metric).cost_micros`; this is the hot debit path, so it builds no
    Quote and inlines the LLM case (tests check the two agree on random metrics).
    """
    if isinstance(metric, LlmTokens):
        entry = pricing._llm.get((metric.provider, metric.model))
        if entry is None:
            entry = _lookup(pricing, metric.provider, metric.model)
        input_tokens = metric.input_tokens
        cached = metric.cached_input_tokens
        write = metric.cache_write_tokens
        rates = entry.long if input_tokens + cached + write >= entry.long_from else entry.base
        denominator, input_rate, output_rate, cached_rate, write_rate = rates
        cost = (
            input_tokens * input_rate
            + metric.output_tokens * output_rate
            + cached * cached_rate
            + write * write_rate
        )
        if denominator != 1:
            cost = _finish(cost, denominator)
    else:
        cost = _other_cost(pricing, metric)
    if 0 < cost < pricing._min_micros:
        return pricing._min_micros
    return cost


# The original service's model reserve: what `/v1/usage/check` requires for a model when the
# caller names no amount, the price of a typical call.
MODEL_RESERVE_INPUT_TOKENS = 2_000
MODEL_RESERVE_OUTPUT_TOKENS = 1_000


def model_reserve_cents(pricing: PricingConfig, provider: str, model: str) -> int:
    """The price of MODEL_RESERVE_INPUT_TOKENS + MODEL_RESERVE_OUTPUT_TOKENS of the model,
    exact micro-credits rounded up to whole credits, at least 1."""
    tokens = LlmTokens(provider, model, MODEL_RESERVE_INPUT_TOKENS, MODEL_RESERVE_OUTPUT_TOKENS)
    return max(1, micros_to_cents_ceil(price_micros(pricing, tokens)))


def quote(pricing: PricingConfig, metric: Metric) -> Quote:
    """The price of one metric with how it was reached (for replies, previews and audits)."""
    if isinstance(metric, LlmTokens):
        entry = _lookup(pricing, metric.provider, metric.model)
        long_context = metric.prompt_tokens >= entry.long_from
        denominator, input_rate, output_rate, cached_rate, write_rate = (
            entry.long if long_context else entry.base
        )
        cost = _finish(
            metric.input_tokens * input_rate
            + metric.output_tokens * output_rate
            + metric.cached_input_tokens * cached_rate
            + metric.cache_write_tokens * write_rate,
            denominator,
        )
        provider = metric.provider if entry.default else entry.provider
        model = metric.model if entry.default else entry.model
        default_price = entry.default
    else:
        cost = _other_cost(pricing, metric)
        provider = model = None
        default_price = long_context = False
    # The minimum looks at the rounded cost: an event whose exact cost rounds to 0 is free.
    min_charge_applied = 0 < cost < pricing._min_micros
    return Quote(
        cost_micros=pricing._min_micros if min_charge_applied else cost,
        provider=provider,
        model=model,
        default_price=default_price,
        long_context=long_context,
        min_charge_applied=min_charge_applied,
    )


def _other_cost(pricing: PricingConfig, metric: Metric) -> int:
    """Compute, storage and API calls, before the minimum charge."""
    if isinstance(metric, Compute):
        return _compute_cost(metric, pricing._cpu, pricing._memory)
    if isinstance(metric, Storage):
        return _decimal_cost(metric.gb_hours, pricing._storage)
    if isinstance(metric, ApiCalls):
        numerator, denominator = pricing._api.get(metric.endpoint, pricing._api_default)
        return _finish(metric.count * numerator, denominator)
    raise TypeError(f"not a metric: {metric!r}")


# --- parsing --------------------------------------------------------------------------------


def _rate(value: object, where: str) -> Fraction:
    """An exact, non-negative rate: an integer or a decimal string. Floats are refused
    because the TOML text 0.1 has already become an inexact binary number."""
    if type(value) is int:
        if value < 0:
            raise PricingError(f"{where} must not be negative")
        return Fraction(value)
    if type(value) is float:
        raise PricingError(
            f"{where} is a float ({value!r}); floats are not exact, write it as a decimal "
            f'string ("{value!r}") or an integer'
        )
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            raise PricingError(f"{where} is not a decimal number: {value!r}") from None
        if not parsed.is_finite():
            raise PricingError(f"{where} must be a finite number, got {value!r}")
        if parsed < 0:
            raise PricingError(f"{where} must not be negative")
        return Fraction(parsed)
    raise PricingError(
        f"{where} must be an integer or a decimal string, got {type(value).__name__}"
    )


def _table(parent: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = parent.get(name, {})
    if not isinstance(value, Mapping):
        raise PricingError(f"{where} must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PricingError(f"unknown key(s) in {where}: {unknown}; allowed: {sorted(allowed)}")


def _require(table: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        if name not in table:
            raise PricingError(f"{where}.{name} is missing")


def _parse_rule(name: str, table: object) -> LongContextRule:
    where = f"llm.long_context.{name}"
    if not isinstance(table, Mapping):
        raise PricingError(f"{where} must be a table")
    fields = ("threshold_input_tokens", "inclusive", "input_multiplier", "output_multiplier")
    _only(table, set(fields), where)
    # `inclusive` is required, not defaulted: "at or above" vs "above" is exactly the kind of
    # boundary a reader must see written down.
    _require(table, fields, where)
    threshold = table["threshold_input_tokens"]
    if type(threshold) is not int or threshold <= 0:
        raise PricingError(f"{where}.threshold_input_tokens must be a positive integer")
    if type(table["inclusive"]) is not bool:
        raise PricingError(f"{where}.inclusive must be true or false")
    return LongContextRule(
        threshold_input_tokens=threshold,
        inclusive=table["inclusive"],
        input_multiplier=_rate(table["input_multiplier"], f"{where}.input_multiplier"),
        output_multiplier=_rate(table["output_multiplier"], f"{where}.output_multiplier"),
    )


def _parse_model(table: object, where: str, rules: Mapping[str, LongContextRule]) -> ModelPrice:
    if not isinstance(table, Mapping):
        raise PricingError(f"{where} must be a table")
    _only(table, {"input", "output", "cached_input", "cache_write", "long_context"}, where)
    _require(table, ("input", "output"), where)
    rule = table.get("long_context")
    if rule is not None and not isinstance(rule, str):
        raise PricingError(f"{where}.long_context must be the name of a rule")
    if rule is not None and rule not in rules:
        raise PricingError(f"{where}.long_context names an unknown rule {rule!r}")
    return ModelPrice(
        input=_rate(table["input"], f"{where}.input"),
        output=_rate(table["output"], f"{where}.output"),
        cached_input=_rate(table["cached_input"], f"{where}.cached_input")
        if "cached_input" in table else None,
        cache_write=_rate(table["cache_write"], f"{where}.cache_write")
        if "cache_write" in table else None,
        long_context=rule,
    )


def _model_key(text: object, where: str) -> tuple[str, str]:
    """'provider/model' -> (provider, model), lowercase. Split at the first slash: provider
    names have none, but some model ids do (e.g. "accounts/fireworks/models/...")."""
    if not isinstance(text, str):
        raise PricingError(f"{where} must be a string 'provider/model'")
    provider, slash, model = text.lower().partition("/")
    if not slash or not provider or not model:
        raise PricingError(f"{where} must be written 'provider/model', got {text!r}")
    return provider, model


def _parse(document: Mapping[str, Any]) -> PricingConfig:
    _only(document, {"min_charge_credits", "llm", "compute", "storage", "api_calls"}, "pricing")
    llm = _table(document, "llm", "llm")
    _only(llm, {"default", "long_context", "models", "aliases"}, "llm")
    rules = {
        name: _parse_rule(name, table)
        for name, table in _table(llm, "long_context", "llm.long_context").items()
    }

    models: dict[tuple[str, str], ModelPrice] = {}
    for provider, provider_models in _table(llm, "models", "llm.models").items():
        where = f"llm.models.{provider}"
        if not isinstance(provider_models, Mapping):
            raise PricingError(f"{where} must be a table of models")
        if "/" in provider:
            raise PricingError(f"{where}: a provider name cannot contain '/'")
        for model, table in provider_models.items():
            key = (provider.lower(), model.lower())
            if key in models:
                raise PricingError(f'{where}."{model}" is listed twice (names ignore case)')
            models[key] = _parse_model(table, f'{where}."{model}"', rules)

    aliases: dict[tuple[str, str], tuple[str, str]] = {}
    for alias, target in _table(llm, "aliases", "llm.aliases").items():
        where = f'llm.aliases."{alias}"'
        key = _model_key(alias, where)
        if key in aliases:
            raise PricingError(f"{where} is listed twice (names ignore case)")
        aliases[key] = _model_key(target, where)
        if aliases[key] not in models:
            raise PricingError(f"{where} points to {target!r}, which is not in llm.models")

    default_model = (
        _parse_model(llm["default"], "llm.default", rules)
        if "default" in llm else _MODEL_DEFAULT
    )

    compute = _table(document, "compute", "compute")
    _only(compute, {"cpu_hour", "memory_gb_hour"}, "compute")
    storage = _table(document, "storage", "storage")
    _only(storage, {"gb_hour"}, "storage")
    api_calls = _table(document, "api_calls", "api_calls")
    _only(api_calls, {"default", "endpoints"}, "api_calls")

    def unit_rate(table: Mapping[str, Any], name: str, where: str, default: Fraction) -> Fraction:
        # An absent rate keeps the reference value rather than 0: a forgotten section must
        # not make a resource free.
        return _rate(table[name], where) if name in table else default

    min_charge = document.get("min_charge_credits", 0)
    if type(min_charge) is not int or min_charge < 0:
        raise PricingError("min_charge_credits must be a non-negative integer (credits)")

    return PricingConfig(
        models=MappingProxyType(models),
        default_model=default_model,
        long_context_rules=MappingProxyType(rules),
        aliases=MappingProxyType(aliases),
        cpu_hour=unit_rate(compute, "cpu_hour", "compute.cpu_hour", CPU_HOUR_CREDITS),
        memory_gb_hour=unit_rate(
            compute, "memory_gb_hour", "compute.memory_gb_hour", MEMORY_GB_HOUR_CREDITS
        ),
        storage_gb_hour=unit_rate(
            storage, "gb_hour", "storage.gb_hour", STORAGE_GB_HOUR_CREDITS
        ),
        api_call_default=unit_rate(api_calls, "default", "api_calls.default", API_CALL_CREDITS),
        api_call_endpoints=MappingProxyType({
            endpoint: _rate(rate, f'api_calls.endpoints."{endpoint}"')
            for endpoint, rate in _table(
                api_calls, "endpoints", "api_calls.endpoints"
            ).items()
        }),
        min_charge_credits=min_charge,
    )
