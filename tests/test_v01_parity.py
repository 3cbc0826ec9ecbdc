"""Every row of shared/reference/v0.1-parity.md, driven the way a v0.1 client drives the
original service: its field names, its bodies, against a real server on 127.0.0.1 (real
LMDB, real JWTs from a JWKS, the fake Stripe for the Stripe rows). The WebSocket row is
tests/test_balance_socket.py; the grants' exactly-once under concurrency and restarts are
also tests/test_grants.py (engine)."""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
import trio

from actors.config import load_pricing
from api.http import ROUTE_REQUESTS_IN_FLIGHT_MAX
from engine.pricing import model_reserve_cents
from tests.conftest import new_user
from tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.http_support import (
    ADMIN_KEY,
    SERVICE_KEY,
    JwksServer,
    Server,
    rsa_signing_key,
    service_headers,
)

AUDIENCE = "z-billing"
CONCURRENT_CALLS = 10
# The slow JWKS holds a request this long: past the server's request time-out below.
SLOW_JWKS_S = 3.0
REQUEST_TIMEOUT_S = 1
SOCKET_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def keys():
    return rsa_signing_key("k1")


@pytest.fixture(scope="module")
def issuer(keys):
    running = JwksServer([keys[1]])
    yield running
    running.close()


@pytest.fixture(scope="module")
def stripe_fake():
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "zbilling.toml"
    path.write_text('[plans.free]\nname = "Free"\nmonthly_price_usd_cents = 0\n'
                    "monthly_credits = 0\ndaily_grant_credits = 100\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer, stripe_fake, config_file, workers):
    """The server as a v0.1 deployment runs it: JWKS, Stripe, CORS, no FRONTEND_URL."""
    env = {"AUTH_BASE_URL": issuer.url, "STRIPE_API_KEY": API_KEY,
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "STRIPE_API_BASE": stripe_fake.url,
           "CORS_ORIGINS": "https://app.example, https://admin.example"}
    running = Server(tmp_path_factory.mktemp("v01") / "data", env=env, workers=workers,
                     args=("--config", str(config_file)))
    stripe_fake.webhook_url = f"{running.url}/webhooks/stripe"
    yield running
    if running.process.poll() is None:
        running.stop()


def token(keys, issuer, **claims: Any) -> str:
    now = int(time.time())
    payload = {"aud": AUDIENCE, "iss": issuer.url, "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, keys[0], algorithm="RS256", headers={"kid": "k1"})


def bearer(keys, issuer, user) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(keys, issuer, sub=str(user))}"}


def post(server: Server, path: str, body: Any, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body,
                      headers=headers if headers is not None else service_headers())


def funded(server: Server, keys, issuer, cents: int) -> uuid.UUID:
    user = new_user()
    assert httpx.get(f"{server.url}/v1/accounts/me",
                     headers=bearer(keys, issuer, user)).status_code == 200
    answer = post(server, "/v1/credits/add", {"user_id": str(user), "amount_cents": cents},
                  {"X-Admin-Key": ADMIN_KEY})
    assert answer.status_code == 200, answer.text
    return user


# --- requests and replies ------------------------------------------------------------------


def test_accounts_take_an_email_and_create_the_stripe_customer_once(server, keys, issuer,
                                                                   stripe_fake):
    user = new_user()
    headers = bearer(keys, issuer, user)
    email = f"{user.hex[:8]}@example.com"
    created = post(server, "/v1/accounts", {"email": email}, headers)
    assert created.status_code == 201, created.text
    again = post(server, "/v1/accounts", {"email": email}, headers)  # a retry
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    customers = [c for c in stripe_fake.customers.values()
                 if c["metadata"].get("user_id") == str(user)]
    assert len(customers) == 1
    assert (customers[0]["email"], customers[0]["name"]) == (email, email)
    assert created.json()["stripe_customer_id"] == customers[0]["id"]
    empty = post(server, "/v1/accounts", {}, bearer(keys, issuer, new_user()))
    assert empty.status_code == 201
    for bad in ("not-an-email", "a@b", "x" * 250 + "@e.co", 5):
        refused = post(server, "/v1/accounts", {"email": bad}, bearer(keys, issuer, new_user()))
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "bad_request")


