"""Outbound webhooks end to end: a real server process delivers to a real HTTP receiver on
127.0.0.1, through a receiver outage and a SIGKILL of the server; every event arrives, in order
per account, with a valid signature. Retries use a 50 ms backoff base (WEBHOOK_RETRY_BASE_MS)
and the engine clock is moved past the 72-hour window instead of waiting for it."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.client import BillingClient
from tests.http_support import ADMIN_KEY, Server, free_port, service_headers, user_headers
from tests.test_http_lots import HOUR_MS, Clock, grant, opened

ADMIN = {"X-Admin-Key": ADMIN_KEY}
EVERY_EVENT = ["balance.low", "balance.depleted", "balance.recovered", "spend_limit.reached",
               "payment.succeeded", "credits.expired"]
DELIVERY_WAIT_S = 30
RETRY_BASE_MS = 50


class Receiver:
    """A webhook receiver: records each request; answers 200, or 500 while `failing`. Stop
    and start it again on the same port for an outage (connections refused meanwhile)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failing = False
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.received.append((dict(self.headers), body))
                status = 500 if receiver.failing else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for _, body in self.received]

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first arrival of each event id, once `count` distinct ones arrived."""
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while time.monotonic() < deadline:
            firsts = first_arrivals(self.events())
            if len(firsts) >= count:
                return firsts
            time.sleep(0.05)
        raise AssertionError(f"{len(first_arrivals(self.events()))} of {count} events arrived")


def first_arrivals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        seen.setdefault(event["id"], event)
    return list(seen.values())


def valid_signature(headers: dict[str, str], body: bytes, secret: str) -> bool:
    parts = [part.split("=", 1) for part in headers["Z-Billing-Signature"].split(",")]
    timestamp = next(value for name, value in parts if name == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return any(name == "v1" and hmac.compare_digest(value, expected) for name, value in parts)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("webhooks") / "data")
    yield running
    running.stop()


@pytest.fixture
def clock(tmp_path) -> Clock:
    return Clock(tmp_path / "offset_ms")


def start_server(tmp_path, clock: Clock) -> Server:
    return Server(tmp_path / "data", env={"ZBILLING_CLOCK_FILE": str(clock.path),
                                          "WEBHOOK_RETRY_BASE_MS": str(RETRY_BASE_MS)})


def register(server: Server, receiver: Receiver, kinds: list[str]) -> dict[str, Any]:
    created = httpx.post(f"{server.url}/v1/admin/webhooks", headers=ADMIN,
                         json={"url": receiver.url, "event_types": kinds})
    assert created.status_code == 201, created.text
    return created.json()


def debit(server: Server, user, cents: int) -> None:
    answer = httpx.post(f"{server.url}/v1/usage", headers=service_headers(), json={
        "event_id": str(time.monotonic_ns()), "user_id": str(user), "cost_cents": cents})
    assert answer.status_code == 200, answer.text


def thresholds(server: Server, user, *cents: int) -> None:
    answer = httpx.post(f"{server.url}/v1/credits/spend-controls", headers=user_headers(user),
                        json={"caps": [], "low_balance_cents": list(cents)})
    assert answer.status_code == 200, answer.text


def test_every_event_arrives_signed_and_in_order_through_an_outage_and_a_sigkill(
        tmp_path, clock, receiver):
    server = start_server(tmp_path, clock)
    try:
        endpoint = register(server, receiver, EVERY_EVENT)
        users = [opened(server) for _ in range(2)]
        for user in users:
            thresholds(server, user, 500)
            assert grant(server, user, 1_000).status_code == 200  # recovered
            debit(server, user, 600)  # low (below 500)
        receiver.wait_for(4)
        receiver.stop()  # the outage: connections refused
        for user in users:
            debit(server, user, 400)  # depleted
            assert grant(server, user, 700).status_code == 200  # recovered
            debit(server, user, 300)  # low
        time.sleep(0.5)  # a few failed attempts, then the server dies mid-retry
        server.kill()
    finally:
        if server.process.poll() is None:
            server.stop()
    receiver.start()
    server = start_server(tmp_path, clock)
    try:
        arrived = receiver.wait_for(10)
    finally:
        server.stop()
    assert len(arrived) == 10
    for headers, body in receiver.received:
        assert valid_signature(headers, body, endpoint["secret"])
        assert headers["Z-Billing-Event-Id"] == json.loads(body)["id"]
    for user in users:
        mine = [event for event in arrived if event["user_id"] == str(user)]
        assert [event["type"] for event in mine] == [
            "balance.recovered", "balance.low", "balance.depleted", "balance.recovered",
            "balance.low"]
        # Event ids follow the engine's time-ordered transaction ids: arrival order is
        # creation order.
        assert [event["id"] for event in mine] == sorted(event["id"] for event in mine)
        assert mine[1]["data"] == {"threshold_cents": 500, "balance_cents": 400}


def test_an_event_past_the_retry_window_is_parked_then_resent_and_secrets_rotate(
        tmp_path, clock, receiver):
    server = start_server(tmp_path, clock)
    try:
        endpoint = register(server, receiver, ["balance.recovered"])
        receiver.failing = True
        user = opened(server)
        assert grant(server, user, 100).status_code == 200
        receiver.wait_for(1)
        clock.advance(73 * HOUR_MS)  # the next failed attempt finds the window closed
        with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
            deadline = time.monotonic() + DELIVERY_WAIT_S
            while not admin.webhook_dead_letters(endpoint["endpoint_id"]).parked:
                assert time.monotonic() < deadline, "never parked"
                time.sleep(0.05)
            (parked,) = admin.webhook_dead_letters(endpoint["endpoint_id"]).parked
            assert parked.event_type == "balance.recovered" and "HTTP 500" in parked.last_error
            receiver.failing = False
            tried = len(receiver.received)
            rotated = admin.rotate_webhook(endpoint["endpoint_id"])
            assert rotated.secret != endpoint["secret"]
            assert admin.resend_webhooks(endpoint["endpoint_id"]).resent == 1
            deadline = time.monotonic() + DELIVERY_WAIT_S
            while len(receiver.received) == tried:
                assert time.monotonic() < deadline, "never re-sent"
                time.sleep(0.05)
            headers, body = receiver.received[-1]
            assert json.loads(body)["id"] == parked.event_id
            # While the rotation overlaps, both secrets sign.
            assert valid_signature(headers, body, rotated.secret)
            assert valid_signature(headers, body, endpoint["secret"])
            assert admin.webhook_dead_letters(endpoint["endpoint_id"]).parked == []
            listed = admin.webhooks().endpoints
            assert [found.endpoint_id for found in listed] == [endpoint["endpoint_id"]]
            assert listed[0].secret is None
            admin.delete_webhook(endpoint["endpoint_id"])
            assert admin.webhooks().endpoints == []
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "zbilling_webhook_deliveries_total{outcome=\"parked\"} 1.0" in metrics
        assert "zbilling_webhook_queued 0.0" in metrics
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://127.0.0.1/hooks", "event_types": ["balance.low"]}, "url"),
    ({"url": "http://127.0.0.1/a#b", "event_types": ["balance.low"]}, "url"),
    ({"url": "not a url", "event_types": ["balance.low"]}, "url"),
    ({"url": "http://127.0.0.1/hooks", "event_types": ["balance.lower"]}, "event_types"),
    ({"url": "http://127.0.0.1/hooks", "event_types": []}, "event_types"),
])
def test_bad_endpoints_are_refused_in_the_one_error_format(plain_server, body, field):
    answer = httpx.post(f"{plain_server.url}/v1/admin/webhooks", headers=ADMIN, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "bad_request"
    assert field in error["message"] + json.dumps(error["details"])


def test_an_unknown_endpoint_is_not_found(plain_server):
    for method, path in (("DELETE", "we_nothing"), ("POST", "we_nothing/rotate"),
                         ("GET", "we_nothing/dead-letters")):
        answer = httpx.request(method, f"{plain_server.url}/v1/admin/webhooks/{path}",
                               headers=ADMIN, json={} if method == "POST" else None)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
