"""Stripe payments against a real server and the fake Stripe on 127.0.0.1: purchases, signed
webhooks applied once, refunds, the payment history and auto-refill."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.client import BadRequest, BillingClient
from tests.conftest import new_user
from tests.fake_stripe import API_KEY, PM_DECLINED, PM_OK, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, Server, service_headers, user_headers

pytestmark = pytest.mark.slow

WAIT_S = 30
REFILL = {"enabled": True, "trigger_below_cents": 500, "refill_amount_cents": 2_500}


@pytest.fixture(scope="module")
def stripe_fake():
    fake = FakeStripe()
    fake.start()
    yield fake
    fake.close()


def stripe_env(fake: FakeStripe) -> dict[str, str]:
    return {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": fake.url, "FRONTEND_URL": "https://app.example",
            "AUTO_REFILL_RETRY_S": "1"}


@pytest.fixture(scope="module")
def server(stripe_fake, tmp_path_factory, workers):
    running = Server(tmp_path_factory.mktemp("stripe"), env=stripe_env(stripe_fake),
                     workers=workers)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def webhooks_to_the_server(server, stripe_fake):
    """Each test's events go to the module's server (a test may point them elsewhere)."""
    stripe_fake.webhook_url = f"{server.url}/webhooks/stripe"


def balance(server: Server, user) -> dict:
    return httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()


def entries(server: Server, user, kind: str) -> list[dict]:
    page = httpx.get(f"{server.url}/v1/credits/transactions?limit=100",
                     headers=user_headers(user)).json()
    return [entry for entry in page["transactions"] if entry["type"] == kind]


def purchase(server: Server, fake: FakeStripe, user, usd: int = 50) -> tuple[dict, dict]:
    """Buy through Checkout and deliver the completed session; (reply, event)."""
    answer = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(user),
                        json={"amount_usd": usd})
    assert answer.status_code == 200, answer.text
    event = fake.complete_session(answer.json()["session_id"])
    delivered = fake.deliver(event)
    assert delivered.status_code == 200, delivered.text
    assert delivered.json() == {"received": True, "outcome": "applied"}
    return answer.json(), event


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def spend(server: Server, user, cents: int, event_id: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                      json={"event_id": f"{user}:{event_id}", "user_id": str(user),
                            "cost_cents": cents})


def refill_intents(fake: FakeStripe, customer: str) -> list[dict]:
    return [intent for intent in fake.payment_intents.values()
            if intent["customer"] == customer
            and intent["metadata"].get("kind") == "auto_refill"]


def test_a_purchase_goes_from_checkout_to_credits(server, stripe_fake):
    user = new_user()
    reply, event = purchase(server, stripe_fake, user, 50)
    assert (reply["credits"], reply["price_cents"]) == (5_000, 5_000)
    assert reply["checkout_url"].startswith(stripe_fake.url)
    session = stripe_fake.sessions[reply["session_id"]]
    assert session["client_reference_id"] == str(user)
    assert session["metadata"] == {"kind": "purchase", "user_id": str(user), "credits": "5000"}
    assert session["success_url"].startswith("https://app.example/")
    assert balance(server, user)["balance_cents"] == 5_000
    [entry] = entries(server, user, "purchase")
    assert entry["amount_cents"] == 5_000
    account = httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user)).json()
    assert account["stripe_customer_id"] == session["customer"]
    assert account["lifetime_purchased_cents"] == 5_000
    # The same payment announced again under another event id is not credited twice.
    payment = stripe_fake.payment_intents[event["data"]["object"]["payment_intent"]]
    again = stripe_fake.deliver(stripe_fake.event("payment_intent.succeeded", payment))
    assert again.json()["outcome"] == "duplicate"
    assert balance(server, user)["balance_cents"] == 5_000


def test_a_second_purchase_reuses_the_customer(server, stripe_fake):
    user = new_user()
    first, _ = purchase(server, stripe_fake, user, 5)
    second, _ = purchase(server, stripe_fake, user, 7)
    customers = {stripe_fake.sessions[reply["session_id"]]["customer"]
                 for reply in (first, second)}
    assert len(customers) == 1
    assert balance(server, user)["balance_cents"] == 1_200


@pytest.mark.parametrize("usd", [4.99, 1000.01, 10.005, "ten", True])
def test_purchase_amounts_are_validated(server, usd):
    user = new_user()
    answer = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(user),
                        json={"amount_usd": usd})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["field"] == "amount_usd"


def test_an_amount_counts_by_value_not_by_its_spelling(server):
    answer = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(new_user()),
                        content=b'{"amount_usd": 10.500}')
    assert (answer.status_code, answer.json()["credits"]) == (200, 1_050)


def test_one_webhook_delivered_five_times_concurrently_and_after_a_restart_credits_once(
    stripe_fake, tmp_path
):
    running = Server(tmp_path / "data", env=stripe_env(stripe_fake))
    try:
        stripe_fake.webhook_url = f"{running.url}/webhooks/stripe"
        user = new_user()
        answer = httpx.post(f"{running.url}/v1/credits/purchase", headers=user_headers(user),
                            json={"amount_usd": 20})
        event = stripe_fake.complete_session(answer.json()["session_id"])
        with ThreadPoolExecutor(5) as pool:
            outcomes = list(pool.map(lambda _: stripe_fake.deliver(event), range(5)))
        assert all(outcome.status_code == 200 for outcome in outcomes)
        assert sorted(outcome.json()["outcome"] for outcome in outcomes) == [
            "applied", "duplicate", "duplicate", "duplicate", "duplicate"]
        assert running.stop()[0] == 0
        running = Server(tmp_path / "data", env=stripe_env(stripe_fake), port=running.port)
        assert stripe_fake.deliver(event).json()["outcome"] == "duplicate"
        assert balance(running, user)["balance_cents"] == 2_000
        assert len(entries(running, user, "purchase")) == 1
    finally:
        running.stop()


def test_bad_or_expired_signatures_are_refused_and_change_nothing(server, stripe_fake):
    user = new_user()
    answer = httpx.post(f"{server.url}/v1/credits/purchase", headers=user_headers(user),
                        json={"amount_usd": 10})
    event = stripe_fake.complete_session(answer.json()["session_id"])
    for refused in (
        stripe_fake.deliver(event, secret="whsec_someone_else"),
        stripe_fake.deliver(event, timestamp=int(time.time()) - 600),
        stripe_fake.deliver(event, signature="t=1,v1=00"),
        httpx.post(stripe_fake.webhook_url, content=b"{}",
                   headers={"Content-Type": "application/json"}),
    ):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "bad_request"
    assert balance(server, user)["balance_cents"] == 0
    assert stripe_fake.deliver(event).json()["outcome"] == "applied"


def test_unknown_events_are_acknowledged_and_counted(server, stripe_fake):
    answer = stripe_fake.deliver(stripe_fake.event("customer.created", {"id": "cus_x"}))
    assert answer.json() == {"received": True, "outcome": "ignored"}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'zbilling_stripe_webhooks_total{outcome="ignored",type="other"}' in metrics


def test_a_refund_takes_the_credits_back_once(server, stripe_fake):
    user = new_user()
    _, event = purchase(server, stripe_fake, user, 40)
    assert spend(server, user, 3_500, "before-refund").status_code == 200
    payment_id = event["data"]["object"]["payment_intent"]
    partial = stripe_fake.refund(payment_id, amount=1_000)
    assert stripe_fake.deliver(partial).json()["outcome"] == "applied"
    assert stripe_fake.deliver(partial).json()["outcome"] == "duplicate"
    assert balance(server, user)["balance_cents"] == -500  # spent credits become a debt
    rest = stripe_fake.refund(payment_id)
    assert stripe_fake.deliver(rest).json()["outcome"] == "applied"
    assert stripe_fake.deliver(partial).json()["outcome"] == "duplicate"  # late, older
    assert [entry["amount_cents"] for entry in entries(server, user, "refund")] == [-3_000,
                                                                                  -1_000]
    assert balance(server, user)["balance_cents"] == -3_500
    refused = spend(server, user, 1, "after-refund")
    assert refused.status_code == 402


def test_a_refund_takes_back_from_the_refunded_purchase_lot_first(server, stripe_fake):
    user = new_user()
    purchase(server, stripe_fake, user, 10)
    (bought,) = entries(server, user, "purchase")
    bonus = httpx.post(f"{server.url}/v1/credits/add", headers={"X-Admin-Key": ADMIN_KEY},
                       json={"user_id": str(user), "amount_cents": 500, "priority": 0})
    assert bonus.status_code == 200, bonus.text
    lots = httpx.get(f"{server.url}/v1/credits/lots", headers=user_headers(user)).json()["lots"]
    assert [(lot["source"], lot["category"], lot["paid_usd_cents"]) for lot in lots] == [
        ("bonus", "promotional", None), ("purchase", "paid", 1_000)]
    payment_id = entries(server, user, "purchase")[0]["metadata"]["payment_intent"]
    assert stripe_fake.deliver(stripe_fake.refund(payment_id, amount=400)).json()[
        "outcome"] == "applied"
    (refund,) = entries(server, user, "refund")
    # The bonus burns first for usage, but a refund takes from the purchase it refunds.
    assert refund["lot_draws"] == [{"lot_id": bought["id"], "amount_cents": 400}]
    assert balance(server, user)["promotional_cents"] == 500


def test_the_payment_history_comes_from_stripe(server, stripe_fake):
    user = new_user()
    assert httpx.get(f"{server.url}/v1/payments", headers=user_headers(user)).json() == {
        "payments": [], "has_more": False}
    purchase(server, stripe_fake, user, 5)
    purchase(server, stripe_fake, user, 6)
    page = httpx.get(f"{server.url}/v1/payments?limit=1", headers=user_headers(user)).json()
    assert page["has_more"] is True
    assert [(p["amount_cents"], p["credits"], p["kind"], p["status"])
            for p in page["payments"]] == [(600, 600, "purchase", "succeeded")]
    full = httpx.get(f"{server.url}/v1/payments", headers=user_headers(user)).json()
    assert [p["credits"] for p in full["payments"]] == [600, 500]
    assert httpx.get(f"{server.url}/v1/payments?limit=101",
                     headers=user_headers(user)).status_code == 400
    unknown = httpx.get(f"{server.url}/v1/payments?starting_after=pi_nope",
                        headers=user_headers(user))
    assert (unknown.status_code, unknown.json()["error"]["details"]) == (
        404, {"starting_after": "pi_nope"})


def refilling_user(server: Server, fake: FakeStripe, method: str) -> tuple[object, str]:
    """A user with a Stripe customer, a card and auto-refill on, at 1,000 credits."""
    user = new_user()
    reply, _ = purchase(server, fake, user, 10)
    customer = fake.sessions[reply["session_id"]]["customer"]
    fake.set_default_payment_method(customer, method)
    saved = httpx.post(f"{server.url}/v1/credits/auto-refill", headers=user_headers(user),
                       json=REFILL)
    assert saved.status_code == 200
    return user, customer


def test_auto_refill_charges_the_card_once_and_credits_once(server, stripe_fake):
    user, customer = refilling_user(server, stripe_fake, PM_OK)
    assert spend(server, user, 600, "cross").status_code == 200  # 1,000 -> 400
    wait_for(lambda: entries(server, user, "auto_refill"), "the auto-refill entry")
    assert balance(server, user)["balance_cents"] == 2_900
    [intent] = refill_intents(stripe_fake, customer)
    assert intent["amount"] == 2_500
    assert intent["metadata"]["refill_number"] == "1"
    succeeded = next(event for event in stripe_fake.events
                     if event["type"] == "payment_intent.succeeded"
                     and event["data"]["object"]["id"] == intent["id"])
    assert stripe_fake.deliver(succeeded).json()["outcome"] == "duplicate"
    settings = httpx.get(f"{server.url}/v1/credits/auto-refill",
                         headers=user_headers(user)).json()
    assert (settings["refill_in_flight"], settings["last_error"]) == (False, None)
    created = [request for request in stripe_fake.requests
               if request.path == "/v1/payment_intents" and request.method == "POST"
               and request.params.get("customer") == customer]
    assert created[0].params["off_session"] == "true"
    assert created[0].params["confirm"] == "true"
    assert created[0].headers["Idempotency-Key"].startswith("zbilling-refill-")


def test_fifty_concurrent_debits_across_the_trigger_raise_one_refill(server, stripe_fake):
    user, customer = refilling_user(server, stripe_fake, PM_OK)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: spend(server, user, 12, f"burst-{n}"), range(50)))
    assert all(answer.status_code == 200 for answer in answers)  # 1,000 - 600 = 400
    wait_for(lambda: entries(server, user, "auto_refill"), "the auto-refill entry")
    time.sleep(1)  # give a second refill every chance to show up
    assert len(entries(server, user, "auto_refill")) == 1
    assert len(refill_intents(stripe_fake, customer)) == 1
    assert balance(server, user)["balance_cents"] == 2_900


def test_a_declined_card_is_retried_then_auto_refill_switches_off(server, stripe_fake):
    user, customer = refilling_user(server, stripe_fake, PM_DECLINED)
    assert spend(server, user, 600, "cross").status_code == 200

    def switched_off() -> dict | None:
        settings = httpx.get(f"{server.url}/v1/credits/auto-refill",
                             headers=user_headers(user)).json()
        return settings if not settings["enabled"] else None

    settings = wait_for(switched_off, "auto-refill to switch off")
    assert "card_declined" in settings["last_error"]
    assert settings["refill_in_flight"] is False
    attempts = [request for request in stripe_fake.requests
                if request.path == "/v1/payment_intents" and request.method == "POST"
                and request.params.get("customer") == customer]
    keys = [request.headers["Idempotency-Key"] for request in attempts]
    assert len(set(keys)) == 4  # REFILL_ATTEMPTS_MAX attempts, each its own key
    assert entries(server, user, "auto_refill") == []
    assert balance(server, user)["balance_cents"] == 400
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'zbilling_auto_refill_attempts_total{outcome="gave_up"}' in metrics


def test_debits_go_on_while_stripe_is_unreachable_and_the_refill_comes_later(
    server, stripe_fake
):
    user, _ = refilling_user(server, stripe_fake, PM_OK)
    stripe_fake.stop()
    try:
        for n in range(5):
            assert spend(server, user, 150, f"offline-{n}").status_code == 200  # -> 250
        wait_for(lambda: 'outcome="stripe_unavailable"' in httpx.get(
            f"{server.url}/metrics").text, "a failed attempt")
        assert entries(server, user, "auto_refill") == []
    finally:
        stripe_fake.start()
    wait_for(lambda: entries(server, user, "auto_refill"), "the refill after Stripe is back")
    assert balance(server, user)["balance_cents"] == 2_750


def test_the_client_library_buys_and_lists_payments(server, stripe_fake):
    user = new_user()
    with BillingClient(server.url, bearer_token=f"test-token:{user}") as client:
        bought = client.purchase_credits("12.50")
        assert (bought.credits, bought.price_cents) == (1_250, 1_250)
        stripe_fake.deliver(stripe_fake.complete_session(bought.session_id))
        assert client.balance().balance_cents == 1_250
        [payment] = client.payments().payments
        assert (payment.credits, payment.kind) == (1_250, "purchase")
        with pytest.raises(BadRequest):
            client.purchase_credits("2")


def test_auto_refill_uses_the_card_of_the_last_purchase_when_none_is_default(server,
                                                                            stripe_fake):
    user = new_user()
    reply, _ = purchase(server, stripe_fake, user, 10)
    customer = stripe_fake.sessions[reply["session_id"]]["customer"]
    assert stripe_fake.customers[customer]["invoice_settings"]["default_payment_method"] is None
    httpx.post(f"{server.url}/v1/credits/auto-refill", headers=user_headers(user), json=REFILL)
    assert spend(server, user, 600, "cross").status_code == 200
    wait_for(lambda: entries(server, user, "auto_refill"), "the auto-refill entry")
    [intent] = refill_intents(stripe_fake, customer)
    assert intent["payment_method"] == PM_OK


def test_a_crash_while_stripe_charges_a_refill_charges_once_and_credits_once(stripe_fake,
                                                                           tmp_path):
    running = Server(tmp_path / "data", env=stripe_env(stripe_fake))
    try:
        stripe_fake.webhook_url = f"{running.url}/webhooks/stripe"
        user, customer = refilling_user(running, stripe_fake, PM_OK)
        stripe_fake.answer_delays[("POST", "/v1/payment_intents")] = 3.0
        assert spend(running, user, 600, "cross").status_code == 200
        wait_for(lambda: refill_intents(stripe_fake, customer), "Stripe to charge the card")
        running.kill()  # SIGKILL while Stripe's answer is on its way: the card is charged
        stripe_fake.answer_delays.clear()
        running = Server(tmp_path / "data", env=stripe_env(stripe_fake), port=running.port)
        wait_for(lambda: entries(running, user, "auto_refill"), "the refill after the restart")
        [intent] = refill_intents(stripe_fake, customer)  # the same key met the same payment
        succeeded = next(event for event in stripe_fake.events
                         if event["type"] == "payment_intent.succeeded"
                         and event["data"]["object"]["id"] == intent["id"])
        assert stripe_fake.deliver(succeeded).json()["outcome"] == "duplicate"
        assert len(entries(running, user, "auto_refill")) == 1
        assert balance(running, user)["balance_cents"] == 2_900
    finally:
        running.stop()
