"""Server settings: environment variables (names of the original service), overridden by
`zbilling serve` options."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from engine.lots import LotDefaults
from engine.plans import Plans

LISTEN_DEFAULT = "127.0.0.1:8080"
DATA_DIR_DEFAULT = "./data"
AUDIENCE_DEFAULT = "z-billing"
MAX_BODY_BYTES_DEFAULT = 1024 * 1024
SIGNUP_GRANT_CREDITS_DEFAULT = 5000
REFERRAL_GRANT_CREDITS_DEFAULT = 5000
REQUEST_TIMEOUT_S_DEFAULT = 30
REFILL_RETRY_BASE_S_DEFAULT = 30
WEBHOOK_RETRY_BASE_MS_DEFAULT = 10_000


class KeyScope(StrEnum):
    """What a service key may do (not to be confused with idempotency scopes in engine/)."""

    USAGE = "usage"  # usage, check, quote, reservations
    ADMIN = "admin"


class SettingsError(ValueError):
    """A setting is missing or wrong; the message says which."""


@dataclass(frozen=True)
class ServiceKey:
    name: str
    key: str
    scopes: frozenset[KeyScope]

    def __repr__(self) -> str:
        return f"ServiceKey(name={self.name!r}, scopes={sorted(self.scopes)})"


@dataclass(frozen=True)
class Settings:
    listen: str = LISTEN_DEFAULT
    data_dir: Path = Path(DATA_DIR_DEFAULT)
    dev: bool = False
    service_keys: tuple[ServiceKey, ...] = ()
    admin_key: str | None = field(default=None, repr=False)
    auth_base_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str = AUDIENCE_DEFAULT
    auth_hs256_secret: str | None = field(default=None, repr=False)
    max_body_bytes: int = MAX_BODY_BYTES_DEFAULT
    metrics_token: str | None = field(default=None, repr=False)
    lago_api_url: str | None = None
    lago_api_key: str | None = field(default=None, repr=False)
    lago_webhook_secret: str | None = field(default=None, repr=False)
    lago_public_key: str | None = field(default=None, repr=False)
    lago_webhook_issuer: str | None = None
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    # Where Stripe Checkout returns (`/checkout/success`, `/checkout/cancelled`); None: the
    # pages this server serves itself.
    frontend_url: str | None = None
    signup_grant_credits: int = SIGNUP_GRANT_CREDITS_DEFAULT
    referral_grant_credits: int = REFERRAL_GRANT_CREDITS_DEFAULT
    # Origins allowed by CORS; empty: no CORS headers. "*" mirrors any Origin.
    cors_origins: tuple[str, ...] = ()
    request_timeout_s: int = REQUEST_TIMEOUT_S_DEFAULT
    refill_retry_base_s: int = REFILL_RETRY_BASE_S_DEFAULT
    # The first retry of a failed webhook delivery waits about this long; each next twice.
    webhook_retry_base_ms: int = WEBHOOK_RETRY_BASE_MS_DEFAULT
    pricing_path: Path | None = None
    plans: Plans = field(default_factory=lambda: Plans.from_config(None))
    lot_defaults: LotDefaults = field(default_factory=LotDefaults)
    generated_keys: bool = False
    # Dev mode only: the engine's clock runs this many milliseconds (the file's text) ahead
    # of the system's, so tests move time without sleeping (ZBILLING_CLOCK_FILE).
    clock_file: Path | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"--listen must be HOST:PORT, got {self.listen!r}")
        return host, int(port)

    @property
    def checkout_return_url(self) -> str:
        """The base of the Checkout success and cancel pages."""
        return (self.frontend_url or f"http://{self.listen}").rstrip("/")

    @property
    def stripe_enabled(self) -> bool:
        return self.stripe_api_key is not None

    @property
    def lago_enabled(self) -> bool:
        return bool(self.lago_api_url and self.lago_api_key)

    def summary(self) -> list[str]:
        """What is on and off, for the start-up banner (never a secret)."""
        jwt = "JWKS at " + self.auth_base_url if self.auth_base_url else "off"
        return [
            f"listening on http://{self.listen}",
            f"data directory {self.data_dir.resolve()}",
            f"pricing: {self.pricing_path or 'the shipped table'}",
            f"service keys: {', '.join(key.name for key in self.service_keys) or 'none'}",
            f"admin key: {'set' if self.admin_key else 'not set'}",
            f"user JWTs: {jwt}; HS256 {'on' if self.auth_hs256_secret else 'off'}",
            f"dev mode (test tokens): {'on' if self.dev else 'off'}",
            *([f"clock: offset from {self.clock_file}"] if self.clock_file else []),
            f"Lago export: {'on, ' + str(self.lago_api_url) if self.lago_enabled else 'off'}",
            "Lago webhooks: " + ("on" if self.lago_webhook_secret or self.lago_public_key
                                 else "off (no LAGO_WEBHOOK_SECRET / LAGO_PUBLIC_KEY)"),
            f"Stripe: {self._stripe_summary()}",
        ]

    def _stripe_summary(self) -> str:
        if not self.stripe_enabled:
            return "off (payments answer 503 not_configured)"
        api = f", API at {self.stripe_api_base}" if self.stripe_api_base else ""
        hooks = "on" if self.stripe_webhook_secret else "off (no STRIPE_WEBHOOK_SECRET)"
        return f"on{api}; webhooks {hooks}"


def _int_env(environ: Mapping[str, str], name: str, default: int, *, zero_ok: bool = False
             ) -> int:
    value = environ.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < (0 if zero_ok else 1) or int(value) > 10**12:
        kind = "a non-negative" if zero_ok else "a positive"
        raise SettingsError(f"{name} must be {kind} integer (at most 10**12), got {value!r}")
    return int(value)


def _origins_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in
                    environ.get("CORS_ORIGINS", "").split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(f"CORS_ORIGINS: {origin!r} is not * or an http(s) origin")
    return origins


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    listen: str | None = None,
    data_dir: Path | None = None,
    dev: bool = False,
    service_keys: tuple[ServiceKey, ...] = (),
    pricing_path: Path | None = None,
    plans: Plans | None = None,
    lot_defaults: LotDefaults | None = None,
) -> Settings:
    """Settings from the environment, the command line and the config file (its named
    `service_keys` and `pricing_path`); refuses to start without a service key outside dev
    mode, and in dev mode generates the keys that are missing."""
    env = os.environ if environ is None else environ
    keys: list[ServiceKey] = []
    if env.get("SERVICE_API_KEY"):
        keys.append(ServiceKey("default", env["SERVICE_API_KEY"], frozenset({KeyScope.USAGE})))
    for key in service_keys:
        if any(known.name == key.name for known in keys):
            raise SettingsError(f"service key name {key.name!r} is used twice")
        keys.append(key)
    admin_key = env.get("ADMIN_API_KEY") or None
    generated = False
    if dev and not keys:
        keys.append(ServiceKey("dev", "dev-svc-" + secrets.token_urlsafe(24),
                               frozenset({KeyScope.USAGE})))
        generated = True
    if dev and admin_key is None:
        admin_key = "dev-admin-" + secrets.token_urlsafe(24)
        generated = True
    if not keys:
        raise SettingsError(
            "no service key: set SERVICE_API_KEY (or run with --dev to generate one)"
        )
    clock_file = Path(env["ZBILLING_CLOCK_FILE"]) if env.get("ZBILLING_CLOCK_FILE") else None
    if clock_file is not None and not dev:
        raise SettingsError("ZBILLING_CLOCK_FILE moves the clock: it works only with --dev")
    settings = Settings(
        listen=listen or env.get("LISTEN_ADDR", LISTEN_DEFAULT),
        data_dir=data_dir or Path(env.get("ZBILLING_DATA_DIR", DATA_DIR_DEFAULT)),
        dev=dev,
        service_keys=tuple(keys),
        admin_key=admin_key,
        auth_base_url=(env.get("AUTH_BASE_URL") or "").rstrip("/") or None,
        auth_issuer=env.get("AUTH_ISSUER") or None,
        auth_audience=env.get("AUTH_AUDIENCE", AUDIENCE_DEFAULT),
        auth_hs256_secret=env.get("AUTH_HS256_SECRET") or None,
        max_body_bytes=_int_env(env, "MAX_BODY_BYTES", MAX_BODY_BYTES_DEFAULT),
        metrics_token=env.get("METRICS_TOKEN") or None,
        lago_api_url=env.get("LAGO_API_URL") or None,
        lago_api_key=env.get("LAGO_API_KEY") or None,
        lago_webhook_secret=env.get("LAGO_WEBHOOK_SECRET") or None,
        lago_public_key=env.get("LAGO_PUBLIC_KEY") or None,
        lago_webhook_issuer=env.get("LAGO_WEBHOOK_ISSUER") or None,
        stripe_api_key=env.get("STRIPE_API_KEY") or None,
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
        stripe_api_base=(env.get("STRIPE_API_BASE") or "").rstrip("/") or None,
        frontend_url=env.get("FRONTEND_URL") or None,
        signup_grant_credits=_int_env(env, "SIGNUP_GRANT_CREDITS",
                                      SIGNUP_GRANT_CREDITS_DEFAULT, zero_ok=True),
        referral_grant_credits=_int_env(env, "REFERRAL_GRANT_CREDITS",
                                        REFERRAL_GRANT_CREDITS_DEFAULT, zero_ok=True),
        cors_origins=_origins_env(env),
        request_timeout_s=_int_env(env, "REQUEST_TIMEOUT_SECONDS", REQUEST_TIMEOUT_S_DEFAULT),
        refill_retry_base_s=_int_env(env, "AUTO_REFILL_RETRY_S", REFILL_RETRY_BASE_S_DEFAULT),
        webhook_retry_base_ms=_int_env(env, "WEBHOOK_RETRY_BASE_MS",
                                       WEBHOOK_RETRY_BASE_MS_DEFAULT),
        pricing_path=pricing_path,
        plans=plans or Plans.from_config(None),
        lot_defaults=lot_defaults or LotDefaults(),
        generated_keys=generated,
        clock_file=clock_file,
    )
    settings.host_port  # noqa: B018 - validate early, with a clear message
    return settings
