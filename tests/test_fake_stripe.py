"""The fake Stripe against the real `stripe` library (async, under trio), and its webhook
signatures against `stripe.Webhook.construct_event`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from tests.fake_stripe import (
    API_KEY,
    PM_AUTH_REQUIRED,
    PM_DECLINED,
    PM_OK,
    WEBHOOK_SECRET,
    FakeStripe,
    decode_form,
)

# stripe's HTTPXClient passes the form body as `data=<bytes>`, which httpx 0.28 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

LINE_ITEM = {"quantity": 2, "price_data": {"currency": "usd", "unit_amount": 1_250,
                                           "product_data": {"name": "Credits"}}}


@pytest.fixture
def fake():
    running = FakeStripe()
    running.start()
    yield running
    running.close()


def client_for(fake: FakeStripe, api_key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": fake.url},
                               http_client=stripe.HTTPXClient(), max_network_retries=0)


@pytest.fixture
def client(fake):
    return client_for(fake)


async def new_customer(client: stripe.StripeClient, **extra) -> stripe.Customer:
    return await client.v1.customers.create_async(
        params={"email": "a@example.com", "metadata": {"user_id": "u1"}, **extra})


async def paid_intent(client: stripe.StripeClient, customer: str, amount: int = 2_000,
                      **extra) -> stripe.PaymentIntent:
    return await client.v1.payment_intents.create_async(params={
        "amount": amount, "currency": "usd", "customer": customer, "payment_method": PM_OK,
        "confirm": True, "off_session": True, "metadata": {"kind": "auto_refill"}, **extra})


def test_form_decoding_nests_dicts_and_lists():
    pairs = [("metadata[user_id]", "u1"), ("metadata[0]", "zero"),
             ("line_items[0][price_data][unit_amount]", "500"), ("line_items[0][quantity]", "1"),
             ("line_items[1][price]", "price_x"), ("line_items[1][quantity]", "3"),
             ("confirm", "true")]
    assert decode_form(pairs) == {
        "metadata": {"user_id": "u1", "0": "zero"},
        "line_items": [{"price_data": {"unit_amount": "500"}, "quantity": "1"},
                       {"price": "price_x", "quantity": "3"}],
        "confirm": "true",
    }


async def test_customers_are_created_retrieved_and_updated(fake, client):
    customer = await new_customer(client, name="Ada")
    assert customer.id.startswith("cus_")
    assert customer.metadata["user_id"] == "u1"
    assert customer.invoice_settings.default_payment_method is None
    again = await client.v1.customers.retrieve_async(customer.id)
    assert (again.id, again.email, again.name) == (customer.id, "a@example.com", "Ada")
    updated = await client.v1.customers.update_async(customer.id, params={
        "metadata": {"plan": "pro"}, "invoice_settings": {"default_payment_method": PM_OK}})
    assert updated.metadata.to_dict() == {"user_id": "u1", "plan": "pro"}
    assert fake.customers[customer.id]["invoice_settings"]["default_payment_method"] == PM_OK
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.customers.retrieve_async("cus_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    [request] = [r for r in fake.requests if r.method == "POST" and r.path == "/v1/customers"]
    assert request.params["metadata"] == {"user_id": "u1"}
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_a_checkout_session_has_a_url_and_a_total(fake, client):
    customer = await new_customer(client)
    session = await client.v1.checkout.sessions.create_async(params={
        "mode": "payment", "customer": customer.id, "client_reference_id": "u1",
        "line_items": [LINE_ITEM], "success_url": "https://app.example/ok",
        "cancel_url": "https://app.example/no", "metadata": {"kind": "purchase"},
        "payment_intent_data": {"metadata": {"kind": "purchase", "user_id": "u1"}}})
    assert session.id.startswith("cs_test_")
    assert session.url == f"{fake.url}/c/pay/{session.id}"
    assert (session.amount_total, session.currency) == (2_500, "usd")
    assert (session.status, session.payment_status, session.payment_intent) == (
        "open", "unpaid", None)
    assert fake.sessions[session.id]["metadata"] == {"kind": "purchase"}
    fetched = await client.v1.checkout.sessions.retrieve_async(session.id)
    assert fetched.client_reference_id == "u1"

    event = fake.complete_session(session.id)
    assert event["type"] == "checkout.session.completed"
    completed = event["data"]["object"]
    assert (completed["status"], completed["payment_status"]) == ("complete", "paid")
    intent = fake.payment_intents[completed["payment_intent"]]
    assert (intent["status"], intent["amount"]) == ("succeeded", 2_500)
    assert intent["metadata"] == {"kind": "purchase", "user_id": "u1"}
    assert fake.charges[intent["latest_charge"]]["metadata"] == intent["metadata"]
    assert [e["type"] for e in fake.events] == ["payment_intent.succeeded",
                                                "checkout.session.completed"]

    unpaid = await client.v1.checkout.sessions.create_async(params={
        "mode": "payment", "line_items": [LINE_ITEM], "success_url": "https://app.example/"})
    assert fake.complete_session(unpaid.id, paid=False)["data"]["object"][
        "payment_status"] == "unpaid"
    assert fake.sessions[unpaid.id]["payment_intent"] is None


@pytest.mark.parametrize(("params", "param"), [
    ({"mode": "payment", "line_items": [LINE_ITEM]}, "success_url"),
    ({"mode": "payment", "success_url": "https://a.example/"}, "line_items"),
    ({"success_url": "https://a.example/", "line_items": [LINE_ITEM]}, "mode"),
    ({"mode": "payment", "success_url": "https://a.example/",
      "line_items": [{"price": "price_x"}]}, "line_items[0][quantity]"),
    ({"mode": "payment", "success_url": "https://a.example/", "line_items": [LINE_ITEM],
      "customer": "cus_nope"}, "customer"),
])
async def test_bad_checkout_sessions_are_refused_with_the_param(client, params, param):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.checkout.sessions.create_async(params=params)
    assert (refused.value.http_status, refused.value.param) == (400, param)


async def test_a_payment_intent_with_a_good_card_succeeds(fake, client):
    customer = await new_customer(client)
    intent = await paid_intent(client, customer.id)
    assert (intent.status, intent.amount_received) == ("succeeded", 2_000)
    charge = fake.charges[intent.latest_charge]
    assert (charge["payment_intent"], charge["customer"]) == (intent.id, customer.id)
    assert charge["metadata"] == {"kind": "auto_refill"}
    [event] = fake.events
    assert event["type"] == "payment_intent.succeeded"
    assert event["data"]["object"]["id"] == intent.id
    [request] = [r for r in fake.requests if r.path == "/v1/payment_intents"]
    assert (request.params["confirm"], request.params["off_session"]) == ("true", "true")
    unconfirmed = await client.v1.payment_intents.create_async(
        params={"amount": 500, "currency": "usd", "payment_method": PM_OK})
    assert unconfirmed.status == "requires_confirmation"


async def test_the_customers_default_payment_method_is_used(fake, client):
    customer = await new_customer(client)
    fake.set_default_payment_method(customer.id, PM_OK)
    intent = await client.v1.payment_intents.create_async(params={
        "amount": 700, "currency": "usd", "customer": customer.id, "confirm": True})
    assert intent.status == "succeeded"


async def test_a_declined_card_is_a_card_error_with_the_intent(fake, client):
    customer = await new_customer(client)
    with pytest.raises(stripe.CardError) as declined:
        await client.v1.payment_intents.create_async(params={
            "amount": 2_000, "currency": "usd", "customer": customer.id,
            "payment_method": PM_DECLINED, "confirm": True, "off_session": True})
    error = declined.value
    assert (error.http_status, error.code) == (402, "card_declined")
    assert error.error is not None
    assert error.error.decline_code == "generic_decline"
    intent = error.error.payment_intent
    assert intent is not None
    assert intent["status"] == "requires_payment_method"
    assert fake.payment_intents[intent["id"]]["last_payment_error"]["code"] == "card_declined"
    assert [e["type"] for e in fake.events] == ["payment_intent.payment_failed"]

    with pytest.raises(stripe.CardError) as needs_auth:
        await client.v1.payment_intents.create_async(params={
            "amount": 2_000, "currency": "usd", "customer": customer.id,
            "payment_method": PM_AUTH_REQUIRED, "confirm": True, "off_session": True})
    assert needs_auth.value.code == "authentication_required"
    assert needs_auth.value.error.payment_intent["status"] == "requires_action"


@pytest.mark.parametrize(("params", "param"), [
    ({"amount": 2_000, "currency": "usd", "confirm": True}, "payment_method"),
    ({"amount": 49, "currency": "usd", "payment_method": PM_OK}, "amount"),
    ({"amount": 500, "currency": "usd", "customer": "cus_nope"}, "customer"),
    ({"amount": 500, "currency": "usd", "payment_method": "pm_nope"}, "payment_method"),
])
async def test_bad_payment_intents_are_refused_with_the_param(fake, client, params, param):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.payment_intents.create_async(params=params)
    assert (refused.value.http_status, refused.value.param) == (400, param)
    assert fake.payment_intents == {}


async def test_an_idempotent_retry_replays_the_first_answer(fake, client):
    customer = await new_customer(client)
    options: stripe.RequestOptions = {"idempotency_key": "refill-1"}
    params = {"amount": 2_000, "currency": "usd", "customer": customer.id,
              "payment_method": PM_OK, "confirm": True}
    first = await client.v1.payment_intents.create_async(params=params, options=options)
    second = await client.v1.payment_intents.create_async(params=params, options=options)
    assert first.id == second.id
    assert len(fake.payment_intents) == 1
    assert len(fake.events) == 1
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert fake.requests[-1].headers["Idempotency-Key"] == "refill-1"
    with pytest.raises(stripe.IdempotencyError):
        await client.v1.payment_intents.create_async(
            params={**params, "amount": 3_000}, options=options)
    assert len(fake.payment_intents) == 1


async def test_a_declined_card_is_replayed_too(fake, client):
    params = {"amount": 2_000, "currency": "usd", "payment_method": PM_DECLINED,
              "confirm": True}
    for _ in range(2):
        with pytest.raises(stripe.CardError):
            await client.v1.payment_intents.create_async(
                params=params, options={"idempotency_key": "declined-1"})
    assert len(fake.payment_intents) == 1


async def test_payment_intents_are_listed_newest_first_by_page(fake, client):
    customer = await new_customer(client)
    other = await new_customer(client)
    made = [(await paid_intent(client, customer.id, 1_000 + n)).id for n in range(5)]
    await paid_intent(client, other.id)
    page = await client.v1.payment_intents.list_async(
        params={"customer": customer.id, "limit": 3})
    assert [intent.id for intent in page.data] == made[::-1][:3]
    assert page.has_more is True
    rest = await client.v1.payment_intents.list_async(
        params={"customer": customer.id, "limit": 3, "starting_after": page.data[-1].id})
    assert [intent.id for intent in rest.data] == made[::-1][3:]
    assert rest.has_more is False
    everything = await client.v1.payment_intents.list_async()
    assert len(everything.data) == 6
    fetched = await client.v1.payment_intents.retrieve_async(made[0])
    assert fetched.amount == 1_000
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.payment_intents.list_async(params={"limit": 101})
    assert refused.value.param == "limit"


async def test_refunds_update_the_charge_and_emit_charge_refunded(fake, client):
    customer = await new_customer(client)
    intent = await paid_intent(client, customer.id, 5_000)
    refund = await client.v1.refunds.create_async(
        params={"payment_intent": intent.id, "amount": 1_000})
    assert (refund.amount, refund.status, refund.charge) == (1_000, "succeeded",
                                                             intent.latest_charge)
    event = fake.events[-1]
    assert event["type"] == "charge.refunded"
    assert event["data"]["object"]["amount_refunded"] == 1_000
    assert event["data"]["object"]["refunded"] is False
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        await client.v1.refunds.create_async(
            params={"payment_intent": intent.id, "amount": 4_001})
    assert too_much.value.param == "amount"

    rest = fake.refund(intent.id)
    charge = rest["data"]["object"]
    assert (charge["amount_refunded"], charge["refunded"]) == (5_000, True)
    assert [r["amount"] for r in charge["refunds"]["data"]] == [4_000, 1_000]
    assert fake.charges[intent.latest_charge] == charge
    assert len(fake.refunds) == 2


async def test_a_billing_portal_session_points_at_the_fake(fake, client):
    customer = await new_customer(client)
    portal = await client.v1.billing_portal.sessions.create_async(
        params={"customer": customer.id, "return_url": "https://app.example/account"})
    assert portal.url == f"{fake.url}/p/session/{portal.id}"
    assert portal.customer == customer.id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.billing_portal.sessions.create_async(params={"customer": "cus_x"})
    assert refused.value.param == "customer"


async def test_a_wrong_api_key_is_an_authentication_error(fake):
    with pytest.raises(stripe.AuthenticationError) as refused:
        await client_for(fake, "sk_test_wrong_key_123").v1.customers.create_async()
    assert refused.value.http_status == 401
    assert fake.customers == {}


async def test_an_unknown_path_is_not_found(client):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.raw_request_async("get", "/v1/nothing_here")
    assert refused.value.http_status == 404
    assert "Unrecognized request URL (GET: /v1/nothing_here)" in str(refused.value)


async def test_error_mode_is_an_api_error(fake, client):
    fake.mode = "error"
    with pytest.raises(stripe.APIError) as failed:
        await new_customer(client)
    assert failed.value.http_status == 500
    fake.mode = "ok"
    assert (await new_customer(client)).id in fake.customers


async def test_a_stopped_fake_is_unreachable_and_comes_back_on_the_same_port(fake, client):
    url = fake.url
    fake.stop()
    with pytest.raises(stripe.APIConnectionError):
        await new_customer(client)
    fake.start()
    assert fake.url == url
    assert (await new_customer(client)).id in fake.customers


def test_signatures_verify_with_the_stripe_library(fake):
    payload = json.dumps(fake.event("customer.created", {"id": "cus_1"})).encode()
    header = fake.sign(payload)
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event.type == "customer.created"
    assert event.data.object.id == "cus_1"
    for bad_payload, bad_header in [
        (payload.replace(b"cus_1", b"cus_2"), header),
        (payload, fake.sign(payload, secret="whsec_someone_else")),
        (payload, fake.sign(payload, timestamp=int(time.time()) - 600)),
        (payload, "t=1,v1=00"),
    ]:
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(bad_payload, bad_header, WEBHOOK_SECRET)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                del format, args

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((body, self.headers["Stripe-Signature"]))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


async def test_deliver_posts_a_correctly_signed_event(fake, client, receiver):
    fake.webhook_url = receiver.url
    customer = await new_customer(client)
    session = await client.v1.checkout.sessions.create_async(params={
        "mode": "payment", "customer": customer.id, "line_items": [LINE_ITEM],
        "success_url": "https://app.example/ok"})
    event = fake.complete_session(session.id)
    assert fake.deliver(event).status_code == 200
    assert fake.deliver(event, secret="whsec_other").status_code == 200
    assert fake.deliver(event, signature="t=1,v1=00").status_code == 200
    (body, header), (_, wrong_secret), (_, given) = receiver.received
    verified = stripe.Webhook.construct_event(body, header, WEBHOOK_SECRET)
    assert (verified.id, verified.type) == (event["id"], "checkout.session.completed")
    assert verified.data.object.payment_status == "paid"
    assert verified.data.object.payment_intent in fake.payment_intents
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, wrong_secret, WEBHOOK_SECRET)
    assert given == "t=1,v1=00"


# --- subscriptions and invoices --------------------------------------------------------------

DAYS_30 = 30 * 24 * 3600


async def subscribed(fake: FakeStripe, client: stripe.StripeClient
                     ) -> tuple[str, dict, list[dict]]:
    """A customer subscribed through Checkout: (subscription id, session event, all events)."""
    customer = await new_customer(client)
    session = await client.v1.checkout.sessions.create_async(params={
        "mode": "subscription", "customer": customer.id, "client_reference_id": "u1",
        "line_items": [{"price": "price_standard", "quantity": 1}],
        "subscription_data": {"metadata": {"user_id": "u1", "plan": "standard"}},
        "success_url": "https://app.example/ok"})
    event = fake.complete_session(session.id)
    return fake.sessions[session.id]["subscription"], event, list(fake.events)


async def test_a_subscription_checkout_starts_a_subscription_with_a_paid_invoice(fake, client):
    before = time.time()
    sub_id, completed, events = await subscribed(fake, client)
    assert sub_id.startswith("sub_")
    assert [e["type"] for e in events] == ["customer.subscription.created", "invoice.paid",
                                           "checkout.session.completed"]
    assert events[-1] is completed
    session = completed["data"]["object"]
    assert (session["status"], session["payment_status"], session["subscription"]) == (
        "complete", "paid", sub_id)

    sub = events[0]["data"]["object"]
    assert (sub["id"], sub["object"], sub["status"]) == (sub_id, "subscription", "active")
    assert sub["customer"] == session["customer"]
    assert sub["metadata"] == {"user_id": "u1", "plan": "standard"}
    assert (sub["cancel_at_period_end"], sub["canceled_at"], sub["livemode"]) == (
        False, None, False)
    start, end = sub["current_period_start"], sub["current_period_end"]
    assert before - 1 <= start <= time.time() and end == start + DAYS_30
    (item,) = sub["items"]["data"]
    assert item["id"].startswith("si_")
    assert (item["price"]["id"], item["quantity"]) == ("price_standard", 1)
    assert (item["current_period_start"], item["current_period_end"]) == (start, end)

    invoice = events[1]["data"]["object"]
    assert invoice["id"] == sub["latest_invoice"] and invoice["id"] in fake.invoices
    assert (invoice["status"], invoice["paid"], invoice["billing_reason"]) == (
        "paid", True, "subscription_create")
    assert (invoice["subscription"], invoice["customer"]) == (sub_id, sub["customer"])
    assert invoice["subscription_details"]["metadata"] == sub["metadata"]
    assert invoice["parent"]["subscription_details"]["subscription"] == sub_id
    (line,) = invoice["lines"]["data"]
    assert line["period"] == {"start": start, "end": end}
    assert (line["price"]["id"], line["metadata"]) == ("price_standard", sub["metadata"])

    fetched = await client.v1.subscriptions.retrieve_async(sub_id)
    assert (fetched.id, fetched.status, fetched.metadata["plan"]) == (sub_id, "active",
                                                                     "standard")
    assert fetched["items"].data[0].current_period_end == end
    fetched_invoice = await client.v1.invoices.retrieve_async(invoice["id"])
    assert fetched_invoice.billing_reason == "subscription_create"


async def test_a_subscription_checkout_without_a_customer_makes_one(fake, client):
    session = await client.v1.checkout.sessions.create_async(params={
        "mode": "subscription", "customer_email": "b@example.com",
        "line_items": [{"price": "price_standard", "quantity": 1}],
        "success_url": "https://app.example/ok"})
    customer = fake.complete_session(session.id)["data"]["object"]["customer"]
    assert fake.customers[customer]["email"] == "b@example.com"
    (sub,) = fake.subscriptions.values()
    assert (sub["customer"], sub["metadata"]) == (customer, {})


async def test_a_paid_renewal_moves_the_period_and_pays_a_cycle_invoice(fake, client):
    sub_id, _, _ = await subscribed(fake, client)
    start = fake.subscriptions[sub_id]["current_period_start"]
    end = fake.subscriptions[sub_id]["current_period_end"]
    updated, paid = fake.renew(sub_id)
    assert fake.events[-2:] == [updated, paid]
    assert updated["type"] == "customer.subscription.updated"
    assert updated["data"]["previous_attributes"] == {"current_period_start": start,
                                                      "current_period_end": end}
    sub = updated["data"]["object"]
    assert (sub["current_period_start"], sub["current_period_end"]) == (end, end + DAYS_30)
    assert sub["items"]["data"][0]["current_period_start"] == end
    assert sub["status"] == "active"
    assert paid["type"] == "invoice.paid"
    invoice = paid["data"]["object"]
    assert (invoice["billing_reason"], invoice["status"], invoice["subscription"]) == (
        "subscription_cycle", "paid", sub_id)
    assert invoice["lines"]["data"][0]["period"] == {"start": end, "end": end + DAYS_30}
    assert invoice["lines"]["data"][0]["metadata"] == sub["metadata"]
    assert sub["latest_invoice"] == invoice["id"]


async def test_an_unpaid_renewal_leaves_the_invoice_open_until_it_is_paid(fake, client):
    sub_id, _, _ = await subscribed(fake, client)
    end = fake.subscriptions[sub_id]["current_period_end"]
    failed, updated = fake.renew(sub_id, paid=False)
    assert (failed["type"], updated["type"]) == ("invoice.payment_failed",
                                                 "customer.subscription.updated")
    invoice = failed["data"]["object"]
    assert (invoice["status"], invoice["paid"], invoice["billing_reason"]) == (
        "open", False, "subscription_cycle")
    assert updated["data"]["object"]["status"] == "past_due"
    assert updated["data"]["object"]["current_period_start"] == end
    assert updated["data"]["previous_attributes"]["status"] == "active"
    assert (await client.v1.subscriptions.retrieve_async(sub_id)).status == "past_due"

    paid, active = fake.pay_invoice(invoice["id"])
    assert (paid["type"], active["type"]) == ("invoice.paid", "customer.subscription.updated")
    assert (paid["data"]["object"]["status"], paid["data"]["object"]["paid"]) == ("paid", True)
    assert active["data"]["object"]["status"] == "active"
    assert active["data"]["previous_attributes"] == {"status": "past_due"}
    assert fake.events[-2:] == [paid, active]
    with pytest.raises(ValueError, match="is paid"):
        fake.pay_invoice(invoice["id"])


async def test_cancel_at_period_end_then_the_period_ends(fake, client):
    sub_id, _, _ = await subscribed(fake, client)
    end = fake.subscriptions[sub_id]["current_period_end"]
    updated = await client.v1.subscriptions.update_async(
        sub_id, params={"cancel_at_period_end": True, "metadata": {"reason": "price"}})
    assert (updated.status, updated.cancel_at_period_end, updated.cancel_at) == (
        "active", True, end)
    assert updated.metadata.to_dict() == {"user_id": "u1", "plan": "standard",
                                          "reason": "price"}
    event = fake.events[-1]
    assert event["type"] == "customer.subscription.updated"
    assert event["data"]["object"]["cancel_at_period_end"] is True
    assert event["data"]["previous_attributes"]["cancel_at_period_end"] is False

    (deleted,) = fake.end_period(sub_id)
    assert deleted["type"] == "customer.subscription.deleted"
    assert deleted["data"]["object"]["status"] == "canceled"
    assert deleted["data"]["object"]["ended_at"] is not None
    assert fake.events[-1] is deleted
    with pytest.raises(ValueError, match="canceled"):
        fake.end_period(sub_id)


async def test_without_cancel_at_period_end_the_period_end_renews(fake, client):
    sub_id, _, _ = await subscribed(fake, client)
    await client.v1.subscriptions.update_async(sub_id, params={"cancel_at_period_end": True})
    resumed = await client.v1.subscriptions.update_async(
        sub_id, params={"cancel_at_period_end": False})
    assert (resumed.cancel_at_period_end, resumed.cancel_at, resumed.canceled_at) == (
        False, None, None)
    updated, paid = fake.end_period(sub_id)
    assert (updated["type"], paid["type"]) == ("customer.subscription.updated", "invoice.paid")
    assert fake.subscriptions[sub_id]["status"] == "active"


async def test_a_subscription_canceled_now_is_deleted(fake, client):
    sub_id, _, _ = await subscribed(fake, client)
    canceled = await client.v1.subscriptions.cancel_async(sub_id)
    assert (canceled.id, canceled.status) == (sub_id, "canceled")
    assert canceled.canceled_at is not None
    assert fake.events[-1]["type"] == "customer.subscription.deleted"
    assert fake.events[-1]["data"]["object"]["status"] == "canceled"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.subscriptions.update_async(sub_id,
                                                   params={"cancel_at_period_end": True})
    assert refused.value.http_status == 400
    # Metadata can still change.
    again = await client.v1.subscriptions.update_async(sub_id, params={"metadata": {"x": "1"}})
    assert again.metadata["x"] == "1"
    with pytest.raises(ValueError):
        fake.renew(sub_id)


async def test_subscriptions_are_listed_newest_first_without_canceled_ones(fake, client):
    first, _, _ = await subscribed(fake, client)
    customer = fake.subscriptions[first]["customer"]
    session = await client.v1.checkout.sessions.create_async(params={
        "mode": "subscription", "customer": customer,
        "line_items": [{"price": "price_standard", "quantity": 1}],
        "success_url": "https://app.example/ok"})
    fake.complete_session(session.id)
    second = fake.sessions[session.id]["subscription"]
    other, _, _ = await subscribed(fake, client)
    listed = await client.v1.subscriptions.list_async(params={"customer": customer})
    assert [sub.id for sub in listed.data] == [second, first]
    page = await client.v1.subscriptions.list_async(params={"customer": customer, "limit": 1})
    assert ([sub.id for sub in page.data], page.has_more) == ([second], True)
    await client.v1.subscriptions.cancel_async(second)
    listed = await client.v1.subscriptions.list_async(params={"customer": customer})
    assert [sub.id for sub in listed.data] == [first]
    listed = await client.v1.subscriptions.list_async(params={"customer": customer,
                                                              "status": "all"})
    assert [sub.id for sub in listed.data] == [second, first]
    everyone = await client.v1.subscriptions.list_async()
    assert [sub.id for sub in everyone.data] == [other, first]


async def test_an_unknown_subscription_is_not_found(client):
    for call in (client.v1.subscriptions.retrieve_async("sub_nope"),
                 client.v1.subscriptions.update_async(
                     "sub_nope", params={"cancel_at_period_end": True}),
                 client.v1.subscriptions.cancel_async("sub_nope")):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            await call
        assert (refused.value.http_status, refused.value.code) == (404, "resource_missing")
        assert "No such subscription: 'sub_nope'" in str(refused.value)


async def test_a_renewal_event_verifies_with_its_previous_attributes(fake, client, receiver):
    fake.webhook_url = receiver.url
    sub_id, _, _ = await subscribed(fake, client)
    updated, _ = fake.renew(sub_id)
    assert fake.deliver(updated).status_code == 200
    ((body, header),) = receiver.received
    verified = stripe.Webhook.construct_event(body, header, WEBHOOK_SECRET)
    assert verified.type == "customer.subscription.updated"
    assert verified.data.previous_attributes.current_period_end == (
        verified.data.object.current_period_start)
    assert fake.event("customer.subscription.updated", fake.subscriptions[sub_id],
                      {"status": "active"})["data"]["previous_attributes"] == {
        "status": "active"}
    assert "previous_attributes" not in fake.event("invoice.paid", {"id": "in_x"})["data"]
