"""The LiteLLM callback's parts that need no running proxy: settings, the usage split on
LiteLLM's own Usage objects, and where the z-billing user comes from."""

from __future__ import annotations

import os
import uuid

# Before LiteLLM is imported: otherwise its import fetches a price map from the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest
from litellm.proxy._types import ProxyException, UserAPIKeyAuth
from litellm.types.utils import Usage
from prometheus_client import CollectorRegistry

from integrations.litellm.callback import ZBillingCallback
from integrations.litellm.settings import (
    BillingSettings,
    OtherCalls,
    SettingsError,
    UserSource,
)
from integrations.litellm.usage import Tokens, split_model, tokens_from_usage

ENV = {"ZBILLING_URL": "http://127.0.0.1:8080/", "ZBILLING_SERVICE_KEY": "svc-key-0123456789"}


def test_settings_defaults_are_fail_closed_and_refuse_unpriced_calls():
    settings = BillingSettings.from_env(ENV)
    assert settings.url == "http://127.0.0.1:8080"
    assert settings.fail_open is False
    assert settings.other_calls is OtherCalls.REFUSE
    assert settings.user_source is UserSource.END_USER
    assert settings.metrics_listen is None


@pytest.mark.parametrize(("env", "message"), [
    ({}, "ZBILLING_URL is required"),
    ({"ZBILLING_URL": "127.0.0.1:8080", "ZBILLING_SERVICE_KEY": "k"}, "http:// or https://"),
    ({**ENV, "ZBILLING_FAIL_OPEN": "maybe"}, "true or false"),
    ({**ENV, "ZBILLING_USER_SOURCE": "header"}, "end_user, key_metadata"),
    ({**ENV, "ZBILLING_MAX_TOKENS_DEFAULT": "0"}, "at least 1"),
    ({**ENV, "ZBILLING_METRICS_LISTEN": "9464"}, "host:port"),
])
def test_a_bad_setting_names_itself(env, message):
    with pytest.raises(SettingsError, match=message):
        BillingSettings.from_env(env)


def test_openai_usage_with_cache_details_splits_the_prompt():
    usage = Usage(prompt_tokens=1000, completion_tokens=50, total_tokens=1050,
                  prompt_tokens_details={"cached_tokens": 600, "cache_creation_tokens": 300})
    assert tokens_from_usage(usage) == Tokens(input=100, output=50, cached_read=600,
                                              cache_write=300)


def test_anthropic_usage_fields_are_read_too():
    usage = Usage(prompt_tokens=500, completion_tokens=20, total_tokens=520,
                  cache_read_input_tokens=200, cache_creation_input_tokens=100)
    assert tokens_from_usage(usage) == Tokens(input=200, output=20, cached_read=200,
                                              cache_write=100)


def test_usage_without_details_is_all_uncached_input():
    usage = Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30)
    assert tokens_from_usage(usage) == Tokens(input=10, output=20)
    assert tokens_from_usage(None) == Tokens()


def test_model_names_split_into_provider_and_model():
    assert split_model("anthropic/claude-3-haiku-20240307", None) == (
        "anthropic", "claude-3-haiku-20240307")
    assert split_model("claude-3-haiku-20240307", "anthropic") == (
        "anthropic", "claude-3-haiku-20240307")
    assert split_model("gpt-4o-mini", None) == ("unknown", "gpt-4o-mini")


def _callback(**env: str) -> ZBillingCallback:
    return ZBillingCallback(BillingSettings.from_env({**ENV, **env}),
                            registry=CollectorRegistry())


def test_the_user_comes_from_the_end_user_id_or_the_request_user_field():
    user = uuid.uuid4()
    callback = _callback()
    assert callback._user_of(UserAPIKeyAuth(end_user_id=str(user)), {}) == user
    assert callback._user_of(UserAPIKeyAuth(), {"user": str(user)}) == user


def test_the_user_can_come_from_the_keys_metadata():
    user = uuid.uuid4()
    callback = _callback(ZBILLING_USER_SOURCE="key_metadata",
                         ZBILLING_USER_METADATA_KEY="billing_user")
    auth = UserAPIKeyAuth(metadata={"billing_user": str(user)}, end_user_id=str(uuid.uuid4()))
    assert callback._user_of(auth, {"user": "ignored"}) == user


def test_a_missing_or_malformed_user_is_refused_with_400():
    callback = _callback()
    for auth, data in ((UserAPIKeyAuth(), {}), (UserAPIKeyAuth(), {"user": "alice"})):
        with pytest.raises(ProxyException) as refused:
            callback._user_of(auth, data)
        assert refused.value.code == "400"
        assert "UUID" in refused.value.message
    assert callback.metrics.calls.labels("no_user")._value.get() == 2
