"""The LiteLLM integration end to end: real LiteLLM proxy processes on 127.0.0.1 (mock model
responses, no network) with our callback, a real `zbilling serve`, and our client.

Two proxies start once for the module (LiteLLM takes seconds to import): one fail-closed (the
default), one fail-open. The last test stops z-billing, so it runs last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from api.client import BillingClient, Transaction
from tests.fake_openai import CHUNKS, FakeOpenAI
from tests.http_support import ADMIN_KEY, ROOT, SERVICE_KEY, Server, free_port

pytestmark = pytest.mark.slow
T = TypeVar("T")

MASTER_KEY = "sk-litellm-master-0123456789"
PROXY_START_TIMEOUT_S = 120
PROXY_STOP_TIMEOUT_S = 15
SETTLE_TIMEOUT_S = 30
# LiteLLM reads these at start-up; each keeps it from fetching a file from the internet.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    # Anything else that tries the internet meets a closed port on this machine instead.
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
}
# The usage the "haiku" mock reports for every call: cache reads and writes included, large
# enough that each call costs whole credits.
HAIKU_USAGE = {"prompt_tokens": 300_000, "completion_tokens": 40_000, "total_tokens": 340_000,
               "prompt_tokens_details": {"cached_tokens": 120_000,
                                         "cache_creation_tokens": 60_000}}


def readme_proxy_config() -> dict[str, Any]:
    """The proxy configuration the README's LiteLLM section gives operators."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## LiteLLM proxy"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    config = yaml.safe_load(block[:block.index("```")])
    assert config["litellm_settings"]["callbacks"] == "integrations.litellm.proxy.zbilling"
    return config


def _config(upstream: FakeOpenAI, billing_url: str) -> dict[str, Any]:
    config = readme_proxy_config()
    config["environment_variables"]["ZBILLING_URL"] = billing_url
    return {
        **config,
        "model_list": [
            {"model_name": "haiku", "litellm_params": {
                "model": "anthropic/claude-3-haiku-20240307", "api_key": "sk-unused",
                "mock_response": {"choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "a cached answer"}}], "usage": HAIKU_USAGE}}},
            {"model_name": "mini", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_key": "sk-unused",
                "mock_response": "Hello from the mock model."}},
            {"model_name": "broken", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_key": "sk-unused",
                "mock_response": "litellm.InternalServerError"}},
            {"model_name": "slow", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_key": "sk-unused",
                "api_base": upstream.url}},
            {"model_name": "breaks", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_key": "sk-unused",
                "api_base": upstream.url, "extra_headers": {"x-fake-cut-after": "7"}}},
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }


