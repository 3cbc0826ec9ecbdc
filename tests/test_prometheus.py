"""Prometheus for real: Debian's `prometheus` server scrapes a real `zbilling serve` (Stripe,
Lago export and Lago webhooks on, against the fake Stripe and fake Lago) on 127.0.0.1 every
second, with integrations/prometheus/alerts.yml loaded. After some debits, holds, webhooks and
a declined auto-refill, the counters are read back through Prometheus's query API, and every
expression of the Grafana dashboard and of the alerting rules must return a series.

CI installs the `prometheus` package (.ci/run); where its binaries are missing the module is
skipped, saying so."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from api.client import BillingClient, DuplicateEvent, InsufficientCredits
from engine.pricing import PricingConfig
from tests.fake_lago import FakeLago
from tests.fake_stripe import API_KEY, PM_DECLINED, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, ROOT, SERVICE_KEY, Server
from tests.prometheus_support import DASHBOARD, PROMETHEUS, PROMTOOL, RULES, Prometheus
from tests.test_stripe import REFILL, purchase, spend

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                       reason="Debian's prometheus package (prometheus, promtool) is not "
                              "installed here; .ci/run installs it"),
]

PRICING = ROOT / "engine" / "pricing.toml"
SERIES_TIMEOUT_S = 60
# Grafana fills $__rate_interval in; with a 1 s scrape 30 s holds plenty of samples.
RATE_INTERVAL = "30s"
LAGO_HMAC_KEY = "lago-hmac-key"
# An alert is "<quantity> <comparison> <threshold>" (alerts.yml says so); the quantity is what
# must exist. A rule not written that way fails the test rather than being skipped.
ALERT_FORM = re.compile(r"^(?P<quantity>.+?)\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[-+]?\d+)?$",
                        re.DOTALL)
METRIC_NAME = re.compile(r"\b(zbilling_[a-z0-9_]+|up)\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_quantities() -> dict[str, str]:
    quantities = {}
    for rule in alert_rules():
        match = ALERT_FORM.match(" ".join(rule["expr"].split()))
        assert match, f"{rule['alert']}: write the rule as <quantity> <comparison> <threshold>"
        quantities[rule["alert"]] = match["quantity"]
    return quantities


class Scenario:
    """What was driven through the server, to compare Prometheus's counters with."""

    def __init__(self) -> None:
        self.debits = 0
        self.debited_by_model: dict[str, int] = {}
        self.refused = 0


def drive(server: Server, stripe: FakeStripe) -> Scenario:
    done = Scenario()
    user = uuid.uuid4()
    with BillingClient(server.url, bearer_token=f"test-token:{user}") as own:
        own.get_account()
    with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
        admin.add_credits(user, 100_000, reason="prometheus test")
    with BillingClient(server.url, service_key=SERVICE_KEY) as billing:
        for index, (provider, model, label) in enumerate([
                ("anthropic", "claude-3-haiku", "anthropic/claude-3-haiku"),
                ("anthropic", "claude-3-haiku-20240307", "anthropic/claude-3-haiku"),
                ("openai", "gpt-4o", "openai/gpt-4o"),
                ("nobody", "a-model-nobody-prices", "other")] * 3):
            result = billing.report_usage(user, event_id=f"p-{index}", metric={
                "type": "llm_tokens", "provider": provider, "model": model,
                "input_tokens": 200_000, "output_tokens": 20_000})
            done.debits += 1
            done.debited_by_model[label] = done.debited_by_model.get(label, 0) + result.cost_cents
        with pytest.raises(DuplicateEvent):  # a repeat: answered with the original, no debit
            billing.report_usage(user, event_id="p-0", metric={
                "type": "llm_tokens", "provider": "anthropic", "model": "claude-3-haiku",
                "input_tokens": 200_000, "output_tokens": 20_000})
        billing.report_usage(user, event_id="p-compute", metric={
            "type": "compute", "cpu_hours": "2.5", "memory_gb_hours": "1"})
        done.debits += 1
        held = billing.reserve(user, amount_cents=50)
        billing.commit_reservation(held.reservation_id, cost_cents=20)
        done.debits += 1
        released = billing.reserve(user, amount_cents=10)
        billing.release_reservation(released.reservation_id)
        billing.reserve(user, amount_cents=30)  # left open: a balance hold
        broke = uuid.uuid4()
        with BillingClient(server.url, bearer_token=f"test-token:{broke}") as own:
            own.get_account()
        with pytest.raises(InsufficientCredits):
            billing.report_usage(broke, event_id="p-broke", cost_cents=5)
        done.refused += 1
    # Stripe: a purchase (webhook applied), a forged delivery (refused), a declined refill.
    buyer = uuid.uuid4()
    reply, event = purchase(server, stripe, buyer, 10)
    assert stripe.deliver(event, signature="t=1,v1=forged").status_code == 400
    customer = stripe.sessions[reply["session_id"]]["customer"]
    stripe.set_default_payment_method(customer, PM_DECLINED)
    saved = httpx.post(f"{server.url}/v1/credits/auto-refill",
                       headers={"Authorization": f"Bearer test-token:{buyer}"}, json=REFILL)
    assert saved.status_code == 200
    assert spend(server, buyer, 600, "below-trigger").status_code == 200
    done.debits += 1
    # Lago: a delivery with a wrong signature is refused.
    lago = httpx.post(f"{server.url}/webhooks/lago", content=b'{"webhook_type": "x"}',
                      headers={"X-Lago-Signature": "forged", "X-Lago-Signature-Algorithm": "hmac",
                               "Content-Type": "application/json"})
    assert lago.status_code in {400, 401}, lago.text
    return done


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Prometheus,
                                                                       Scenario]]:
    tmp = tmp_path_factory.mktemp("prometheus")
    stripe = FakeStripe()
    stripe.start()
    lago = FakeLago(validate=False)
    server = Server(tmp / "data", env={
        "STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe.url, "AUTO_REFILL_RETRY_S": "1",
        "LAGO_API_URL": lago.url, "LAGO_API_KEY": lago.api_key,
        "LAGO_WEBHOOK_SECRET": LAGO_HMAC_KEY})
    stripe.webhook_url = f"{server.url}/webhooks/stripe"
    prometheus = None
    try:
        prometheus = Prometheus(tmp / "prometheus", f"127.0.0.1:{server.port}")
        yield server, prometheus, drive(server, stripe)
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()
        lago.stop()
        stripe.close()


