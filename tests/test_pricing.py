"""The price table: worked examples, reference prices, long context, caches, rounding."""

from __future__ import annotations

import csv
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.config import load_pricing
from engine.money import MICROS_PER_CREDIT
from engine.pricing import PricingConfig, PricingError, price_micros, quote
from engine.usage import ApiCalls, Compute, LlmTokens, Storage
from tests.conftest import SHARED_DIR

PRICING = load_pricing()
CREDIT = MICROS_PER_CREDIT


def llm(provider, model, input_tokens=0, output_tokens=0, *, cached=0, write=0) -> LlmTokens:
    return LlmTokens(provider, model, input_tokens, output_tokens, cached, write)


@pytest.mark.parametrize(
    ("metric", "credits"),
    [
        (llm("anthropic", "claude-3-5-sonnet", 10_000, 5_000), Fraction(105, 10)),
        (llm("anthropic", "claude-3-5-sonnet", 100, 50), Fraction(105, 1000)),
        (llm("openai", "gpt-4o", 1_000_000), 250),
        (llm("xai", "grok-4.6", 1_000_000, 500_000), 1000),
        (llm("xai", "grok-4.3", 1_000_000, 500_000), 500),
        (llm("moonshot", "kimi-k3", 1_000_000, 500_000), 1050),
        (llm("google", "gemini-2.5-flash", 500_000, 100_000), 40),
        (llm("someone", "unknown-model", 1_000_000), 100),
        (Compute(Decimal("2.0"), Decimal("4.0")), 20),
        (Compute(Decimal("0.5"), Decimal("1.0")), 5),
    ],
)
def test_worked_examples_of_the_original_priced_exactly(metric, credits):
    assert price_micros(PRICING, metric) == credits * CREDIT


REFERENCE = {
    ("anthropic", "claude-opus-5"): (500, 2500),
    ("anthropic", "claude-sonnet-5"): (200, 1000),
    ("anthropic", "claude-3-5-sonnet"): (300, 1500),
    ("anthropic", "claude-3-haiku"): (25, 125),
    ("anthropic", "claude-3-opus"): (1500, 7500),
    ("openai", "gpt-4o"): (250, 1000),
    ("openai", "gpt-4o-mini"): (15, 60),
    ("openai", "gpt-4-turbo"): (1000, 3000),
    ("openai", "gpt-5.5"): (500, 3000),
    ("openai", "gpt-5.4"): (250, 1500),
    ("openai", "gpt-5.4-mini"): (75, 450),
    ("openai", "gpt-5.4-nano"): (20, 125),
    ("xai", "grok-4.6"): (200, 600),
    ("xai", "grok-4.3"): (125, 250),
    ("moonshot", "kimi-k3"): (300, 1500),
    ("google", "gemini-2.5-pro"): (125, 1000),
    ("google", "gemini-2.5-flash"): (30, 250),
    ("google", "gemini-2.5-flash-lite"): (10, 40),
}


@pytest.mark.parametrize(("key", "rates"), sorted(REFERENCE.items()))
def test_reference_prices_per_million_tokens(key, rates):
    # 100,000 tokens stay below every long-context threshold.
    provider, model = key
    assert price_micros(PRICING, llm(provider, model, 100_000)) == rates[0] * CREDIT // 10
    assert price_micros(PRICING, llm(provider, model, 0, 100_000)) == rates[1] * CREDIT // 10
    assert not quote(PRICING, llm(provider, model, 1)).default_price