class Proxy:
    """A `litellm --config` process on 127.0.0.1, stopped by its own PID."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "proxy.log"
        environment = {**os.environ, **OFFLINE_ENV, **env,
                       "ZBILLING_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}"}
        executable = Path(sys.executable).parent / "litellm"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [str(executable), "--config", "config.yaml", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PROXY_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"litellm exited: {self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"litellm did not start: {self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=PROXY_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=PROXY_STOP_TIMEOUT_S)

    def chat(self, model: str, user: object | None, *, call_id: str | None = None,
             **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        if call_id is not None:
            headers["x-litellm-call-id"] = call_id
        payload: dict[str, Any] = {"model": model, "messages": [
            {"role": "user", "content": "Say something short."}], **body}
        if user is not None:
            payload["user"] = str(user)
        return httpx.post(f"{self.url}/v1/chat/completions", json=payload, headers=headers,
                          timeout=30)

    def counter(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and line.split("}")[0] == f"{name}{{{wanted}":
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name}{{{wanted}}} not exported")


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.billing_port = free_port()
        self.billing = self.start_billing()
        self.upstream = FakeOpenAI()
        # The README's config reads the key from GATEWAY_API_KEY.
        common = {"GATEWAY_API_KEY": SERVICE_KEY, "ZBILLING_SETTLE_DEADLINE_S": "60",
                  "ZBILLING_MAX_TOKENS_DEFAULT": "1000"}
        config = _config(self.upstream, self.billing.url)
        # Both start at once: their imports overlap on the two cores.
        self.closed = Proxy(tmp / "closed", config, common)
        self.open = Proxy(tmp / "open", config, {**common, "ZBILLING_FAIL_OPEN": "true"})
        self.closed.wait_ready()
        self.open.wait_ready()

    def start_billing(self) -> Server:
        return Server(self.tmp / "billing", port=self.billing_port)

    def close(self) -> None:
        for proxy in (self.closed, self.open):
            proxy.stop()
        self.upstream.close()
        if self.billing.process.poll() is None:
            self.billing.stop()

    def service(self) -> BillingClient:
        return BillingClient(self.billing.url, service_key=SERVICE_KEY)

    def funded_user(self, credits: int) -> uuid.UUID:
        user = uuid.uuid4()
        with BillingClient(self.billing.url, bearer_token=f"test-token:{user}") as own:
            own.get_account()  # created on first call, with 0 credits
        if credits:
            with BillingClient(self.billing.url, admin_key=ADMIN_KEY) as admin:
                admin.add_credits(user, credits, reason="litellm test")
        return user

    def usage_entries(self, user: uuid.UUID) -> list[Transaction]:
        with BillingClient(self.billing.url, bearer_token=f"test-token:{user}") as own:
            page = own.transactions(limit=100)
        return [entry for entry in page.transactions if entry.type == "usage"]

    def balance(self, user: uuid.UUID) -> tuple[int, int]:
        with BillingClient(self.billing.url, bearer_token=f"test-token:{user}") as own:
            balance = own.balance()
        return balance.balance_cents, balance.held_cents


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("litellm"))
    try:
        yield built
    finally:
        built.close()


def wait_for(probe: Callable[[], T | None], what: str,
                timeout_s: float = SETTLE_TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def quoted_micros(billing: BillingClient, provider: str, model: str,
                  tokens: dict[str, int]) -> int:
    return billing.quote({"type": "llm_tokens", "provider": provider, "model": model,
                          **tokens}).cost_micros


def usage_tokens(usage: dict[str, Any]) -> dict[str, int]:
    """What the callback must have charged for LiteLLM's usage object: z-billing's
    input_tokens are the uncached part of the prompt."""
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_creation_tokens") or details.get("cache_write_tokens") or 0
    return {"input_tokens": usage["prompt_tokens"] - cached - written,
            "output_tokens": usage["completion_tokens"], "cached_input_tokens": cached,
            "cache_write_tokens": written}


def stream_usage(response: httpx.Response) -> dict[str, Any]:
    usage = None
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None, response.text[-500:]
    return usage


def test_each_call_is_debited_exactly_what_litellm_reports(stack: Stack) -> None:
    user = stack.funded_user(5_000)
    calls = 4
    reported: list[tuple[str, str, dict[str, int]]] = []
    for _ in range(calls):
        response = stack.closed.chat("haiku", user)
        assert response.status_code == 200, response.text
        reported.append(("anthropic", "claude-3-haiku-20240307",
                         usage_tokens(response.json()["usage"])))
    streamed = stack.closed.chat("mini", user, stream=True,
                                 stream_options={"include_usage": True})
    assert streamed.status_code == 200, streamed.text
    reported.append(("openai", "gpt-4o-mini", usage_tokens(stream_usage(streamed))))

    entries = wait_for(lambda: (found if len(found := stack.usage_entries(user)) >= calls + 1
                                else None), "the five commits")
    assert len(entries) == calls + 1  # one debit per call, none twice
    with stack.service() as billing:
        expected = sorted(quoted_micros(billing, *call) for call in reported)
    assert sorted(entry.metadata["cost_micros"] for entry in entries) == expected
    # The haiku calls cost whole credits, so the balance check below means something.
    assert sum(1 for micros in expected if micros > 1_000_000) == calls
    for entry in entries:
        assert entry.metadata["source"] == "litellm"
        assert entry.event_id is not None and entry.event_id.startswith("litellm-")
    # The carry rule: the credits debited are the floor of the exact total.
    assert stack.balance(user) == (5_000 - sum(expected) // 1_000_000, 0)


def test_a_user_who_cannot_pay_is_refused_and_charged_nothing(stack: Stack) -> None:
    broke = stack.funded_user(0)
    response = stack.closed.chat("haiku", broke, max_tokens=50_000)
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert "balance 0 credits" in error["message"] and "required" in error["message"]
    assert error["type"] == "insufficient_credits"
    assert stack.balance(broke) == (0, 0)
    assert stack.usage_entries(broke) == []

    stranger = uuid.uuid4()  # no account at all
    response = stack.closed.chat("mini", stranger)
    assert response.status_code == 402, response.text
    assert "has no account" in response.json()["error"]["message"]

    response = stack.closed.chat("mini", None)  # no user named: nobody to bill
    assert response.status_code == 400, response.text
    assert "user" in response.json()["error"]["message"]


def test_a_repeated_call_id_is_never_charged_twice(stack: Stack) -> None:
    user = stack.funded_user(1_000)
    call_id = f"retry-{uuid.uuid4()}"
    first = stack.closed.chat("haiku", user, call_id=call_id)
    assert first.status_code == 200, first.text
    wait_for(lambda: stack.usage_entries(user) or None, "the first commit")
    again = stack.closed.chat("haiku", user, call_id=call_id)
    assert again.status_code == 409, again.text
    assert len(stack.usage_entries(user)) == 1
    with stack.service() as billing:
        assert billing.get_reservation(f"litellm-{call_id}").status == "committed"


def test_a_failed_call_releases_its_hold(stack: Stack) -> None:
    user = stack.funded_user(1_000)
    call_id = f"broken-{uuid.uuid4()}"
    response = stack.closed.chat("broken", user, call_id=call_id)
    assert response.status_code >= 500, response.text
    with stack.service() as billing:
        status = wait_for(lambda: (s if (s := billing.get_reservation(
            f"litellm-{call_id}").status) != "held" else None), "the release")
    assert status == "released"
    assert stack.balance(user) == (1_000, 0)
    assert stack.usage_entries(user) == []


def test_a_cut_stream_is_charged_for_what_was_produced(stack: Stack) -> None:
    user = stack.funded_user(1_000)
    call_id = f"cut-{uuid.uuid4()}"
    received = 0
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "x-litellm-call-id": call_id}
    body = {"model": "slow", "stream": True, "user": str(user),
            "messages": [{"role": "user", "content": "Count for a long time."}]}
    with httpx.stream("POST", f"{stack.closed.url}/v1/chat/completions", json=body,
                      headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():  # bounded: we leave after 10 content chunks
            if line.startswith("data: {") and "token" in line:
                received += 1
                if received == 10:
                    break
    # Leaving the block closed the connection mid-stream.
    with stack.service() as billing:
        reservation = wait_for(lambda: (r if (r := billing.get_reservation(
            f"litellm-{call_id}")).status != "held" else None), "the cut stream's commit")
        assert reservation.status == "committed"
        [entry] = stack.usage_entries(user)
        produced = {key: entry.metadata[key] for key in (
            "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens")}
        assert entry.metadata["cost_micros"] == quoted_micros(billing, "openai", "gpt-4o-mini",
                                                              produced)
    # Charged for what was streamed before the cut, not for the whole answer.
    assert received <= produced["output_tokens"] < CHUNKS
    sent = wait_for(lambda: stack.upstream.streams_sent or None, "the upstream to stop")
    assert sent[-1] < CHUNKS  # the upstream was cut off too


def test_a_stream_the_upstream_breaks_is_charged_for_what_it_sent(stack: Stack) -> None:
    user = stack.funded_user(1_000)
    call_id = f"breaks-{uuid.uuid4()}"
    response = stack.closed.chat("breaks", user, call_id=call_id, stream=True)
    received = response.text.count('"content":" token"')
    assert received == 7, response.text[-1000:]  # the chunks before the break reached us
    with stack.service() as billing:
        reservation = wait_for(lambda: (r if (r := billing.get_reservation(
            f"litellm-{call_id}")).status != "held" else None), "the broken stream's commit")
        assert reservation.status == "committed"
        [entry] = stack.usage_entries(user)
        assert entry.metadata["output_tokens"] == received  # one token a chunk
        produced = {key: entry.metadata[key] for key in (
            "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens")}
        assert entry.metadata["cost_micros"] == quoted_micros(billing, "openai", "gpt-4o-mini",
                                                              produced)


def test_zbilling_down_fail_closed_refuses_fail_open_serves_and_bills_later(
        stack: Stack) -> None:
    user = stack.funded_user(1_000)
    closed_before = stack.closed.counter("zbilling_litellm_calls_total", decision="fail_closed")
    open_before = stack.open.counter("zbilling_litellm_calls_total", decision="fail_open")
    code, _ = stack.billing.stop()
    assert code == 0

    refused = stack.closed.chat("haiku", user)
    assert refused.status_code == 503, refused.text
    assert "cannot be reached" in refused.json()["error"]["message"]
    call_id = f"open-{uuid.uuid4()}"
    served = stack.open.chat("haiku", user, call_id=call_id)
    assert served.status_code == 200, served.text
    assert stack.closed.counter("zbilling_litellm_calls_total",
                                decision="fail_closed") == closed_before + 1
    assert stack.open.counter("zbilling_litellm_calls_total",
                              decision="fail_open") == open_before + 1

    # Back within the settle deadline: the let-through call is charged, once.
    stack.billing = stack.start_billing()
    [entry] = wait_for(lambda: stack.usage_entries(user) or None, "the late usage report")
    assert entry.event_id == f"litellm-{call_id}"
    with stack.service() as billing:
        assert entry.metadata["cost_micros"] == quoted_micros(
            billing, "anthropic", "claude-3-haiku-20240307", usage_tokens(HAIKU_USAGE))
    wait_for(lambda: stack.open.counter("zbilling_litellm_settlements_total", action="report",
                                        outcome="ok") or None, "the report's metric")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed here; "
                           ".ci/run installs it")
def test_the_callbacks_metrics_follow_prometheus_naming(stack: Stack) -> None:
    exposition = httpx.get(f"http://127.0.0.1:{stack.closed.metrics_port}/metrics",
                           timeout=5).text
    ours = "\n".join(line for line in exposition.splitlines() if "zbilling_litellm_" in line)
    assert "zbilling_litellm_calls_total" in ours
    linted = subprocess.run(["promtool", "check", "metrics"], input=ours + "\n", check=False,
                            capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr
