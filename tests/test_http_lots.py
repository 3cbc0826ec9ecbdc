"""Credit lots end to end: a real server on 127.0.0.1 whose engine clock the test moves
(ZBILLING_CLOCK_FILE, dev mode only), never sleeping for the hours it skips."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import httpx
import pytest

from api.client import BillingClient, DuplicateEvent, NotFound
from storage.lmdb_store import LmdbStore
from storage.verify import verify_store
from tests.conftest import new_user
from tests.http_support import ADMIN_KEY, SERVICE_KEY, Server, service_headers, user_headers

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS
# The scheduler looks at the wall clock at least once a second (actors/deadlines.py).
EXPIRY_WAIT_S = 15


class Clock:
    """The engine clock's offset, in a file the server reads on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_ms = 0
        path.write_text("0")

    def advance(self, ms: int) -> None:
        self.offset_ms += ms
        self.path.write_text(str(self.offset_ms))

    def iso(self, ahead_ms: int) -> str:
        """The engine's now plus `ahead_ms`, as RFC 3339."""
        moment = time.time() + (self.offset_ms + ahead_ms) / 1000
        return datetime.datetime.fromtimestamp(moment, tz=datetime.UTC).isoformat()


@pytest.fixture(scope="module")
def clock(tmp_path_factory) -> Clock:
    return Clock(tmp_path_factory.mktemp("clock") / "offset_ms")


@pytest.fixture(scope="module")
def server(tmp_path_factory, clock, workers):
    running = Server(tmp_path_factory.mktemp("lots") / "data", workers=workers,
                     env={"ZBILLING_CLOCK_FILE": str(clock.path)})
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture
def admin(server):
    with BillingClient(server.url, admin_key=ADMIN_KEY) as client:
        yield client


def opened(server: Server):
    user = new_user()
    answer = httpx.post(f"{server.url}/v1/accounts", headers=user_headers(user))
    assert answer.status_code == 201, answer.text
    return user


def grant(server: Server, user, cents: int, **lot) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/credits/add", headers={"X-Admin-Key": ADMIN_KEY},
                      json={"user_id": str(user), "amount_cents": cents, **lot})


def entries(server: Server, user) -> list[dict]:
    page = httpx.get(f"{server.url}/v1/credits/transactions", headers=user_headers(user))
    return page.json()["transactions"]


def wait_for_entries(server: Server, user, kind: str, count: int) -> list[dict]:
    deadline = time.monotonic() + EXPIRY_WAIT_S
    while time.monotonic() < deadline:
        found = [entry for entry in entries(server, user) if entry["type"] == kind]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {count} {kind} entries in {EXPIRY_WAIT_S} s")


def balance(server: Server, user) -> dict:
    return httpx.get(f"{server.url}/v1/credits/balance", headers=user_headers(user)).json()


def test_lots_burn_in_order_expire_at_their_time_and_holds_keep_their_credits(
        server, clock, admin):
    user = opened(server)
    promo = grant(server, user, 500, type="bonus", priority=10,
                  expires_at=clock.iso(10 * MINUTE_MS)).json()["transaction_id"]
    paid = grant(server, user, 1_000, type="adjustment").json()["transaction_id"]
    seen = balance(server, user)
    assert (seen["paid_cents"], seen["promotional_cents"]) == (1_000, 500)
    assert seen["next_expiry"]["amount_cents"] == 500
    spent = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                       json={"event_id": f"e-{user}", "user_id": str(user), "cost_cents": 200})
    assert spent.status_code == 200
    assert entries(server, user)[0]["lot_draws"] == [{"lot_id": promo, "amount_cents": 200}]
    lots = httpx.get(f"{server.url}/v1/credits/lots", headers=user_headers(user)).json()
    assert [(lot["lot_id"], lot["remaining_cents"]) for lot in lots["lots"]] == [
        (promo, 300), (paid, 1_000)]
    held = httpx.post(f"{server.url}/v1/reservations", headers=service_headers(),
                      json={"user_id": str(user), "reservation_id": f"r-{user}",
                            "amount_cents": 100, "ttl_seconds": 3600})
    assert held.status_code == 201, held.text

    clock.advance(10 * MINUTE_MS + 1_000)
    (expiry,) = wait_for_entries(server, user, "expiry", 1)
    # The 100 promised to the open hold stay; the rest of the promotional lot expired.
    assert (expiry["amount_cents"], expiry["lot_draws"]) == (
        -200, [{"lot_id": promo, "amount_cents": 200}])
    seen = balance(server, user)
    assert (seen["balance_cents"], seen["available_cents"], seen["promotional_cents"]) == (
        1_100, 1_000, 100)
    committed = httpx.post(f"{server.url}/v1/reservations/r-{user}/commit",
                           headers=service_headers(), json={"cost_cents": 80})
    assert committed.status_code == 200, committed.text
    usage = next(entry for entry in entries(server, user) if entry["type"] == "usage")
    assert usage["lot_draws"] == [{"lot_id": promo, "amount_cents": 80}]
    wait_for_entries(server, user, "expiry", 2)  # the 20 the commit left expire at once
    assert balance(server, user)["balance_cents"] == 1_000

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'zbilling_breakage_credits_total{category="promotional"}' in metrics
    view = admin.admin_account(user)
    assert [(lot.lot_id, lot.remaining_cents) for lot in view.lots] == [(paid, 1_000)]