def test_every_row_of_the_shared_price_table_is_priced():
    table = SHARED_DIR / "reference" / "pricing.csv"
    if not table.exists():
        pytest.skip("shared/reference/pricing.csv is not on this machine (it is in CI)")
    rows = list(csv.DictReader(table.open()))
    models = [row for row in rows if row["provider"] not in ("default", "compute")]
    assert len(models) >= 40
    for row in models:
        metric_in = llm(row["provider"], row["model"], 100_000)
        metric_out = llm(row["provider"], row["model"], 0, 100_000)
        expected_in = Decimal("43.5") if (row["provider"], row["model"]) == (
            "deepseek", "deepseek-v4-pro") else Decimal(row["input_credits_per_million"])
        assert price_micros(PRICING, metric_in) == expected_in * 100_000, row
        assert price_micros(PRICING, metric_out) == int(row["output_credits_per_million"]) * (
            100_000
        ), row
    defaults = {row["model"]: row for row in rows if row["provider"] in ("default", "compute")}
    assert price_micros(PRICING, llm("nobody", "x", 1_000_000)) == int(
        defaults["*"]["input_credits_per_million"]) * CREDIT
    assert price_micros(PRICING, Compute(Decimal(1), Decimal(0))) == int(
        defaults["cpu_hour"]["input_credits_per_million"]) * CREDIT


def test_openai_long_context_is_strictly_above_272k():
    base = price_micros(PRICING, llm("openai", "gpt-5.5", 272_000, 1000))
    assert base == 272_000 * 500 + 1000 * 3000
    long = quote(PRICING, llm("openai", "gpt-5.5", 272_001, 1000))
    assert long.long_context
    assert long.cost_micros == 272_001 * 1000 + 1000 * 4500


def test_xai_long_context_is_at_or_above_200k_and_doubles_both():
    assert price_micros(PRICING, llm("xai", "grok-4.3", 199_999, 10)) == 199_999 * 125 + 10 * 250
    assert price_micros(PRICING, llm("xai", "grok-4.3", 200_000, 10)) == 200_000 * 250 + 10 * 500


def test_gemini_pro_long_context_is_strictly_above_200k():
    assert price_micros(PRICING, llm("google", "gemini-2.5-pro", 200_000, 2)) == (
        200_000 * 125 + 2 * 1000
    )
    assert price_micros(PRICING, llm("google", "gemini-2.5-pro", 200_001, 2)) == (
        200_001 * 250 + 2 * 1500
    )
    assert not quote(PRICING, llm("google", "gemini-2.5-flash", 900_000)).long_context


def test_cached_tokens_count_toward_the_threshold():
    metric = llm("xai", "grok-4.6", 150_000, 0, cached=50_000)
    result = quote(PRICING, metric)
    assert result.long_context
    assert result.cost_micros == 150_000 * 400 + 50_000 * 100


def test_cached_input_and_cache_write_prices():
    # grok-4.6 cached input: 50 per million below the threshold, 100 at or above it.
    assert price_micros(PRICING, llm("xai", "grok-4.6", cached=1_000_000)) == 100 * CREDIT
    assert price_micros(PRICING, llm("xai", "grok-4.6", cached=100_000)) == 5 * CREDIT
    assert price_micros(PRICING, llm("moonshot", "kimi-k3", cached=1_000_000)) == 30 * CREDIT
    assert price_micros(PRICING, llm("openai", "gpt-5.6-sol", write=100_000)) == 625 * CREDIT // 10
    # No cached price configured: cached tokens cost the input rate.
    assert price_micros(PRICING, llm("openai", "gpt-4o", cached=1_000_000)) == 250 * CREDIT


def test_aliases_and_case_resolve_to_the_table_model():
    aliased = quote(PRICING, llm("anthropic", "claude-3-5-sonnet-latest", 1_000_000))
    assert (aliased.model, aliased.cost_micros, aliased.default_price) == (
        "claude-3-5-sonnet", 300 * CREDIT, False)
    assert price_micros(PRICING, llm("openai", "GPT-4o", 1_000_000)) == 250 * CREDIT
    unknown = quote(PRICING, llm("openai", "gpt-unknown", 1_000_000, 1_000_000))
    assert unknown.default_price
    assert unknown.cost_micros == 400 * CREDIT


def test_storage_and_api_calls():
    assert price_micros(PRICING, Storage(Decimal("1000"))) == 14 * CREDIT
    assert price_micros(PRICING, ApiCalls("search", 10)) == 1 * CREDIT
    custom = PricingConfig.from_toml(
        '[llm.default]\ninput = 1\noutput = 1\n'
        '[api_calls]\ndefault = "0.5"\n[api_calls.endpoints]\nsearch = 3\n'
    )
    assert price_micros(custom, ApiCalls("search", 2)) == 6 * CREDIT
    assert price_micros(custom, ApiCalls("other", 3)) == 1_500_000


