"""Settings of the LiteLLM billing callback, read from the proxy's environment.

The proxy's `config.yaml` names the callback instance; everything else comes from environment
variables (they can be set in the same file under `environment_variables:`), so the secret
service key never has to be written into the config itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

# What the reservation assumes a call will produce when the request sets no max_tokens.
MAX_TOKENS_DEFAULT = 4096
# Long enough for a slow stream; an abandoned hold (proxy crash) is released by expiry.
RESERVATION_TTL_S_DEFAULT = 900
TIMEOUT_S_DEFAULT = 5.0
# How long a commit, release or late usage report keeps being retried while z-billing is away.
SETTLE_DEADLINE_S_DEFAULT = 120.0
USER_METADATA_KEY_DEFAULT = "zbilling_user_id"

E = TypeVar("E", bound=StrEnum)
N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A missing or malformed setting; the proxy does not start with it."""


class UserSource(StrEnum):
    END_USER = "end_user"  # the OpenAI `user` field / LiteLLM's end-user id
    KEY_METADATA = "key_metadata"  # a field of the virtual key's metadata


class OtherCalls(StrEnum):
    """What to do with call types the callback cannot price (embeddings, images, …)."""

    REFUSE = "refuse"
    ALLOW = "allow"


@dataclass(frozen=True)
class BillingSettings:
    url: str
    service_key: str
    user_source: UserSource = UserSource.END_USER
    user_metadata_key: str = USER_METADATA_KEY_DEFAULT
    fail_open: bool = False
    other_calls: OtherCalls = OtherCalls.REFUSE
    max_tokens_default: int = MAX_TOKENS_DEFAULT
    reservation_ttl_s: int = RESERVATION_TTL_S_DEFAULT
    timeout_s: float = TIMEOUT_S_DEFAULT
    settle_deadline_s: float = SETTLE_DEADLINE_S_DEFAULT
    # "host:port" for a Prometheus endpoint of the callback's own metrics (None: only the
    # process's default registry, which LiteLLM's own /metrics serves when it is enabled).
    metrics_listen: tuple[str, int] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BillingSettings:
        env = os.environ if env is None else env
        url = _required(env, "ZBILLING_URL").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise SettingsError("ZBILLING_URL must be an http:// or https:// URL")
        return cls(
            url=url,
            service_key=_required(env, "ZBILLING_SERVICE_KEY"),
            user_source=_choice(env, "ZBILLING_USER_SOURCE", UserSource, UserSource.END_USER),
            user_metadata_key=env.get("ZBILLING_USER_METADATA_KEY", USER_METADATA_KEY_DEFAULT),
            fail_open=_flag(env, "ZBILLING_FAIL_OPEN"),
            other_calls=_choice(env, "ZBILLING_OTHER_CALLS", OtherCalls, OtherCalls.REFUSE),
            max_tokens_default=_number(env, "ZBILLING_MAX_TOKENS_DEFAULT", int,
                                       MAX_TOKENS_DEFAULT, minimum=1),
            reservation_ttl_s=_number(env, "ZBILLING_RESERVATION_TTL_S", int,
                                      RESERVATION_TTL_S_DEFAULT, minimum=1),
            timeout_s=_number(env, "ZBILLING_TIMEOUT_S", float, TIMEOUT_S_DEFAULT, minimum=0.1),
            settle_deadline_s=_number(env, "ZBILLING_SETTLE_DEADLINE_S", float,
                                      SETTLE_DEADLINE_S_DEFAULT, minimum=0.0),
            metrics_listen=_listen(env.get("ZBILLING_METRICS_LISTEN", "")),
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is required by the z-billing LiteLLM callback")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "false").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _choice(env: Mapping[str, str], name: str, kind: type[E], default: E) -> E:
    value = env.get(name, default.value).strip().lower()
    try:
        return kind(value)
    except ValueError:
        options = ", ".join(member.value for member in kind)
        raise SettingsError(f"{name} must be one of {options}, not {value!r}") from None


def _number(env: Mapping[str, str], name: str, kind: type[N], default: N, *,
                             minimum: N) -> N:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {text!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


def _listen(text: str) -> tuple[str, int] | None:
    text = text.strip()
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"ZBILLING_METRICS_LISTEN must be host:port, not {text!r}")
    return host, int(port)