def test_every_v01_usage_field_is_taken_and_metadata_is_stored_verbatim(server, keys, issuer):
    user = funded(server, keys, issuer, 1_000)
    metadata = {"request": {"model": "gpt-4o", "tags": ["a", 1, 2.5, None, True],
                            "nested": {"deep": "yes"}}, "n": 3}
    spellings = ("zero_pro_user", "zeroProUser", "is_zero_pro", "isZeroPro")
    for index, spelling in enumerate(spellings):
        answer = post(server, "/v1/usage", {
            "event_id": f"v01-{index}-{user}", "user_id": str(user),
            "agent_id": str(uuid.uuid4()), "cost_cents": 2, "metadata": metadata, spelling: True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["cost_cents"] == 2  # the plan flag changes no price
    page = httpx.get(f"{server.url}/v1/credits/transactions",
                     headers=bearer(keys, issuer, user)).json()
    usage = [row for row in page["transactions"] if row["transaction_type"] == "usage"]
    assert len(usage) == 4
    # Stored as sent; the engine adds its own keys beside it (cost_micros).
    assert all({name: row["metadata"][name] for name in metadata} == metadata for row in usage)
    assert {"id", "amount_cents", "transaction_type", "balance_after_cents", "description",
            "created_at"} <= set(page["transactions"][0])
    assert "has_more" in page
    null_metadata = post(server, "/v1/usage", {"event_id": f"null-{user}", "user_id": str(user),
                                               "cost_cents": 1, "metadata": None})
    assert null_metadata.status_code == 200, null_metadata.text
    unknown = post(server, "/v1/usage", {"event_id": f"u-{user}", "user_id": str(user),
                                         "cost_cents": 1, "zero_pro": True})
    assert unknown.json()["error"]["details"]["fields"] == ["zero_pro"]
    too_deep = post(server, "/v1/usage", {"event_id": f"d-{user}", "user_id": str(user),
                                          "cost_cents": 1,
                                          "metadata": {"a": {"b": {"c": {"d": 1}}}}})
    assert too_deep.status_code == 400


def test_usage_check_with_a_model_requires_its_reserve(server, keys, issuer):
    user = funded(server, keys, issuer, 1)
    reserve = model_reserve_cents(load_pricing(), "anthropic", "claude-3-5-sonnet")
    priced = post(server, "/v1/usage/quote", {"metric": {
        "type": "llm_tokens", "provider": "anthropic", "model": "claude-3-5-sonnet",
        "input_tokens": 2_000, "output_tokens": 1_000}}).json()
    assert reserve == max(1, priced["cost_cents"]) > 1  # exact micro-credits, rounded up
    check = post(server, "/v1/usage/check", {"user_id": str(user), "required_cents": 0,
                                             "provider": "anthropic",
                                             "model": "claude-3-5-sonnet"})
    # The v0.1 fields, exactly; spend controls (issue 16) add what the caps allow.
    assert check.json() == {"sufficient": False, "balance_cents": 1, "available_cents": 1,
                            "required_cents": reserve, "spendable_micros": 1_000_000,
                            "within_caps": True, "max_output_tokens": None}
    stated = post(server, "/v1/usage/check", {"user_id": str(user), "required_cents": 1,
                                              "provider": "anthropic",
                                              "model": "claude-3-5-sonnet"})
    assert (stated.json()["required_cents"], stated.json()["sufficient"]) == (1, True)


def test_quote_health_and_the_jwt_id_claim(server, keys, issuer):
    quote = post(server, "/v1/usage/quote", {"metric": {
        "type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1000,
        "output_tokens": 1000}})
    assert quote.json()["currency"] == "USD_CENTS"
    health = httpx.get(f"{server.url}/health").json()
    assert (health["status"], health["service"]) == ("healthy", "z-billing")
    assert health["version"] and "timestamp" in health
    by_id, by_sub = new_user(), new_user()
    me = httpx.get(f"{server.url}/v1/accounts/me", headers={
        "Authorization": f"Bearer {token(keys, issuer, id=str(by_id), sub=str(by_sub))}"})
    assert me.json()["user_id"] == str(by_id)  # `id` wins over `sub`
    for claims in ({"id": "not-a-uuid", "sub": str(by_sub)}, {"sub": "nope"}, {}):
        refused = httpx.get(f"{server.url}/v1/accounts/me", headers={
            "Authorization": f"Bearer {token(keys, issuer, **claims)}"})
        assert refused.status_code == 401, claims


# --- routes the original has -----------------------------------------------------------------


def test_the_signup_grant_is_once_per_account_even_under_concurrent_calls(server, keys, issuer):
    user = new_user()
    body = {"user_id": str(user), "is_zero_pro": False, "referred_by": str(new_user())}
    with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
        answers = list(pool.map(lambda _: post(server, "/v1/credits/signup-grant", body),
                                range(CONCURRENT_CALLS)))
    replies = [answer.json() for answer in answers]
    granted = [reply for reply in replies if reply["granted"]]
    assert len(granted) == 1
    assert (granted[0]["amount_cents"], granted[0]["balance_cents"]) == (5_000, 5_000)
    assert all(reply["reason"] == "already_granted" and reply["balance_cents"] == 5_000
               for reply in replies if not reply["granted"])
    bad = post(server, "/v1/credits/signup-grant", {"user_id": "nope"})
    assert bad.status_code == 400
    assert post(server, "/v1/credits/signup-grant", {"user_id": str(user)},
                headers={}).status_code == 401


def test_the_daily_grant_needs_the_signup_grant_and_pays_once_a_day(server):
    user = new_user()
    before = post(server, "/v1/credits/daily-grant", {"user_id": str(user)}).json()
    assert (before["granted"], before["reason"]) == (False, "signup_grant_required")
    post(server, "/v1/credits/signup-grant", {"user_id": str(user)})
    with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
        replies = [answer.json() for answer in pool.map(
            lambda _: post(server, "/v1/credits/daily-grant", {"user_id": str(user)}),
            range(CONCURRENT_CALLS))]
    assert sum(reply["granted"] for reply in replies) == 1
    assert {reply["reason"] for reply in replies if not reply["granted"]} == {
        "already_granted_today"}
    assert max(reply["balance_cents"] for reply in replies) == 5_100  # the free plan's 100


def test_the_referral_grant_credits_both_sides_once_per_invitee(server):
    inviter, invitee = new_user(), new_user()
    body = {"inviter_user_id": str(inviter), "invitee_user_id": str(invitee)}
    with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
        replies = [answer.json() for answer in pool.map(
            lambda _: post(server, "/v1/credits/referral-grant", body), range(CONCURRENT_CALLS))]
    granted = [reply for reply in replies if reply["granted"]]
    assert len(granted) == 1
    assert granted[0] == {"granted": True, "reason": None, "invitee_amount_cents": 5_000,
                          "inviter_amount_cents": 5_000, "invitee_balance_cents": 5_000,
                          "inviter_balance_cents": 5_000}
    assert all(reply["reason"] == "already_granted" for reply in replies if not reply["granted"])
    self_referral = post(server, "/v1/credits/referral-grant",
                         {"inviter_user_id": str(inviter), "invitee_user_id": str(inviter)})
    assert (self_referral.status_code, self_referral.json()["error"]["code"]) == (
        400, "bad_request")


def test_checkout_returns_to_our_own_pages_without_frontend_url(server, keys, issuer,
                                                               stripe_fake):
    for page in ("/checkout/success", "/checkout/cancelled"):
        answer = httpx.get(f"{server.url}{page}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
    user = new_user()
    purchase = post(server, "/v1/credits/purchase", {"amount_usd": 10},
                    bearer(keys, issuer, user))
    assert purchase.status_code == 200, purchase.text
    session = stripe_fake.sessions[purchase.json()["session_id"]]
    assert session["success_url"].startswith(f"{server.url}/checkout/success")
    assert session["cancel_url"] == f"{server.url}/checkout/cancelled"


def test_a_paid_session_of_the_original_service_is_credited_once(server, keys, issuer,
                                                                stripe_fake):
    user = funded(server, keys, issuer, 1)
    session = {"id": f"cs_v01_{user.hex}", "object": "checkout.session", "mode": "payment",
               "payment_status": "paid", "payment_intent": f"pi_v01_{user.hex}",
               "client_reference_id": str(user),
               "metadata": {"user_id": str(user), "credits_amount": "700"}}
    for _ in range(3):  # Stripe delivers again: a new event id for the same payment
        delivered = stripe_fake.deliver(stripe_fake.event("checkout.session.completed",
                                                          session))
        assert delivered.status_code == 200, delivered.text
        assert delivered.headers.get("connection") != "close"  # its body was read whole
    balance = httpx.get(f"{server.url}/v1/credits/balance", headers=bearer(keys, issuer, user))
    assert balance.json()["balance_cents"] == 701


# --- cross-cutting ---------------------------------------------------------------------------


def test_cors_answers_preflights_for_the_configured_origins_only(server):
    preflight = httpx.options(f"{server.url}/v1/usage", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "X-API-Key" in preflight.headers["access-control-allow-headers"]
    simple = httpx.get(f"{server.url}/health", headers={"Origin": "https://admin.example"})
    assert simple.headers["access-control-allow-origin"] == "https://admin.example"
    other = httpx.get(f"{server.url}/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_there_are_no_cors_headers(tmp_path):
    running = Server(tmp_path / "data")
    try:
        answer = httpx.options(f"{running.url}/v1/usage", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert not any(name.startswith("access-control-") for name in answer.headers)
    finally:
        running.stop()


def raw_exchange(server: Server, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_S) as raw:
        raw.sendall(request)
        received = b""
        while data := raw.recv(65536):
            received += data
        return received


@pytest.mark.parametrize("status, request_head", [
    (413, b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"X-API-Key: " + SERVICE_KEY.encode() + b"\r\nContent-Length: 5000000\r\n\r\n{"),
    (401, b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: 100000\r\n\r\n{"),
    (415, b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
          b"X-API-Key: " + SERVICE_KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n{"),
])
def test_a_reply_before_the_body_was_read_closes_the_connection(server, status,
                                                                request_head):
    # The body is never sent whole: the server answers, says so, and closes (recv sees the
    # end) instead of waiting for the rest with the client's next request stuck behind it.
    answer = raw_exchange(server, request_head)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert b"connection: close" in head.lower()
    assert b'"error"' in body


async def test_a_slow_request_times_out_in_the_error_format_and_the_route_bound_holds(
        tmp_path, keys):
    slow = JwksServer([keys[1]], delay_s=SLOW_JWKS_S)
    running = Server(tmp_path / "data", dev=False, env={
        "AUTH_BASE_URL": slow.url, "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_S)})
    try:
        user_token = token(keys, slow, sub=str(new_user()))
        answer = httpx.get(f"{running.url}/v1/accounts/me",
                           headers={"Authorization": f"Bearer {user_token}"}, timeout=30)
        error = answer.json()["error"]
        assert (answer.status_code, error["code"]) == (504, "request_timeout")
        assert "same event id" in error["message"]
    finally:
        running.stop()
        slow.close()


async def test_past_the_route_bound_requests_are_refused_at_once(tmp_path, keys):
    slow = JwksServer([keys[1]], delay_s=SLOW_JWKS_S)
    running = Server(tmp_path / "data", dev=False, env={"AUTH_BASE_URL": slow.url})
    headers = {"Authorization": f"Bearer {token(keys, slow, sub=str(new_user()))}"}
    statuses: list[int] = []
    try:
        limits = httpx.Limits(max_connections=ROUTE_REQUESTS_IN_FLIGHT_MAX + 50)
        async with httpx.AsyncClient(base_url=running.url, limits=limits, timeout=30) as client:

            async def one() -> None:
                statuses.append((await client.get("/v1/accounts/me", headers=headers))
                                .status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(ROUTE_REQUESTS_IN_FLIGHT_MAX):
                    nursery.start_soon(one)
                await trio.sleep(SLOW_JWKS_S / 2)  # all of them wait for the slow JWKS
                started = time.monotonic()
                refused = await client.get("/v1/accounts/me", headers=headers)
                assert time.monotonic() - started < SLOW_JWKS_S / 2  # at once, not queued
                assert (refused.status_code, refused.json()["error"]["code"]) == (
                    503, "overloaded")
                assert refused.headers["retry-after"] == "1"
                other_route = await client.get("/health")
                assert other_route.status_code == 200
        assert statuses.count(200) == ROUTE_REQUESTS_IN_FLIGHT_MAX
    finally:
        running.stop()
        slow.close()
