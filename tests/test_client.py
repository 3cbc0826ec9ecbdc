"""The client library against a real server process on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from api.client import (
    AsyncBillingClient,
    Balance,
    BillingAccount,
    BillingApiError,
    BillingClient,
    CommitResult,
    Conflict,
    CreditResult,
    DuplicateEvent,
    InsufficientCredits,
    NotFound,
    ReservationHeld,
    Unauthorized,
    UsageResult,
)
from tests.http_support import ADMIN_KEY, SERVICE_KEY, Server

pytestmark = pytest.mark.slow

LLM = {"type": "llm_tokens", "provider": "anthropic", "model": "claude-3-haiku",
       "input_tokens": 1200, "output_tokens": 300}
PROXY_LIFETIME_S = 60
PROXY_IO_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory, workers):
    running = Server(tmp_path_factory.mktemp("client") / "data", workers=workers)
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture
def service(server):
    with BillingClient(server.url, service_key=SERVICE_KEY) as client:
        yield client


@pytest.fixture
def admin(server):
    with BillingClient(server.url, admin_key=ADMIN_KEY) as client:
        yield client


def user_client(url: str, user: uuid.UUID) -> BillingClient:
    return BillingClient(url, bearer_token=f"test-token:{user}")


def open_account(server: Server, cents: int = 0) -> uuid.UUID:
    user = uuid.uuid4()
    with user_client(server.url, user) as client:
        client.create_account()
    if cents:
        with BillingClient(server.url, admin_key=ADMIN_KEY) as admin:
            admin.add_credits(user, cents, reason="test")
    return user


def balance_of(server: Server, user: uuid.UUID) -> Balance:
    with user_client(server.url, user) as client:
        return client.balance()


# --- a proxy that loses the first answer ----------------------------------------------------


def read_message(reader) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (or none); None at end of stream."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head + reader.read(length)


class DroppingProxy:
    """Forwards requests to the server, but for the first `drop` requests it reads the
    server's answer and then closes the client's connection instead of relaying it: the
    request landed, the client sees a transport error."""

    def __init__(self, upstream_port: int, drop: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.forwarded = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + PROXY_LIFETIME_S
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(PROXY_IO_TIMEOUT_S)
        reader = connection.makefile("rb")
        try:
            while not self.stopping.is_set():
                request = read_message(reader)
                if request is None:
                    return
                with socket.create_connection(("127.0.0.1", self.upstream_port),
                                              timeout=PROXY_IO_TIMEOUT_S) as upstream, \
                        upstream.makefile("rb") as upstream_reader:
                    upstream.sendall(request)
                    response = read_message(upstream_reader)
                with self.lock:
                    self.forwarded += 1
                    lose = self.dropped < self.drop
                    if lose:
                        self.dropped += 1
                if lose or response is None:
                    return
                connection.sendall(response)
        except OSError:
            return
        finally:
            reader.close()
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.acceptor.join(PROXY_IO_TIMEOUT_S)
        for worker in self.threads:
            worker.join(PROXY_IO_TIMEOUT_S)


@pytest.fixture
def proxy(server):
    running = DroppingProxy(server.port)
    yield running
    running.close()


# --- sync client ----------------------------------------------------------------------------


def test_health_and_ready(service):
    assert service.health().status == "healthy"
    assert service.ready().status == "ready"


def test_account_lifecycle(server):
    user = uuid.uuid4()
    with user_client(server.url, user) as client:
        created = client.create_account()
        assert isinstance(created, BillingAccount)
        assert (created.user_id, created.balance_cents) == (str(user), 0)
        with pytest.raises(Conflict) as again:
            client.create_account()
        assert again.value.status == 409
        assert client.get_account().user_id == str(user)
        assert client.auto_refill().enabled is False
        refill = client.set_auto_refill(True, 700, 3000)
        assert (refill.enabled, refill.trigger_below_cents, refill.refill_amount_cents) == (
            True, 700, 3000)
        assert client.get_account().auto_refill == refill
        assert client.close_account().deleted is True


def test_admin_add_credits_and_idempotency_key(server, admin):
    user = open_account(server)
    key = str(uuid.uuid4())
    added = admin.add_credits(user, 4500, reason="welcome", idempotency_key=key)
    assert isinstance(added, CreditResult)
    assert (added.amount_cents, added.balance_cents, added.balance_formatted) == (
        4500, 4500, "$45.00")
    # The same key again, on a first attempt: the caller hears it was a duplicate.
    with pytest.raises(DuplicateEvent) as duplicate:
        admin.add_credits(user, 4500, reason="welcome", idempotency_key=key)
    assert duplicate.value.original.transaction_id == added.transaction_id
    # Without a key each call gets a fresh one, so two calls are two grants.
    admin.add_credits(user, 100)
    admin.add_credits(user, 100)
    assert balance_of(server, user).balance_cents == 4700


def test_report_usage_debits(server, service):
    user = open_account(server, 1000)
    result = service.report_usage(user, cost_cents=125, metadata={"job": "a"})
    assert isinstance(result, UsageResult)
    assert (result.cost_cents, result.balance_cents, result.available_cents) == (125, 875, 875)
    uuid.UUID(result.event_id)  # generated by the client
    priced = service.report_usage(user, metric=LLM, agent_id="agent-1",
                                  timestamp="2025-01-01T00:00:00Z")
    assert priced.cost_micros > 0
    balance = balance_of(server, user)
    assert balance.balance_cents == 875 - priced.cost_cents
    assert balance.balance_formatted.startswith("$")


def test_duplicate_event_on_first_attempt_raises_with_original(server, service):
    user = open_account(server, 1000)
    event_id = str(uuid.uuid4())
    first = service.report_usage(user, event_id=event_id, cost_cents=40)
    with pytest.raises(DuplicateEvent) as duplicate:
        service.report_usage(user, event_id=event_id, cost_cents=40)
    assert duplicate.value.status == 409
    assert duplicate.value.original == first
    assert balance_of(server, user).balance_cents == 960


def test_insufficient_credits_carries_numbers(server, service):
    user = open_account(server, 100)
    with pytest.raises(InsufficientCredits) as short:
        service.report_usage(user, cost_cents=250)
    error = short.value
    assert (error.status, error.code) == (402, "insufficient_credits")
    assert (error.balance_cents, error.available_cents, error.required_cents) == (100, 100, 250)
    with pytest.raises(InsufficientCredits) as short_hold:
        service.reserve(user, amount_cents=500)
    assert short_hold.value.required_cents == 500


def test_transactions_pages(server, service):
    user = open_account(server, 1000)
    for cents in (1, 2, 3):
        service.report_usage(user, cost_cents=cents)
    with user_client(server.url, user) as client:
        first = client.transactions(limit=2)
        assert len(first.transactions) == 2
        assert first.has_more and first.next_before == first.transactions[-1].id
        rest = client.transactions(limit=10, before=first.next_before)
        assert not rest.has_more
        seen = {entry.id for entry in first.transactions + rest.transactions}
        assert len(seen) == 4  # the grant and three usage entries
        usage = [entry for entry in first.transactions + rest.transactions
                 if entry.type == "usage"]
        assert sorted(entry.amount_cents for entry in usage) == [-3, -2, -1]
        assert all(entry.event_id for entry in usage)
        assert client.transactions(limit=1, offset=3).transactions[0].type == "bonus"


def test_check_balance_and_quote(server, service):
    user = open_account(server, 300)
    enough = service.check_balance(user, 200)
    assert (enough.sufficient, enough.balance_cents, enough.required_cents) == (True, 300, 200)
    assert service.check_balance(user, 301).sufficient is False
    quote = service.quote(LLM)
    assert quote.cost_micros > 0
    assert quote.cost_cents == -(-quote.cost_micros // 1_000_000)
    assert quote.model is not None
    # A Decimal quantity goes out as an exact string and is priced exactly.
    compute = service.quote({"type": "compute", "cpu_hours": Decimal("1.5")})
    doubled = service.quote({"type": "compute", "cpu_hours": Decimal("3")})
    assert doubled.cost_micros == 2 * compute.cost_micros


def test_usage_batch(server, service):
    user = open_account(server, 1000)
    given = str(uuid.uuid4())
    batch = service.report_usage_batch([
        {"event_id": given, "user_id": user, "cost_cents": 10},
        {"user_id": user, "metric": LLM},  # the client gives it an event id
        {"user_id": user, "cost_cents": -5},  # invalid: reported per event
    ])
    assert (batch.processed, batch.failed) == (2, 1)
    ok, priced, bad = batch.results
    assert ok.success and ok.result is not None and ok.result.event_id == given
    assert priced.success and priced.event_id and uuid.UUID(priced.event_id)
    assert not bad.success and bad.error is not None and bad.error.code == "bad_request"
    assert bad.event_id  # generated before sending, so the failure names it
    assert priced.result is not None
    assert balance_of(server, user).balance_cents == 990 - priced.result.cost_cents


def test_reservations(server, service):
    user = open_account(server, 1000)
    held = service.reserve(user, amount_cents=500, ttl_seconds=60, metadata={"job": "x"})
    assert isinstance(held, ReservationHeld)
    assert (held.held_cents, held.balance_cents, held.available_cents) == (500, 1000, 500)
    assert held.expires_at is not None
    seen = service.get_reservation(held.reservation_id)
    assert (seen.status, seen.amount_cents, seen.metadata) == (held.status, 500, {"job": "x"})
    committed = service.commit_reservation(held.reservation_id, cost_cents=200)
    assert isinstance(committed, CommitResult)
    assert (committed.cost_cents, committed.released_cents, committed.balance_cents) == (
        200, 300, 800)
    with pytest.raises(DuplicateEvent) as again:
        service.commit_reservation(held.reservation_id, cost_cents=200)
    assert again.value.original == committed
    assert service.get_reservation(held.reservation_id).status == "committed"

    other = service.reserve(user, reservation_id=f"hold-{uuid.uuid4()}", amount_cents=300)
    released = service.release_reservation(other.reservation_id)
    assert (released.released_cents, released.balance_cents, released.available_cents) == (
        300, 800, 800)
    with pytest.raises(DuplicateEvent):
        service.release_reservation(other.reservation_id)
    with pytest.raises(NotFound):
        service.get_reservation("no-such-reservation")


def test_auth_failures(server):
    with BillingClient(server.url, service_key="wrong-key") as wrong, \
            pytest.raises(Unauthorized) as denied:
        wrong.check_balance(uuid.uuid4(), 1)
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    with BillingClient(server.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.balance()
    with BillingClient(server.url, service_key=SERVICE_KEY) as not_admin, \
            pytest.raises(BillingApiError) as refused:
        not_admin.add_credits(uuid.uuid4(), 100)
    assert refused.value.status in {401, 403}


class PlainTextGateway(http.server.BaseHTTPRequestHandler):
    """A gateway in front of nothing: every request gets a plain-text 502."""

    hits = 0

    def do_GET(self):
        type(self).hits += 1
        body = b"Bad Gateway"
        self.send_response(502)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_non_json_error_is_unexpected_response_after_retries():
    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlainTextGateway)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{gateway.server_address[1]}"
        with BillingClient(url, retries=1) as client, pytest.raises(BillingApiError) as bad:
            client.health()
    finally:
        gateway.shutdown()
        gateway.server_close()
        thread.join(PROXY_IO_TIMEOUT_S)
    assert (bad.value.status, bad.value.code) == (502, "unexpected_response")
    assert PlainTextGateway.hits == 2  # a GET after a 502 is retried, at most `retries` times


# --- retries --------------------------------------------------------------------------------


def test_usage_retry_after_lost_answer_is_applied_once(server, proxy):
    user = open_account(server, 1000)
    with BillingClient(proxy.url, service_key=SERVICE_KEY, retries=2) as client:
        result = client.report_usage(user, cost_cents=70)
    assert proxy.dropped == 1 and proxy.forwarded == 2
    assert (result.cost_cents, result.balance_cents) == (70, 930)
    assert balance_of(server, user).balance_cents == 930
    with user_client(server.url, user) as owner:
        usage = [entry for entry in owner.transactions().transactions if entry.type == "usage"]
    assert [entry.event_id for entry in usage] == [result.event_id]


def test_reserve_and_commit_retries_are_applied_once(server):
    user = open_account(server, 1000)
    proxy = DroppingProxy(server.port)
    try:
        with BillingClient(proxy.url, service_key=SERVICE_KEY) as client:
            held = client.reserve(user, amount_cents=400)
            assert (held.held_cents, held.status) == (400, "held")
            proxy.drop += 1
            committed = client.commit_reservation(held.reservation_id, cost_cents=150)
    finally:
        proxy.close()
    assert proxy.dropped == 2
    assert (committed.cost_cents, committed.released_cents) == (150, 250)
    balance = balance_of(server, user)
    assert (balance.balance_cents, balance.held_cents) == (850, 0)


def test_account_creation_is_never_retried(server, proxy):
    user = uuid.uuid4()
    with BillingClient(proxy.url, bearer_token=f"test-token:{user}") as client, \
            pytest.raises(httpx.TransportError):
        client.create_account()
    assert proxy.forwarded == 1
    # The account was created by the one attempt; the client did not try again.
    assert balance_of(server, user).balance_cents == 0


# --- async client ---------------------------------------------------------------------------


async def exercise_async(url: str, proxy_url: str | None = None) -> None:
    user = uuid.uuid4()
    async with AsyncBillingClient(url, bearer_token=f"test-token:{user}") as owner:
        await owner.create_account()
        async with AsyncBillingClient(url, admin_key=ADMIN_KEY) as admin:
            await admin.add_credits(user, 1000)
        async with AsyncBillingClient(proxy_url or url, service_key=SERVICE_KEY) as service:
            used = await service.report_usage(user, cost_cents=100)
            assert used.balance_cents == 900
            with pytest.raises(DuplicateEvent) as duplicate:
                await service.report_usage(user, event_id=used.event_id, cost_cents=100)
            assert duplicate.value.original == used
            with pytest.raises(InsufficientCredits):
                await service.report_usage(user, cost_cents=5000)
            assert (await service.check_balance(user, 900)).sufficient
            assert (await service.quote(LLM)).cost_micros > 0
            batch = await service.report_usage_batch([{"user_id": user, "cost_cents": 5}])
            assert batch.processed == 1
            held = await service.reserve(user, amount_cents=100)
            assert (await service.get_reservation(held.reservation_id)).status == "held"
            released = await service.release_reservation(held.reservation_id)
            assert released.released_cents == 100
        balance = await owner.balance()
        assert (balance.balance_cents, balance.held_cents) == (895, 0)
        page = await owner.transactions(limit=10)
        assert len(page.transactions) == 3


async def test_async_client_under_trio(server):
    await exercise_async(server.url)


async def test_async_retry_under_trio(server, proxy):
    # The first usage answer is lost; the retry's duplicate is our own event: one debit.
    await exercise_async(server.url, proxy.url)
    assert proxy.dropped == 1


def test_async_client_under_asyncio(server):
    asyncio.run(exercise_async(server.url))


def test_async_unauthorized_under_asyncio(server):
    async def denied() -> None:
        async with AsyncBillingClient(server.url, service_key="nope") as client:
            with pytest.raises(Unauthorized):
                await client.check_balance(uuid.uuid4(), 1)

    asyncio.run(denied())
