"""The `--config` TOML file: named service keys with scopes, and the pricing table to use.

    pricing_file = "prices.toml"       # relative to this file; default: the shipped table

    [[service_keys]]
    name = "gateway"
    key_env = "GATEWAY_API_KEY"        # the secret stays in the environment (or: key = "...")
    scopes = ["usage"]                 # "usage", "admin"

    [lot_defaults.bonus]               # the lots a source opens (engine/lots.py LOT_DEFAULTS)
    category = "promotional"
    priority = 20
    expires_after_days = 90

Decoded with msgspec into typed values: a misspelt setting is an error, not a silent default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from api.settings import KeyScope, ServiceKey, SettingsError
from engine.errors import InvalidInput
from engine.lots import LotDefaults
from engine.plans import Plans

SERVICE_KEY_LENGTH_MIN = 16


class ServiceKeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    scopes: Annotated[list[KeyScope], msgspec.Meta(min_length=1)]
    key: str | None = None
    key_env: str | None = None


class ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pricing_file: str | None = None
    service_keys: list[ServiceKeyEntry] = msgspec.field(default_factory=list)
    plans: dict[str, Any] = msgspec.field(default_factory=dict)
    lot_defaults: dict[str, Any] = msgspec.field(default_factory=dict)


@dataclass(frozen=True)
class ConfigValues:
    service_keys: tuple[ServiceKey, ...]
    pricing_path: Path | None
    plans: Plans
    lot_defaults: LotDefaults


def read_config_file(path: Path, environ: Mapping[str, str] | None = None) -> ConfigValues:
    """The service keys, the pricing file path and the plans the config file names."""
    env = os.environ if environ is None else environ
    try:
        config = msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), ConfigFile)
    except OSError as error:
        raise SettingsError(f"cannot read --config {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise SettingsError(f"--config {path}: {error}") from None
    keys: list[ServiceKey] = []
    for entry in config.service_keys:
        if (entry.key is None) == (entry.key_env is None):
            raise SettingsError(f"--config {path}: service key {entry.name!r} needs exactly "
                                "one of key and key_env")
        secret = entry.key if entry.key is not None else env.get(entry.key_env or "", "")
        if len(secret) < SERVICE_KEY_LENGTH_MIN:
            source = f"${entry.key_env}" if entry.key_env else "key"
            raise SettingsError(f"--config {path}: service key {entry.name!r} ({source}) must "
                                f"be at least {SERVICE_KEY_LENGTH_MIN} characters")
        if any(key.name == entry.name for key in keys):
            raise SettingsError(f"--config {path}: service key {entry.name!r} appears twice")
        keys.append(ServiceKey(entry.name, secret, frozenset(entry.scopes)))
    pricing = (path.parent / config.pricing_file) if config.pricing_file else None
    if pricing is not None and not pricing.is_file():
        raise SettingsError(f"--config {path}: pricing_file {pricing} does not exist")
    try:
        plans = Plans.from_config(config.plans)
        lot_defaults = LotDefaults.from_config(config.lot_defaults)
    except InvalidInput as error:
        raise SettingsError(f"--config {path}: {error.message}") from None
    return ConfigValues(tuple(keys), pricing, plans, lot_defaults)