def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)],
                             check=False, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_every_alert_has_a_runbook_and_the_asked_for_alerts_exist() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["annotations"]["runbook"].strip(), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
    watched = " ".join(rule["expr"] for rule in rules.values())
    for metric in ("zbilling_engine_stopped", "zbilling_journal_commit_seconds_bucket",
                   "zbilling_lago_export_lag_seconds", "zbilling_lago_dead_letters_total",
                   "zbilling_stripe_webhooks_total", "zbilling_lago_webhooks_total",
                   "zbilling_auto_refill_attempts_total", 'status=~"5.."'):
        assert metric in watched


def test_the_metrics_follow_prometheus_naming(stack) -> None:
    server, _, _ = stack
    exposition = httpx.get(f"{server.url}/metrics").text
    linted = subprocess.run([str(PROMTOOL), "check", "metrics"], input=exposition,
                            check=False, capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    families = {line.split()[2]: line.split()[3] for line in exposition.splitlines()
                if line.startswith("# TYPE ")}
    for name, kind in families.items():
        assert name.startswith("zbilling_"), name
        assert name.endswith("_total") == (kind == "counter"), (name, kind)
    labels = set(re.findall(r"[{,]([a-z_]+)=\"", exposition))
    assert not labels & {"user", "user_id", "account", "event_id", "reservation_id"}, labels
    # Model names are bounded by the price table; everything else is "other".
    table = PricingConfig.from_toml(PRICING.read_text())
    allowed = {f"{provider}/{model}" for provider, model in table.models} | {"other", "none"}
    models = set(re.findall(r'model="([^"]*)"', exposition))
    assert models and models <= allowed, models - allowed


def test_the_readme_names_only_exported_metrics(stack) -> None:
    server, _, _ = stack
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Prometheus and Grafana"):text.index("## Architecture")]
    named = set(re.findall(r"`(zbilling_[a-z_]+)(?=[`{])", section))
    exposition = httpx.get(f"{server.url}/metrics").text
    families = {line.split()[2] for line in exposition.splitlines()
                if line.startswith("# TYPE ")}
    assert len(named) > 20
    assert named <= families, named - families


def test_counters_read_back_through_prometheus(stack) -> None:
    _, prometheus, done = stack

    def settled() -> bool:
        try:
            return prometheus.value("sum(zbilling_usage_events_total)") == done.debits
        except ValueError:
            return False

    wait(settled, "Prometheus to scrape the debits")
    for label, credits in done.debited_by_model.items():
        assert prometheus.value(
            f'sum(zbilling_usage_credits_total{{type="llm_tokens",model="{label}"}})') == credits
    assert prometheus.value("sum(zbilling_insufficient_credits_total)") == done.refused
    assert prometheus.value("sum(zbilling_duplicate_events_total)") == 1
    assert prometheus.value("sum(zbilling_open_holds)") == 1
    assert prometheus.value("sum(zbilling_held_credits)") == 30
    assert prometheus.value('zbilling_stripe_webhooks_total{outcome="refused"}') == 1
    # The ledger's usage credits are the sum of the per-model ones (carry rule included).
    assert prometheus.value('sum(zbilling_ledger_credits_total{type="usage"})') == \
        prometheus.value("sum(zbilling_usage_credits_total)")


def test_every_dashboard_and_alert_expression_returns_a_series(stack) -> None:
    _, prometheus, _ = stack
    expressions = {f"dashboard: {expr}": expr for expr in dashboard_expressions()}
    expressions |= {f"alert {name}: {expr}": expr for name, expr in alert_quantities().items()}
    assert len(expressions) > 30

    def missing() -> list[str]:
        return [label for label, expr in expressions.items() if not prometheus.query(expr)]

    # Rates need two scrapes after the last event; the refill decline comes a moment later.
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while (absent := missing()) and time.monotonic() < deadline:
        time.sleep(1)
    assert absent == []
    # Every metric an expression names is one z-billing exports (an `or vector(0)` must not
    # hide a misspelt name).
    names = set(METRIC_NAME.findall(" ".join(expressions.values())))
    exported = set(httpx.get(f"{prometheus.url}/api/v1/label/__name__/values").json()["data"])
    assert names <= exported, names - exported


def test_prometheus_loaded_every_rule_healthy(stack) -> None:
    _, prometheus, _ = stack
    never = "0001-01-01T00:00:00Z"  # Prometheus's lastEvaluation of a rule not evaluated yet

    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(rule.get("lastEvaluation", never) != never for rule in rules)
        return rules if done else None

    rules = wait(evaluated, "the rules to be evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]


def wait(condition: Any, what: str, timeout_s: float = SERIES_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")
