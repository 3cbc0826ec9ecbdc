"""`zbilling serve --config`: named service keys with scopes and a pricing file; and
`zbilling credits add` over the HTTP API and over a stopped server's data directory."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from api.cli import main
from api.settings import SettingsError, load_settings
from tests.conftest import new_user
from tests.http_support import ADMIN_KEY, ROOT, SERVICE_KEY, Server, free_port, user_headers

pytestmark = pytest.mark.slow

GATEWAY_KEY = "gateway-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdef-admin"
REPORTS_KEY = "reports-key-0123456789abcdef"


def write_config(directory, *, keys: str) -> str:
    (directory / "prices.toml").write_text(
        "[llm.default]\ninput = 100\noutput = 300\n[compute]\ncpu_hour = 60\n")
    config = directory / "zbilling.toml"
    config.write_text('pricing_file = "prices.toml"\n' + keys)
    return str(config)


KEYS = f"""
[[service_keys]]
name = "gateway"
key_env = "GATEWAY_KEY"
scopes = ["usage"]

[[service_keys]]
name = "ops"
key = "{OPS_KEY}"
scopes = ["usage", "admin"]

[[service_keys]]
name = "reports"
key = "{REPORTS_KEY}"
scopes = ["admin"]

[lot_defaults.bonus]
category = "paid"
priority = 20
expires_after_days = 30
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("config")
    running = Server(directory / "data", args=("--config", write_config(directory, keys=KEYS)),
                     env={"GATEWAY_KEY": GATEWAY_KEY})
    yield running
    running.stop()


def compute_quote(server, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/usage/quote", headers={"X-API-Key": key},
                      json={"metric": {"type": "compute", "cpu_hours": 1}})


def test_named_keys_carry_their_scopes(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    for key in (GATEWAY_KEY, OPS_KEY, SERVICE_KEY):
        assert compute_quote(server, key).status_code == 200
    refused = compute_quote(server, REPORTS_KEY)  # admin only: no usage scope
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    grant = {"user_id": str(user), "amount_cents": 30}
    by_gateway = httpx.post(f"{server.url}/v1/credits/add", json=grant,
                            headers={"X-API-Key": GATEWAY_KEY})
    assert (by_gateway.status_code, by_gateway.json()["error"]["code"]) == (403, "forbidden")
    by_ops = httpx.post(f"{server.url}/v1/credits/add", json=grant, headers={"X-API-Key": OPS_KEY})
    assert by_ops.status_code == 200
    assert by_ops.json()["balance_cents"] == 30
    wrong = compute_quote(server, GATEWAY_KEY[:-1] + "x")
    assert wrong.status_code == 401


def test_the_pricing_file_prices_usage(server):
    assert compute_quote(server, GATEWAY_KEY).json()["cost_cents"] == 60  # shipped table: 6


def test_credits_add_over_http_grants_once_per_idempotency_key(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    runner = CliRunner(env={"ADMIN_API_KEY": ADMIN_KEY})
    command = ["credits", "add", str(user), "250", "--reason", "support", "--url", server.url,
               "--idempotency-key", "ticket-42"]
    first = runner.invoke(main, command)
    assert first.exit_code == 0, first.output
    assert "granted 250 credits (bonus)" in first.output
    assert "balance $2.50" in first.output
    again = runner.invoke(main, command)
    assert again.exit_code != 0
    assert "duplicate_event" in again.output
    balance = httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()
    assert balance["balance_cents"] == 250
    no_key = CliRunner(env={"ADMIN_API_KEY": ""}).invoke(
        main, ["credits", "add", str(user), "5", "--url", server.url])
    assert no_key.exit_code == 2
    assert "ADMIN_API_KEY" in no_key.output


def test_credits_add_on_a_stopped_servers_data_directory(tmp_path):
    data_dir = tmp_path / "data"
    user = new_user()
    running = Server(data_dir)
    httpx.get(f"{running.url}/v1/accounts/me", headers=user_headers(user))
    runner = CliRunner()
    locked = runner.invoke(main, ["credits", "add", str(user), "10", "--data-dir",
                                  str(data_dir)])
    assert locked.exit_code == 2
    assert "--url" in locked.output
    assert running.stop()[0] == 0
    granted = runner.invoke(main, ["credits", "add", str(user), "10", "--type", "adjustment",
                                   "--data-dir", str(data_dir)])
    assert granted.exit_code == 0, granted.output
    assert "balance $0.10" in granted.output
    stranger = runner.invoke(main, ["credits", "add", str(new_user()), "10", "--data-dir",
                                    str(data_dir)])
    assert stranger.exit_code == 2
    assert "account_not_found" in stranger.output
    bad_amount = runner.invoke(main, ["credits", "add", str(user), "0", "--data-dir",
                                      str(data_dir)])
    assert bad_amount.exit_code == 2


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('[[service_keys]]\nname = "a"\nkey = "short"\nscopes = ["usage"]\n',
         "at least 16 characters"),
        ('[[service_keys]]\nname = "a"\nkey = "0123456789abcdefgh"\nscopes = ["root"]\n',
         "scopes"),
        ('surprise = 1\n', "unknown field `surprise`"),
        ('[[service_keys]]\nname = "a"\nkey_env = "UNSET_KEY_ENV"\nscopes = ["usage"]\n',
         "$UNSET_KEY_ENV"),
        ('[lot_defaults.subscription_grant]\ncategory = "paid"\n',
         "the lots of 'subscription_grant' are not configurable"),
        ('[lot_defaults.bonus]\ncategory = "gold"\n', "lot_defaults"),
        ('[lot_defaults.usage]\ncategory = "paid"\n', "not configurable"),
    ],
)
def test_a_bad_config_file_stops_the_start_with_a_clear_message(tmp_path, keys, message):
    config = write_config(tmp_path, keys=keys)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("SERVICE_API_KEY", "UNSET_KEY_ENV")}
    finished = subprocess.run(
        [sys.executable, "-c", "from api.cli import main; main()", "serve", "--config", config,
         "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data")],
        check=False, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert message in finished.stderr
    assert "Traceback" not in finished.stderr


def test_configured_lot_defaults_shape_the_lots_a_source_opens(server):
    user = new_user()
    httpx.post(f"{server.url}/v1/accounts", headers=user_headers(user))
    for body in ({}, {"priority": 5}):
        granted = httpx.post(f"{server.url}/v1/credits/add", headers={"X-API-Key": OPS_KEY},
                             json={"user_id": str(user), "amount_cents": 100, **body})
        assert granted.status_code == 200, granted.text
    lots = httpx.get(f"{server.url}/v1/credits/lots", headers=user_headers(user)).json()
    # The request's priority over the configured defaults; the rest is the configuration's.
    assert [(lot["category"], lot["priority"]) for lot in lots["lots"]] == [("paid", 5),
                                                                             ("paid", 20)]
    as_of = datetime.datetime.fromisoformat(lots["as_of"])
    for lot in lots["lots"]:
        expires = datetime.datetime.fromisoformat(lot["expires_at"])
        assert abs((expires - as_of) - datetime.timedelta(days=30)) < datetime.timedelta(
            minutes=1)


def test_a_moved_clock_is_for_dev_mode_only(tmp_path):
    clock = tmp_path / "offset_ms"
    environ = {"SERVICE_API_KEY": "svc-key-0123456789abcdef", "ZBILLING_CLOCK_FILE": str(clock)}
    with pytest.raises(SettingsError, match="only with --dev"):
        load_settings(environ)
    assert load_settings(environ, dev=True).clock_file == clock