def test_min_charge_is_opt_in_and_leaves_free_events_free():
    assert price_micros(PRICING, llm("anthropic", "claude-3-5-sonnet", 100, 50)) == 105_000
    opted = PricingConfig.from_toml('min_charge_credits = 1\n[llm.default]\ninput = 100\n'
                                    'output = 300\n')
    small = quote(opted, llm("x", "y", 100))
    assert (small.cost_micros, small.min_charge_applied) == (CREDIT, True)
    assert price_micros(opted, llm("x", "y", 0, 0)) == 0
    assert price_micros(opted, llm("x", "y", 100_000)) == 10 * CREDIT


def test_fractional_costs_round_once_half_even():
    config = PricingConfig.from_toml(
        '[llm.default]\ninput = "0.5"\noutput = "1.5"\n'
        '[compute]\ncpu_hour = "0.0000005"\n'
    )
    assert price_micros(config, llm("x", "y", 1)) == 0  # 0.5 -> 0 (even)
    assert price_micros(config, llm("x", "y", 3)) == 2  # 1.5 -> 2 (even)
    assert price_micros(config, llm("x", "y", 1, 1)) == 2  # 0.5 + 1.5 = 2, one rounding
    assert price_micros(config, Compute(Decimal("5"), Decimal(0))) == 2  # 2.5 -> 2
    assert price_micros(config, Compute(Decimal("7"), Decimal(0))) == 4  # 3.5 -> 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[llm.default]\ninput = 1.5\noutput = 1\n", "floats are not exact"),
        ("[llm.default]\ninput = -1\noutput = 1\n", "negative"),
        ("[llm.default]\ninput = 1\n", "output is missing"),
        ("[llm.default]\ninput = 1\noutput = 1\n[llm.models.a]\nm = { input = 1, output = 1, "
         'long_context = "nope" }\n', "unknown rule"),
        ("[llm.default]\ninput = 1\noutput = 1\n[llm.aliases]\n\"a/b\" = \"a/c\"\n",
         "unknown model"),
        ("[llm.default]\ninput = 1\noutput = 1\n[compute]\ngpu_hour = 1\n", "unknown keys"),
        ("[compute]\ncpu_hour = 1\n", "llm.default is missing"),
        ("not toml = = 1", "not valid TOML"),
        ('[llm.default]\ninput = "abc"\noutput = 1\n', "not a decimal"),
    ],
)
def test_config_errors_name_the_key(text, message):
    with pytest.raises(PricingError, match=message):
        PricingConfig.from_toml(text)


TABLE_MODELS = [key for key, price in PRICING.models.items()
                if isinstance(price.input, int) and isinstance(price.output, int)
                and price.long_context is None]


@given(
    key=st.sampled_from(TABLE_MODELS),
    input_tokens=st.integers(0, 10**10),
    output_tokens=st.integers(0, 10**10),
)
def test_integer_rates_price_exactly(key, input_tokens, output_tokens):
    price = PRICING.models[key]
    metric = llm(key[0], key[1], input_tokens, output_tokens)
    assert price_micros(PRICING, metric) == input_tokens * price.input + (
        output_tokens * price.output
    )


quantities = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False,
                         allow_infinity=False)
metrics = st.one_of(
    st.builds(LlmTokens, st.sampled_from(["openai", "xai", "google", "nobody"]),
              st.sampled_from(["gpt-5.5", "grok-4.6", "gemini-2.5-pro", "x"]),
              st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**6),
              st.integers(0, 10**6)),
    st.builds(Compute, quantities, quantities),
    st.builds(ApiCalls, st.sampled_from(["default", "search"]), st.integers(0, 10**6)),
    st.builds(Storage, quantities),
)


@given(metric=metrics)
def test_price_and_quote_agree(metric):
    assert price_micros(PRICING, metric) == quote(PRICING, metric).cost_micros
    assert price_micros(PRICING, metric) >= 0
