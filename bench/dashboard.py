"""`python -m bench dashboard`: the Grafana dashboard's panels drawn from real data.

Runs `zbilling serve` (Stripe and Lago on, against the tests' fake Stripe and fake Lago on
127.0.0.1), a real Prometheus scraping it every second with the shipped rules, and a load of
debits over several models, reservations, refusals, purchases and a declined auto-refill.
Then every target of integrations/prometheus/grafana-dashboard.json is read back with
Prometheus's range query and drawn, panel by panel, into `dashboard.png` (matplotlib).
Needs Debian's `prometheus` package.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from api.client import BillingClient, InsufficientCredits
from bench.common import Options
from tests.fake_lago import FakeLago
from tests.fake_stripe import API_KEY, PM_DECLINED, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, ROOT, SERVICE_KEY, free_port
from tests.prometheus_support import DASHBOARD, Prometheus

LOAD_S = 90
LOAD_S_QUICK = 25
WORKERS = 4
MODELS = [("anthropic", "claude-3-haiku"), ("anthropic", "claude-sonnet-5"),
          ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("google", "gemini-2.5-flash"),
          ("someone", "unpriced-model")]
STEP_S = 2
RATE_INTERVAL = "10s"


class _Server:
    """`zbilling serve --dev` with `env`, logging to a file (a pipe nobody reads would fill
    and stall it under load); stopped by its own PID."""

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (work_dir / "server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "serve", "--dev",
             "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(work_dir / "data")],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "SERVICE_API_KEY": SERVICE_KEY, "ADMIN_API_KEY": ADMIN_KEY, **env})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("zbilling serve did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


def _user(server: _Server, credits: int) -> uuid.UUID:
    user = uuid.uuid4()
    with BillingClient(server.url, bearer_token=f"test-token:{user}") as own:
        own.get_account()
    if credits:
        with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
            admin.add_credits(user, credits, reason="dashboard load")
    return user


def _worker(server: _Server, until: float, seed: int) -> int:
    """Debits at a varying rate until `until`; bounded by time and by MAX_CALLS."""
    rng = random.Random(seed)
    users = [_user(server, 10_000_000) for _ in range(5)]
    broke = _user(server, 0)
    calls = 0
    max_calls = 200_000
    with BillingClient(server.url, service_key=SERVICE_KEY) as billing:
        while time.monotonic() < until and calls < max_calls:
            calls += 1
            phase = (time.monotonic() % 30) / 30  # a slow wave, so the rates move
            time.sleep(rng.uniform(0, 0.004 + 0.02 * phase))
            user = rng.choice(users)
            provider, model = rng.choice(MODELS)
            metric = {"type": "llm_tokens", "provider": provider, "model": model,
                      "input_tokens": rng.randint(1_000, 60_000),
                      "output_tokens": rng.randint(100, 8_000)}
            roll = rng.random()
            if roll < 0.1:
                held = billing.reserve(user, metric=metric)
                if rng.random() < 0.8:
                    billing.commit_reservation(held.reservation_id, metric=metric)
                else:
                    billing.release_reservation(held.reservation_id)
            elif roll < 0.13:
                with contextlib.suppress(InsufficientCredits):  # refused on purpose
                    billing.report_usage(broke, metric=metric)
            elif roll < 0.15:
                billing.report_usage(user, metric={"type": "compute", "cpu_hours": "0.5",
                                                   "memory_gb_hours": "2"})
            else:
                billing.report_usage(user, metric=metric)
    return calls


def _payments(server: _Server, stripe: FakeStripe) -> None:
    """A few purchases (webhooks applied), a forged delivery, a declined auto-refill."""
    for usd in (10, 25, 50):
        buyer = _user(server, 0)
        answer = httpx.post(f"{server.url}/v1/credits/purchase", json={"amount_usd": usd},
                            headers={"Authorization": f"Bearer test-token:{buyer}"})
        event = stripe.complete_session(answer.json()["session_id"])
        stripe.deliver(event)
    stripe.deliver(event, signature="t=1,v1=forged")
    customer = stripe.sessions[answer.json()["session_id"]]["customer"]
    stripe.set_default_payment_method(customer, PM_DECLINED)
    httpx.post(f"{server.url}/v1/credits/auto-refill",
               headers={"Authorization": f"Bearer test-token:{buyer}"},
               json={"enabled": True, "trigger_below_cents": 5_000, "refill_amount_cents": 2_500})
    httpx.post(f"{server.url}/v1/usage", headers={"X-API-Key": SERVICE_KEY},
               json={"event_id": str(uuid.uuid4()), "user_id": str(buyer), "cost_cents": 100})
    httpx.post(f"{server.url}/webhooks/lago", content=b"{}",
               headers={"X-Lago-Signature": "forged", "X-Lago-Signature-Algorithm": "hmac"})


def _draw(prometheus: Prometheus, start: float, end: float, out: Path) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    columns = 4
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.4 * rows))
    for axis, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expression = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for series in prometheus.query_range(expression, start, end, STEP_S):
                labels = series["metric"]
                legend = target["legendFormat"]
                for key, value in labels.items():
                    legend = legend.replace("{{" + key + "}}", value)
                times = [float(point[0]) - start for point in series["values"]]
                values = [float(point[1]) for point in series["values"]]
                axis.plot(times, values, linewidth=1, label=legend)
        axis.set_title(panel["title"], fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_xlabel("seconds", fontsize=7)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        axis.set_ylabel({"s": "seconds", "reqps": "per second"}.get(unit, ""), fontsize=7)
        if axis.get_lines():
            axis.legend(fontsize=6, loc="upper left")
        else:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle("z-billing dashboard (integrations/prometheus/grafana-dashboard.json), "
                    "rendered from a live Prometheus", fontsize=12)
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)


def run(options: Options) -> Path:
    load_s = LOAD_S_QUICK if options.quick else LOAD_S
    options.out.mkdir(parents=True, exist_ok=True)
    out = options.out / "dashboard.png"
    with tempfile.TemporaryDirectory(prefix="zbilling-dashboard-") as work:
        work_dir = Path(work)
        stripe = FakeStripe()
        stripe.start()
        lago = FakeLago(validate=False)
        server = _Server(work_dir, env={
            "STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": stripe.url, "AUTO_REFILL_RETRY_S": "2",
            "LAGO_API_URL": lago.url, "LAGO_API_KEY": lago.api_key,
            "LAGO_WEBHOOK_SECRET": "lago-hmac-key"})
        stripe.webhook_url = f"{server.url}/webhooks/stripe"
        prometheus: Prometheus | None = None
        try:
            prometheus = Prometheus(work_dir / "prometheus", f"127.0.0.1:{server.port}")
            start = time.time()
            until = time.monotonic() + load_s
            with ThreadPoolExecutor(WORKERS) as pool:
                loads = [pool.submit(_worker, server, until, seed) for seed in range(WORKERS)]
                time.sleep(load_s / 3)
                _payments(server, stripe)
                calls = sum(load.result() for load in loads)
            time.sleep(3)  # two more scrapes after the last debit
            _draw(prometheus, start, time.time(), out)
            print(f"dashboard: {calls} calls over {load_s} s", flush=True)
        finally:
            if prometheus is not None:
                prometheus.stop()
            server.stop()
            lago.stop()
            stripe.close()
    return out

