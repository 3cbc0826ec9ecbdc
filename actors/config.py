"""Reading the pricing table: the operator's TOML file, or the one shipped in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from engine.pricing import PricingConfig


def default_pricing_text() -> str:
    return resources.files("engine").joinpath("pricing.toml").read_text(encoding="utf-8")


def load_pricing(path: Path | None = None) -> PricingConfig:
    text = path.read_text(encoding="utf-8") if path is not None else default_pricing_text()
    return PricingConfig.from_toml(text)
