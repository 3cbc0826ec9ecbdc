"""`GET /ws/balance` against a real server, with the client library's iterator (httpx-ws) and a
raw socket for the reader that never reads; in one process and with `--workers 2`."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import time

import httpx
import pytest
import trio

from api.client import AsyncBillingClient, Unauthorized
from tests.conftest import new_user
from tests.http_support import ADMIN_KEY, Server, free_port, service_headers, user_headers

# Every wait on the socket is bounded: a push that does not come fails the test, not CI.
EVENT_TIMEOUT_S = 10.0
SLOW_READER_DEBITS_MAX = 3_000
SLOW_READER_TIME_MAX_S = 60.0
DEBIT_LATENCY_MAX_S = 2.0
DEBITS_PER_CHECK = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory, workers):
    running = Server(tmp_path_factory.mktemp("ws") / "data", workers=workers)
    yield running
    if running.process.poll() is None:
        running.stop()


def token(user) -> str:
    return f"test-token:{user}"


def grant(server: Server, user, cents: int) -> None:
    """Credits by the admin route, the account opened first (by its owner)."""
    opened = httpx.get(f"{server.url}/v1/accounts/me", headers=user_headers(user))
    assert opened.status_code == 200, opened.text
    answer = httpx.post(f"{server.url}/v1/credits/add", headers={"X-Admin-Key": ADMIN_KEY},
                        json={"user_id": str(user), "amount_cents": cents})
    assert answer.status_code == 200, answer.text


async def next_event(events):
    with trio.fail_after(EVENT_TIMEOUT_S):
        return await events.__anext__()


async def test_a_missing_or_bad_token_is_a_clean_401(server):
    for bad in (None, "test-token:not-a-uuid", "garbage"):
        async with AsyncBillingClient(server.url, bearer_token=bad, retries=0) as client:
            with pytest.raises(Unauthorized):
                await client.balance_events()
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    refused = httpx.get(f"{server.url}/ws/balance?token=nope", headers=upgrade)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    plain = httpx.get(f"{server.url}/ws/balance?token={token(new_user())}")
    assert (plain.status_code, plain.json()["error"]["code"]) == (400, "bad_request")


async def test_every_committed_change_is_pushed_in_commit_order(server):
    user = new_user()
    grant(server, user, 1_000)
    async with AsyncBillingClient(server.url, bearer_token=token(user)) as client, \
            httpx.AsyncClient(base_url=server.url, headers=service_headers()) as service, \
            contextlib.AsyncExitStack() as stack:
        events = await stack.enter_async_context(await client.balance_events())
        first = await next_event(events)
        assert (first.type, first.userId, first.balanceCents, first.balanceFormatted) == (
            "balance.updated", str(user), 1_000, "$10.00")

        async def expect(balance: int, held: int = 0):
            event = await next_event(events)
            assert (event.balanceCents, event.heldCents) == (balance, held), event
            assert event.availableCents == balance - held
            return event

        await service.post("/v1/usage", json={"event_id": f"u-{user}", "user_id": str(user),
                                              "cost_cents": 10})
        used = await expect(990)
        batch = [{"event_id": f"b{i}-{user}", "user_id": str(user), "cost_cents": 1}
                 for i in range(3)]
        await service.post("/v1/usage/batch", json={"events": batch})
        # A batch's events may share one commit: the pushes end at the batch's balance.
        event = await next_event(events)
        while event.balanceCents != 987:
            event = await next_event(events)
        assert event.seq == used.seq + 3
        await service.post("/v1/reservations", json={
            "reservation_id": f"r-{user}", "user_id": str(user), "amount_cents": 100})
        await expect(987, held=100)
        await service.post(f"/v1/reservations/r-{user}/commit", json={"cost_cents": 40})
        await expect(947)
        await service.post("/v1/credits/signup-grant", json={"user_id": str(user)})
        await expect(5_947)


async def test_a_reader_that_never_reads_is_dropped_and_debits_go_on(server):
    user = new_user()
    grant(server, user, 1_000_000)
    stuck = socket.create_connection(("127.0.0.1", server.port))
    # A tiny receive window: the server's sends block once a few messages are in flight.
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    key = base64.b64encode(os.urandom(16)).decode()
    stuck.sendall((f"GET /ws/balance?token={token(user)} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    stuck.settimeout(EVENT_TIMEOUT_S)
    assert stuck.recv(12) == b"HTTP/1.1 101"
    before = dropped_readers(server)
    async with AsyncBillingClient(server.url, bearer_token=token(user)) as client, \
            httpx.AsyncClient(base_url=server.url, headers=service_headers()) as service, \
            contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(await client.balance_events())
        await next_event(watcher)
        started = time.monotonic()
        debits = 0
        slowest_s = 0.0
        while dropped_readers(server) == before:
            assert debits < SLOW_READER_DEBITS_MAX, f"the stuck reader was never dropped ({debits})"
            assert time.monotonic() - started < SLOW_READER_TIME_MAX_S
            for _ in range(DEBITS_PER_CHECK):
                sent = time.monotonic()
                answer = await service.post("/v1/usage", json={
                    "event_id": f"slow-{debits}-{user}", "user_id": str(user),
                    "cost_cents": 1})
                slowest_s = max(slowest_s, time.monotonic() - sent)
                assert answer.status_code == 200, answer.text
                debits += 1
        assert slowest_s < DEBIT_LATENCY_MAX_S
        # The reader that reads still gets the latest committed balance.
        latest = await next_event(watcher)
        while latest.balanceCents != 1_000_000 - debits:
            latest = await next_event(watcher)
    sent = read_to_the_end(stuck)
    close = sent.rfind(b"\x88")  # the close frame: 1008, policy violation
    assert close >= 0 and sent[close + 2:close + 4] == (1008).to_bytes(2, "big"), sent[-80:]
    stuck.close()


def dropped_readers(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("zbilling_balance_slow_readers_total "):
            return float(line.split()[1])
    return 0.0


def read_to_the_end(stuck: socket.socket) -> bytes:
    """What the server sent before it closed the connection (bounded in time by the
    socket's time-out: a connection still open raises)."""
    received = b""
    while data := stuck.recv(65536):
        received += data
    return received


async def test_after_a_server_restart_the_client_reconnects_to_the_current_balance(tmp_path):
    # With --workers 2: the supervisor, the engine and the workers all restart (the client's
    # side is the same in one process; this module's other tests run in both modes).
    workers_mode = 2
    port = free_port()
    data_dir = tmp_path / "data"
    running = Server(data_dir, port=port, workers=workers_mode)
    user = new_user()
    try:
        grant(running, user, 500)
        async with AsyncBillingClient(running.url, bearer_token=token(user)) as client, \
                await client.balance_events() as events:
            assert (await next_event(events)).balanceCents == 500
            code, _ = await trio.to_thread.run_sync(running.stop)
            assert code == 0
            running = await trio.to_thread.run_sync(
                lambda: Server(data_dir, port=port, workers=workers_mode))
            grant(running, user, 1)
            seen = await next_event(events)
            while seen.balanceCents != 501:
                seen = await next_event(events)
    finally:
        if running.process.poll() is None:
            running.stop()


async def test_an_engine_restart_behind_two_workers_keeps_the_socket_open(tmp_path):
    running = Server(tmp_path / "data", workers=2)
    user = new_user()
    try:
        grant(running, user, 700)
        async with AsyncBillingClient(running.url, bearer_token=token(user)) as client, \
                await client.balance_events(reconnect=False) as events:
            assert (await next_event(events)).balanceCents == 700
            (engine,) = running.children("engine")
            os.kill(engine, signal.SIGKILL)
            with trio.fail_after(30):
                while running.children("engine") in ([], [engine]):
                    await trio.sleep(0.05)
            await trio.to_thread.run_sync(running._wait_ready)
            grant(running, user, 3)
            seen = await next_event(events)  # the worker subscribed again by itself
            while seen.balanceCents != 703:
                seen = await next_event(events)
    finally:
        running.stop()
