"""Plans and subscriptions end to end: the real server, the fake Stripe, signed Lago webhooks;
and the renewal sweeper under an injected clock."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from actors.runtime import open_billing
from api.client import BadRequest, BillingClient
from engine.subscription_state import Manager
from engine.subscriptions import MONTH_MS
from tests.conftest import new_user
from tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, Server, user_headers

pytestmark = pytest.mark.slow

LAGO_HMAC_KEY = "lago-hmac-key-0123456789"
LAGO_ISSUER = "https://lago.example"
LAGO_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
LAGO_PUBLIC_PEM = LAGO_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
PLANS = """
[plans.standard]
name = "Standard"
monthly_price_usd_cents = 2000
monthly_credits = 2500
purchase_discount_percent = 10
stripe_price_id = "price_standard"
lago_plan_code = "standard"
"""


@pytest.fixture(scope="module")
def stripe_fake():
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(stripe_fake, tmp_path_factory, workers):
    directory = tmp_path_factory.mktemp("subscriptions")
    config = directory / "zbilling.toml"
    config.write_text(PLANS)
    env = {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "STRIPE_API_BASE": stripe_fake.url, "LAGO_WEBHOOK_SECRET": LAGO_HMAC_KEY,
           "LAGO_PUBLIC_KEY": base64.b64encode(LAGO_PUBLIC_PEM).decode(),
           "LAGO_WEBHOOK_ISSUER": LAGO_ISSUER}
    running = Server(directory / "data", env=env, args=("--config", str(config)),
                     workers=workers)
    stripe_fake.webhook_url = f"{running.url}/webhooks/stripe"
    yield running
    running.stop()


def me(server: Server, user) -> dict:
    return httpx.get(f"{server.url}/v1/subscriptions/me", headers=user_headers(user)).json()


def balance(server: Server, user) -> int:
    return httpx.get(f"{server.url}/v1/credits/balance",
                     headers=user_headers(user)).json()["balance_cents"]


def deliver_all(fake: FakeStripe, events: list[dict]) -> list[str]:
    answers = [fake.deliver(event) for event in events]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    return [answer.json()["outcome"] for answer in answers]


def subscribe(server: Server, fake: FakeStripe, user) -> str:
    """Checkout in subscription mode, completed and announced; the subscription id."""
    answer = httpx.post(f"{server.url}/v1/subscriptions/checkout", headers=user_headers(user),
                        json={"plan": "standard"})
    assert answer.status_code == 200, answer.text
    session_id = answer.json()["session_id"]
    already = len(fake.events)
    fake.complete_session(session_id)
    deliver_all(fake, fake.events[already:])
    return fake.sessions[session_id]["subscription"]


def lago_started(subscription_id: str, user, period_start_s: int) -> bytes:
    started = datetime.datetime.fromtimestamp(period_start_s, datetime.UTC)
    return json.dumps({
        "webhook_type": "subscription.started", "object_type": "subscription",
        "organization_id": str(uuid.uuid4()),
        "subscription": {"external_id": subscription_id, "external_customer_id": str(user),
                         "plan_code": "standard", "status": "active",
                         "current_billing_period_started_at": started.isoformat()},
    }).encode()


def send_lago(server: Server, body: bytes, *, algorithm: str = "hmac",
              signature: str | None = None, key: str | None = None) -> httpx.Response:
    if signature is None:
        if algorithm == "hmac":
            digest = hmac.new(LAGO_HMAC_KEY.encode(), body, hashlib.sha256).digest()
            signature = base64.b64encode(digest).decode()
        else:
            signature = jwt.encode({"data": body.decode(), "iss": LAGO_ISSUER},
                                   key or LAGO_KEY, algorithm="RS256")
    headers = {"X-Lago-Signature": signature, "X-Lago-Signature-Algorithm": algorithm,
               "X-Lago-Unique-Key": str(uuid.uuid4()), "Content-Type": "application/json"}
    return httpx.post(f"{server.url}/webhooks/lago", content=body, headers=headers)


def test_a_subscription_checkout_starts_the_plan_and_grants_the_first_period(server,
                                                                             stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    state = me(server, user)
    assert (state["plan"], state["status"], state["managed_by"]) == ("standard", "active",
                                                                     "stripe")
    assert state["subscription_id"] == subscription_id
    assert balance(server, user) == 2_500
    session = next(s for s in stripe_fake.sessions.values()
                   if s.get("subscription") == subscription_id)
    assert session["metadata"] == {"user_id": str(user), "plan": "standard"}
    # The standard plan's discount now applies to purchases.
    bought = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(user),
                        json={"amount_usd": 10}).json()
    assert (bought["credits"], bought["price_cents"]) == (1_000, 900)


def test_a_plan_without_a_stripe_price_cannot_be_checked_out(server):
    answer = httpx.post(f"{server.url}/v1/subscriptions/checkout",
                        headers=user_headers(new_user()), json={"plan": "pro"})
    assert answer.status_code == 400
    unknown = httpx.post(f"{server.url}/v1/subscriptions/checkout",
                         headers=user_headers(new_user()), json={"plan": "gold"})
    assert unknown.json()["error"]["details"] == {"field": "plan"}


def test_a_renewal_from_three_sources_twice_each_grants_once(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    updated, paid = stripe_fake.renew(subscription_id)
    start = stripe_fake.subscriptions[subscription_id]["current_period_start"]
    lago = lago_started(subscription_id, user, start)
    outcomes = []
    for _ in range(2):
        outcomes.append(send_lago(server, lago).json()["outcome"])
        outcomes += deliver_all(stripe_fake, [paid, updated])
    assert outcomes.count("applied") == 1
    assert balance(server, user) == 5_000
    assert me(server, user)["current_period_start"].startswith(
        datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"))


def test_a_late_renewal_grants_its_period_and_the_next_once_each(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    first = stripe_fake.renew(subscription_id)
    second = stripe_fake.renew(subscription_id)
    deliver_all(stripe_fake, [second[1]])  # the second period's invoice.paid first
    deliver_all(stripe_fake, [first[1], first[0], second[0], first[1]])
    assert balance(server, user) == 3 * 2_500


def test_cancel_then_period_end_removes_the_plan_and_grants_nothing_more(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    cancelled = httpx.post(f"{server.url}/v1/subscriptions/cancel", headers=user_headers(user),
                           json={})
    assert cancelled.json()["status"] == "cancelled"
    assert stripe_fake.subscriptions[subscription_id]["cancel_at_period_end"] is True
    assert me(server, user)["plan"] == "standard"  # until the period ends
    deliver_all(stripe_fake, stripe_fake.end_period(subscription_id))
    state = me(server, user)
    assert (state["plan"], state["status"], state["subscription_id"]) == ("free", "none", None)
    late = stripe_fake.event("invoice.paid", {
        "id": "in_late", "object": "invoice", "subscription": subscription_id,
        "subscription_details": {"metadata": {"user_id": str(user), "plan": "standard"}},
        "lines": {"data": [{"period": {"start": int(time.time()) + 99,
                                       "end": int(time.time()) + 999}}]}})
    assert stripe_fake.deliver(late).status_code == 409  # no such subscription any more
    assert balance(server, user) == 2_500


def test_past_due_grants_nothing_until_the_invoice_is_paid(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    deliver_all(stripe_fake, stripe_fake.renew(subscription_id, paid=False))
    assert me(server, user)["status"] == "past_due"
    assert balance(server, user) == 2_500
    invoice_id = stripe_fake.subscriptions[subscription_id]["latest_invoice"]
    deliver_all(stripe_fake, stripe_fake.pay_invoice(invoice_id))
    assert me(server, user)["status"] == "active"
    assert balance(server, user) == 5_000


def test_lago_signatures_hmac_and_jwt_good_and_bad(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    _, paid = stripe_fake.renew(subscription_id)
    start = stripe_fake.subscriptions[subscription_id]["current_period_start"]
    body = lago_started(subscription_id, user, start)
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for refused in (
        send_lago(server, body, signature="bm90IGEgc2lnbmF0dXJl"),
        send_lago(server, body, algorithm="jwt", key=forged_key),
        send_lago(server, body, algorithm="jwt", signature=jwt.encode(
            {"data": body.decode() + " ", "iss": LAGO_ISSUER}, LAGO_KEY, algorithm="RS256")),
        send_lago(server, body + b" ", signature=base64.b64encode(  # tampered body
            hmac.new(LAGO_HMAC_KEY.encode(), body, hashlib.sha256).digest()).decode()),
    ):
        assert refused.status_code == 400
    assert balance(server, user) == 2_500
    accepted = send_lago(server, body, algorithm="jwt")
    assert accepted.json() == {"received": True, "outcome": "applied"}
    assert balance(server, user) == 5_000
    assert stripe_fake.deliver(paid).json()["outcome"] == "duplicate"
    recorded = send_lago(server, json.dumps({"webhook_type": "invoice.created",
                                             "object_type": "invoice", "invoice": {}}).encode())
    assert recorded.json()["outcome"] == "recorded"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'zbilling_lago_webhooks_total{outcome="recorded",type="invoice.created"}' in metrics


def test_a_lago_redelivery_is_acknowledged_once(server, stripe_fake):
    user = new_user()
    subscription_id = subscribe(server, stripe_fake, user)
    stripe_fake.renew(subscription_id)
    start = stripe_fake.subscriptions[subscription_id]["current_period_start"]
    body = lago_started(subscription_id, user, start)
    signature = base64.b64encode(hmac.new(LAGO_HMAC_KEY.encode(), body,
                                          hashlib.sha256).digest()).decode()
    headers = {"X-Lago-Signature": signature, "X-Lago-Signature-Algorithm": "hmac",
               "X-Lago-Unique-Key": str(uuid.uuid4())}
    first = httpx.post(f"{server.url}/webhooks/lago", content=body, headers=headers)
    again = httpx.post(f"{server.url}/webhooks/lago", content=body, headers=headers)
    assert (first.json()["outcome"], again.json()["outcome"]) == ("applied", "duplicate")
    terminated = json.dumps({"webhook_type": "subscription.terminated",
                             "object_type": "subscription",
                             "subscription": {"external_id": subscription_id,
                                              "external_customer_id": str(user)}}).encode()
    assert send_lago(server, terminated).json()["outcome"] == "applied"
    assert me(server, user)["plan"] == "free"


def test_an_admin_puts_an_account_on_enterprise_with_custom_credits(server):
    user = new_user()
    httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    url = f"{server.url}/v1/admin/subscriptions"
    admin = {"X-Admin-Key": ADMIN_KEY}
    missing = httpx.post(url, headers=admin, json={"user_id": str(user), "plan": "enterprise"})
    assert missing.status_code == 400
    assert missing.json()["error"]["details"] == {"field": "monthly_credits"}
    set_plan = httpx.post(url, headers=admin, json={"user_id": str(user), "plan": "enterprise",
                                                   "monthly_credits": 90_000})
    assert set_plan.status_code == 200, set_plan.text
    assert (set_plan.json()["managed_by"], set_plan.json()["monthly_credits"]) == ("admin",
                                                                                 90_000)
    assert balance(server, user) == 90_000
    assert httpx.post(url, json={"user_id": str(user), "plan": "free"}).status_code == 401
    ended = httpx.post(url, headers=admin, json={"user_id": str(user), "plan": "free"})
    assert ended.json()["status"] == "none"


async def test_the_sweeper_renews_admin_plans_and_ends_cancelled_ones(tmp_path):
    now = {"ms": 1_700_000_000_000}
    renewing, leaving = new_user(), new_user()
    async with open_billing(tmp_path / "data", wall_clock_ms=lambda: now["ms"]) as billing:
        for user in (renewing, leaving):
            await billing.open_account(user)
            await billing.subscriptions.subscribe(
                user, f"zb-{user}", "enterprise", monthly_credits=1_000,
                managed_by=Manager.ADMIN, period_start_ms=now["ms"],
                period_end_ms=now["ms"] + MONTH_MS, lago_plan_code=None)
        await billing.subscriptions.cancel(leaving)
    now["ms"] += 2 * MONTH_MS + 1  # two periods pass while the server is down
    async with open_billing(tmp_path / "data", wall_clock_ms=lambda: now["ms"]) as billing:
        # At start the scheduler finds both deadlines due; each renewal's next deadline is
        # due too, so the renewals follow one another at once.
        with trio.fail_after(15):
            while (await billing.get_account(renewing)).lifetime_granted_cents < 3_000:
                await trio.sleep(0.1)
        await trio.sleep(1.5)  # nothing further is due
        renewed = await billing.get_account(renewing)
        gone = await billing.get_account(leaving)
    assert renewed.lifetime_granted_cents == 3 * 1_000  # the first period and two renewals
    assert renewed.subscription.period_start_ms // 1000 == (1_700_000_000_000
                                                            + 2 * MONTH_MS) // 1000
    assert gone.subscription is None
    assert gone.lifetime_granted_cents == 1_000


def test_the_client_library_manages_subscriptions(server, stripe_fake):
    user = new_user()
    with BillingClient(server.url, bearer_token=f"test-token:{user}",
                       admin_key=ADMIN_KEY) as client:
        assert client.subscription().status == "none"
        checkout = client.subscribe("standard")
        already = len(stripe_fake.events)
        stripe_fake.complete_session(checkout.session_id)
        deliver_all(stripe_fake, stripe_fake.events[already:])
        assert (client.subscription().plan, client.balance().balance_cents) == ("standard",
                                                                               2_500)
        assert client.billing_portal().url.startswith(stripe_fake.url)
        assert client.cancel_subscription().status == "cancelled"
        other = new_user()
        httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(other))
        assert client.set_plan(other, "pro").monthly_credits == 6_000
        with pytest.raises(BadRequest):
            client.set_plan(other, "enterprise")