def test_undo_tools_are_idempotent_and_bad_input_changes_nothing(server, clock, admin):
    user = opened(server)
    bonus = admin.add_credits(user, 300, priority=0).transaction_id
    paid = admin.add_credits(user, 700, type="adjustment").transaction_id
    with BillingClient(server.url, service_key=SERVICE_KEY) as service:
        service.report_usage(user, event_id=f"u-{user}", cost_cents=400)
    # The bonus lot emptied; its 300 come back as a new lot, the other 100 to the paid lot.
    reversed_ = admin.reverse_usage(f"u-{user}", reason="bad call")
    assert (reversed_.type, reversed_.amount_cents, reversed_.balance_cents) == (
        "reversal", 400, 1_000)
    with pytest.raises(DuplicateEvent):
        admin.reverse_usage(f"u-{user}")
    lots = {lot.lot_id: lot for lot in admin.admin_account(user).lots}
    assert bonus not in lots and lots[paid].remaining_cents == 700
    voided = admin.void_lot(user, paid, reason="fraud", idempotency_key=f"v-{user}")
    assert (voided.amount_cents, voided.balance_cents) == (-700, 300)
    with pytest.raises(DuplicateEvent) as again:  # the same key: the original result
        admin.void_lot(user, paid, idempotency_key=f"v-{user}")
    assert again.value.original.transaction_id == voided.transaction_id
    with pytest.raises(NotFound):
        admin.void_lot(user, paid)  # nothing is left of it
    debited = admin.debit_credits(user, 50, reason="manual")
    assert debited.balance_cents == 250

    refused = [
        grant(server, user, 10, expires_at=clock.iso(-1_000)),  # expiry in the past
        grant(server, user, 10, priority=101),
        httpx.post(f"{server.url}/v1/admin/lots/void", headers={"X-Admin-Key": ADMIN_KEY},
                   json={"user_id": str(user), "lot_id": "01J00000000000000000000000"}),
        httpx.post(f"{server.url}/v1/admin/credits/debit", headers={"X-Admin-Key": ADMIN_KEY},
                   json={"user_id": str(user), "amount_cents": 251}),
        httpx.post(f"{server.url}/v1/admin/usage/reverse", headers={"X-Admin-Key": ADMIN_KEY},
                   json={"event_id": "never-reported"}),
    ]
    assert [answer.status_code for answer in refused] == [400, 400, 404, 402, 404]
    assert all(set(answer.json()["error"]) == {"code", "message", "details"}
               for answer in refused)
    assert balance(server, user)["balance_cents"] == 250


def test_a_lot_that_expired_while_the_server_was_down_expires_at_start(
        tmp_path, clock):
    data_dir = tmp_path / "data"
    env = {"ZBILLING_CLOCK_FILE": str(clock.path)}
    first = Server(data_dir, env=env)
    try:
        user = opened(first)
        assert grant(first, user, 90, expires_at=clock.iso(HOUR_MS)).status_code == 200
        assert grant(first, user, 10, type="adjustment").status_code == 200
    finally:
        first.stop()
    clock.advance(2 * HOUR_MS)
    second = Server(data_dir, env=env)
    try:
        (expiry,) = wait_for_entries(second, user, "expiry", 1)
        assert expiry["amount_cents"] == -90
        assert balance(second, user)["balance_cents"] == 10
    finally:
        second.stop()
    store = LmdbStore(data_dir)
    try:
        report = verify_store(store)
    finally:
        store.close()
    assert report.ok, report.violations
