"""The HTTP API against a real server process on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys

import httpx
import msgspec
import pytest

from storage.lmdb_store import LmdbStore
from storage.verify import verify_store
from tests.conftest import new_user
from tests.http_support import ADMIN_KEY, ROOT, Server, service_headers, user_headers


@pytest.fixture(scope="module")
def server(tmp_path_factory, workers):
    running = Server(tmp_path_factory.mktemp("http") / "data", workers=workers)
    yield running
    if running.process.poll() is None:
        running.stop()


def fund(server: Server, user, cents: int, key: str | None = None) -> httpx.Response:
    headers = {"X-Admin-Key": ADMIN_KEY}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{server.url}/v1/credits/add", headers=headers,
                      json={"user_id": str(user), "amount_cents": cents, "reason": "test"})


def usage(server: Server, user, event_id: str, **fields) -> httpx.Response:
    body = {"event_id": event_id, "user_id": str(user), **fields}
    return httpx.post(f"{server.url}/v1/usage", headers=service_headers(), json=body)


LLM = {"type": "llm_tokens", "provider": "anthropic", "model": "claude-3-5-sonnet",
       "input_tokens": 10_000, "output_tokens": 5_000}


def test_health_ready_and_metrics(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "healthy"
    assert httpx.get(f"{server.url}/ready").json() == {"status": "ready"}
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200
    assert "zbilling_journal_commit_seconds_bucket" in metrics.text
    assert "zbilling_http_requests_total" in metrics.text


def test_account_lifecycle_and_a_user_sees_only_their_own(server):
    alice, bob = new_user(), new_user()
    created = httpx.post(f"{server.url}/v1/accounts", headers=user_headers(alice))
    assert created.status_code == 201
    again = httpx.post(f"{server.url}/v1/accounts", headers=user_headers(alice))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert fund(server, alice, 4500).json()["balance_formatted"] == "$45.00"
    mine = httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(alice)).json()
    assert (mine["user_id"], mine["balance_cents"]) == (str(alice), 4500)
    theirs = httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(bob)).json()
    assert (theirs["user_id"], theirs["balance_cents"]) == (str(bob), 0)
    deleted = httpx.delete(f"{server.url}/v1/accounts/me", headers=user_headers(alice))
    assert deleted.json() == {"deleted": True}
    refused = usage(server, alice, "after-close", cost_cents=1)
    assert (refused.status_code, refused.json()["error"]["details"]["reason"]) == (
        409, "account_closed")


def test_usage_debits_exactly_and_retries_get_the_original(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    first = usage(server, user, "call-1", metric=LLM)
    assert first.status_code == 200
    result = first.json()
    assert (result["success"], result["cost_cents"], result["cost_micros"],
            result["balance_cents"]) == (True, 10, 10_500_000, 90)
    duplicate = usage(server, user, "call-1", metric=LLM)
    assert duplicate.status_code == 409
    error = duplicate.json()["error"]
    assert error["code"] == "duplicate_event"
    assert error["details"]["transaction_id"] == result["transaction_id"]
    conflict = usage(server, user, "call-1", cost_cents=3)
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    broke = usage(server, user, "big", cost_cents=1000)
    assert broke.status_code == 402
    # Half a credit is already consumed but unbilled, so 1,000 more need 1,001.
    assert broke.json()["error"]["details"] == {
        "balance_cents": 90, "available_cents": 90, "required_cents": 1001}
    unknown = usage(server, new_user(), "x", cost_cents=1)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "account_not_found")


def test_concurrent_duplicates_debit_once(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: usage(server, user, "same", cost_cents=5), range(20)))
    assert sorted(answer.status_code for answer in answers) == [200] + [409] * 19
    balance = httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()
    assert balance["balance_cents"] == 95


def test_batch_results_per_event_in_request_order_and_msgpack(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 10)
    events = [{"event_id": f"b{i}", "user_id": str(user), "cost_cents": 4} for i in range(3)]
    events.append({"event_id": "bad", "user_id": "not-a-uuid", "cost_cents": 1})
    body = msgspec.msgpack.encode({"events": events})
    answer = httpx.post(f"{server.url}/v1/usage/batch", content=body,
                        headers=service_headers(**{"Content-Type": "application/msgpack",
                                                   "Accept": "application/msgpack"}))
    assert answer.headers["content-type"] == "application/msgpack"
    result = msgspec.msgpack.decode(answer.content)
    assert (result["processed"], result["failed"]) == (2, 2)
    codes = [item.get("error", {}).get("code") for item in result["results"]]
    assert codes == [None, None, "insufficient_credits", "bad_request"]
    assert result["results"][1]["balance_cents"] == 2


def test_check_quote_and_decimal_quantities(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 50)
    check = httpx.post(f"{server.url}/v1/usage/check", headers=service_headers(),
                       json={"user_id": str(user), "required_cents": 60}).json()
    assert check == {"sufficient": False, "balance_cents": 50, "available_cents": 50,
                     "required_cents": 60, "spendable_micros": 50_000_000,
                     "within_caps": True, "max_output_tokens": None}
    quote = httpx.post(f"{server.url}/v1/usage/quote", headers=service_headers(),
                       json={"metric": LLM}).json()
    assert (quote["cost_micros"], quote["cost_cents"], quote["cost_cents_exact"]) == (
        10_500_000, 11, "10.5")
    compute = usage(server, user, "job", metric={"type": "compute", "cpu_hours": 2.0,
                                                "memory_gb_hours": 4.0})
    assert compute.json()["cost_cents"] == 20


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_id": "e", "user_id": "nope", "cost_cents": 1}, "user_id"),
        ({"event_id": "e", "user_id": "U", "cost_cents": 1.5}, "cost_cents"),
        ({"event_id": "e", "user_id": "U", "cost_cents": True}, "cost_cents"),
        ({"event_id": "e", "user_id": "U", "cost_cents": -1}, "cost_cents"),
        ({"event_id": "", "user_id": "U", "cost_cents": 1}, "event_id"),
        ({"event_id": "e", "user_id": "U", "metric": {"type": "nope"}}, "metric.type"),
        ({"event_id": "e", "user_id": "U",
          "metric": {"type": "compute", "cpu_hours": "1e999"}}, "metric.cpu_hours"),
        ({"event_id": "e", "user_id": "U", "cost_cents": "1"}, "cost_cents"),
        ({"event_id": "e", "user_id": "U", "cost_cents": 1, "cost_micros": 1}, "cost_cents"),
        ({"event_id": "e", "user_id": "U",
          "metric": {"type": "compute", "cpu_hours": " 2"}}, "metric.cpu_hours"),
        ({"event_id": "e", "user_id": "U",
          "metric": {"type": "compute", "cpu_hours": "1_000"}}, "metric.cpu_hours"),
        ({"event_id": "e", "user_id": "U", "cost_cents": 1, "agent_id": "a\n"}, "agent_id"),
        ({"event_id": "e", "user_id": "U", "cost_cents": 1,
          "timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ({"event_id": "e", "user_id": "U", "cost_cents": 1,
          "timestamp": "2026-02-30T00:00:00Z"}, "timestamp"),
    ],
)
def test_bad_input_is_a_clear_400_and_changes_nothing(server, body, field):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 10)
    sent = {key: (str(user) if value == "U" else value) for key, value in body.items()}
    answer = httpx.post(f"{server.url}/v1/usage", headers=service_headers(), json=sent)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_request"
    assert answer.json()["error"]["details"]["field"] == field
    assert "Traceback" not in answer.text
    balance = httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()
    assert balance["balance_cents"] == 10


def test_numbers_count_by_value_as_json_schema_reads_them(server):
    """1.0 is the integer 1 and 2.0000000000 has no decimals: JSON Schema, and so the
    document, compares numbers by value; decimal strings keep their documented spellings."""
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    assert usage(server, user, "whole", cost_cents=2.0).json()["cost_cents"] == 2
    zeros = httpx.post(f"{server.url}/v1/usage", headers=service_headers(), content=(
        b'{"event_id": "zeros", "user_id": "%s", "metric": {"type": "compute", '
        b'"cpu_hours": 2.0000000000}}' % str(user).encode()))
    plain = usage(server, user, "plain", metric={"type": "compute", "cpu_hours": 2})
    assert zeros.json()["cost_micros"] == plain.json()["cost_micros"] > 0
    for event_id, hours in (("text", "2"), ("tiny", "1E-7"), ("float", "1e-07")):
        answer = usage(server, user, event_id, metric={"type": "compute", "cpu_hours": hours})
        assert answer.status_code == 200, answer.text
    held = httpx.post(f"{server.url}/v1/reservations", headers=service_headers(),
                      json={"reservation_id": "r-float", "user_id": str(user),
                            "amount_cents": 5.0, "ttl_seconds": 60.0})
    assert held.json()["held_cents"] == 5


def test_a_refused_body_does_not_stall_the_next_request_on_the_connection(server):
    with httpx.Client(timeout=5) as client:  # one kept-alive connection
        for _ in range(20):
            refused = client.post(f"{server.url}/v1/usage", content=b'{"event_id": "x"}',
                                  headers={"Content-Type": "application/json"})
            assert refused.status_code == 401
            wrong_method = client.put(f"{server.url}/v1/usage", content=b"{}")
            assert wrong_method.status_code == 405


def test_cancelling_without_a_subscription_is_a_conflict(server):
    answer = httpx.post(f"{server.url}/v1/subscriptions/cancel",
                        headers=user_headers(new_user()))
    assert (answer.status_code, answer.json()["error"]["details"]) == (
        409, {"reason": "no_subscription"})


def test_protocol_errors_use_the_one_error_format(server):
    malformed = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                           content=b"{not json", )
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "bad_request")
    unknown = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                         json={"event_id": "e", "user_id": str(new_user()), "surprise": 1})
    assert unknown.json()["error"]["details"]["fields"] == ["surprise"]
    wrong_type = httpx.post(f"{server.url}/v1/usage", content=b"x",
                            headers=service_headers(**{"Content-Type": "text/plain"}))
    assert (wrong_type.status_code, wrong_type.json()["error"]["code"]) == (
        415, "unsupported_media_type")
    too_big = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                         content=b"{" + b" " * (1024 * 1024 + 10) + b"}")
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")
    missing = httpx.get(f"{server.url}/v1/nothing-here")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong_method = httpx.put(f"{server.url}/v1/usage", headers=service_headers())
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (
        405, "method_not_allowed")
    assert wrong_method.headers["Allow"] == "OPTIONS, POST"
    later = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(new_user()))
    assert (later.status_code, later.json()["error"]["code"]) == (503, "not_configured")


def test_service_and_admin_keys(server):
    no_key = httpx.post(f"{server.url}/v1/usage", json={})
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (401, "unauthorized")
    bad_key = httpx.post(f"{server.url}/v1/usage", json={}, headers={"X-API-Key": "nope"})
    assert bad_key.status_code == 401
    service_on_admin = httpx.post(f"{server.url}/v1/credits/add", headers=service_headers(),
                                  json={"user_id": str(new_user()), "amount_cents": 1})
    assert (service_on_admin.status_code, service_on_admin.json()["error"]["code"]) == (
        403, "forbidden")
    wrong_admin = httpx.post(f"{server.url}/v1/credits/add", headers={"X-Admin-Key": "nope"},
                             json={"user_id": str(new_user()), "amount_cents": 1})
    assert wrong_admin.status_code == 401
    no_user = httpx.get(f"{server.url}/v1/accounts/me")
    assert no_user.status_code == 401


def test_admin_grant_is_idempotent(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    first = fund(server, user, 500, key="grant-1")
    assert first.json()["balance_cents"] == 500
    again = fund(server, user, 500, key="grant-1")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "duplicate_event")
    assert again.json()["error"]["details"]["transaction_id"] == first.json()["transaction_id"]
    history = httpx.get(f"{server.url}/v1/credits/transactions?limit=10",
                        headers=user_headers(user)).json()
    assert [entry["amount_cents"] for entry in history["transactions"]] == [500]


def test_transactions_page_with_limit_offset_and_before(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    for index in range(5):
        usage(server, user, f"t{index}", cost_cents=index + 1)
    base = f"{server.url}/v1/credits/transactions"
    page = httpx.get(f"{base}?limit=2", headers=user_headers(user)).json()
    assert [entry["amount_cents"] for entry in page["transactions"]] == [-5, -4]
    assert page["has_more"]
    after = httpx.get(f"{base}?limit=10&before={page['next_before']}",
                      headers=user_headers(user)).json()
    assert [entry["amount_cents"] for entry in after["transactions"]] == [-3, -2, -1, 100]
    assert not after["has_more"]
    skipped = httpx.get(f"{base}?limit=1&offset=4", headers=user_headers(user)).json()
    assert skipped["transactions"][0]["event_id"] == "t0"
    assert httpx.get(f"{base}?limit=101", headers=user_headers(user)).status_code == 400


def test_auto_refill_settings_are_stored_and_validated(server):
    user = new_user()
    url = f"{server.url}/v1/credits/auto-refill"
    saved = httpx.post(url, headers=user_headers(user),
                       json={"enabled": True, "trigger_below_cents": 300}).json()
    assert saved == {"enabled": True, "trigger_below_cents": 300, "refill_amount_cents": 2500,
                     "refill_in_flight": False, "last_error": None}
    assert httpx.get(url, headers=user_headers(user)).json() == saved
    bad = httpx.post(url, headers=user_headers(user), json={"enabled": True,
                                                              "trigger_below_cents": 99})
    assert bad.status_code == 400


def test_reservations_hold_commit_release_over_http(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    base = f"{server.url}/v1/reservations"
    held = httpx.post(base, headers=service_headers(),
                      json={"reservation_id": "r1", "user_id": str(user), "amount_cents": 30})
    assert held.status_code == 201
    assert (held.json()["held_cents"], held.json()["available_cents"]) == (30, 70)
    check = httpx.post(f"{server.url}/v1/usage/check", headers=service_headers(),
                       json={"user_id": str(user), "required_cents": 71}).json()
    assert check["sufficient"] is False
    committed = httpx.post(f"{base}/r1/commit", headers=service_headers(),
                           json={"metric": LLM})
    assert committed.status_code == 200
    assert (committed.json()["cost_cents"], committed.json()["released_cents"]) == (10, 20)
    again = httpx.post(f"{base}/r1/commit", headers=service_headers(), json={"metric": LLM})
    assert again.json()["error"]["code"] == "duplicate_event"
    shown = httpx.get(f"{base}/r1", headers=service_headers()).json()
    assert shown["status"] == "committed"
    httpx.post(base, headers=service_headers(),
               json={"reservation_id": "r2", "user_id": str(user), "amount_cents": 5})
    released = httpx.delete(f"{base}/r2", headers=service_headers()).json()
    assert released["released_cents"] == 5
    late = httpx.post(f"{base}/r2/commit", headers=service_headers(), json={"cost_cents": 1})
    assert (late.status_code, late.json()["error"]["code"]) == (409, "conflict")
    missing = httpx.delete(f"{base}/nope", headers=service_headers())
    assert missing.status_code == 404


def test_sigterm_exits_cleanly_and_acknowledged_debits_survive_restart(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 100)
    assert usage(server, user, "before-stop", cost_cents=7).status_code == 200
    code, output = server.stop()
    assert code == 0, output
    assert "journal flushed" in output
    restarted = Server(data_dir)
    try:
        again = usage(restarted, user, "before-stop", cost_cents=7)
        assert again.json()["error"]["code"] == "duplicate_event"
        assert httpx.get(f"{restarted.url}/v1/credits/balance",
                         headers=user_headers(user)).json()["balance_cents"] == 93
    finally:
        restarted.stop()


def test_sigkill_under_32_clients_loses_no_acknowledged_event(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    fund(server, user, 10**9)
    acknowledged: list[str] = []

    def client(index: int) -> None:
        with httpx.Client(timeout=5) as http:
            for n in range(2000):
                event_id = f"k{index}-{n}"
                try:
                    answer = http.post(f"{server.url}/v1/usage", headers=service_headers(),
                                       json={"event_id": event_id, "user_id": str(user),
                                             "cost_cents": 1})
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    acknowledged.append(event_id)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(client, index) for index in range(32)]
        deadline_acks = 1500
        while len(acknowledged) < deadline_acks and not all(f.done() for f in futures):
            concurrent.futures.wait(futures, timeout=0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    assert len(acknowledged) >= deadline_acks
    store = LmdbStore(data_dir)
    try:
        for event_id in acknowledged:
            assert store.get_outcome("usage", event_id) is not None, event_id
        report = verify_store(store)
        assert report.ok, report.violations
    finally:
        store.close()
    verified = subprocess.run(
        [sys.executable, "-c", "from api.cli import main; main()", "verify",
         "--data-dir", str(data_dir)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert verified.returncode == 0, verified.stdout


def test_a_keep_alive_connection_serves_thousands_of_requests(server):
    """hypercorn closes a connection after keep_alive_max_requests and can drop the last
    response while doing so; a gateway's connection must simply keep working."""
    request = b"GET /health HTTP/1.1\r\nHost: zbilling\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        reader = connection.makefile("rb")
        for _ in range(2_500):
            connection.sendall(request)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (header := reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                assert name.lower() != b"connection" or b"close" not in value.lower()
                if name.lower() == b"content-length":
                    length = int(value)
            reader.read(length)
