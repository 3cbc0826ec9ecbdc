"""The engine socket in one process: RemoteBilling against a real engine over a Unix socket."""

from __future__ import annotations

import logging
import stat
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
from prometheus_client import CollectorRegistry
from werkzeug.datastructures import Headers

from actors.billing import Billing
from actors.config import load_pricing
from actors.engine_socket import SOCKET_NAME, EngineSocket
from actors.payments import Payments
from actors.remote import BILLING_BATCH_FORMS, EngineLink, RemoteBilling, billing_facades
from actors.runtime import open_billing
from actors.subscriptions import Subscriptions
from actors.wire import (
    ERROR,
    FRAME_BYTES_MAX,
    HEADER,
    OK,
    Codec,
    EngineUnavailable,
    Framer,
    ProtocolError,
    WrongEngine,
    method_spec,
    remote_methods,
    slot_of,
)
from api.server import WIRE_EXTENSIONS
from engine.errors import DuplicateEvent, InsufficientCredits, NotFound, Overloaded
from engine.ids import UserId, transaction_id_str
from engine.metering import UsageRequest
from engine.plans import Plans
from engine.usage import LlmTokens
from integrations.lago.webhooks import LagoWebhooks
from integrations.stripe.webhooks import StripeWebhooks
from tests.conftest import new_user

METRIC = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)
PRICING = load_pricing()


class Engine:
    def __init__(self, billing: Billing, server: EngineSocket, path: Path) -> None:
        self.billing = billing
        self.server = server
        self.path = path


@asynccontextmanager
async def engine(data_dir: Path, **options: object) -> AsyncIterator[Engine]:
    async with open_billing(data_dir) as billing, trio.open_nursery() as nursery:
        server = EngineSocket(billing_facades(billing), Codec(),
                              accepting_writes=lambda: billing.accepting_writes,
                              registry=billing.metrics.registry,
                              batch_forms=BILLING_BATCH_FORMS, **options)  # type: ignore[arg-type]
        path = data_dir / SOCKET_NAME
        await nursery.start(server.serve, path)
        yield Engine(billing, server, path)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def worker(path: Path, **options: object) -> AsyncIterator[tuple[EngineLink, RemoteBilling]]:
    async with trio.open_nursery() as nursery:
        link = EngineLink(path, Codec(), role="worker", registry=CollectorRegistry(),
                          **options)  # type: ignore[arg-type]
        nursery.start_soon(link.run)
        with trio.fail_after(10):
            await link.wait_connected()
        yield link, remote_billing(link)
        nursery.cancel_scope.cancel()


def remote_billing(link: EngineLink) -> RemoteBilling:
    return RemoteBilling(link, pricing=PRICING, plans=Plans.from_config(None),
                         registry=CollectorRegistry())


async def test_the_remote_facade_answers_like_the_engine(data_dir):
    async with engine(data_dir) as running, worker(running.path) as (_, remote):
        user = new_user()
        opened = await remote.open_account(user)
        assert (opened.user_id, opened.balance_cents) == (user, 0)
        credited = await remote.add_credits(user, 1000, idempotency_key="grant-1")
        with pytest.raises(DuplicateEvent) as again:
            await remote.add_credits(user, 1000, idempotency_key="grant-1")
        assert again.value.original["balance_cents"] == 1000
        debit = await remote.report_usage(UsageRequest("e1", user, METRIC))
        assert debit.cost_micros == 67_500 and debit.balance_cents == 1000
        with pytest.raises(InsufficientCredits) as refused:
            await remote.report_usage(UsageRequest("e2", user, cost_cents=5000))
        # 5000 credits plus the 67,500 unbilled micro-credits of e1, rounded up.
        assert (refused.value.required_cents, refused.value.available_cents) == (5001, 1000)
        results = await remote.report_usage_many([UsageRequest("e3", user, cost_cents=1),
                                                  UsageRequest("e4", user, cost_cents=10**6),
                                                  UsageRequest("e3", user, cost_cents=1)])
        assert [type(result).__name__ for result in results] == [
            "UsageResult", "InsufficientCredits", "DuplicateEvent"]
        page = await remote.list_transactions(user, limit=10)
        # 128-bit ULIDs survive the wire.
        assert credited.transaction_id in {entry.transaction_id for entry in page.entries}
        assert transaction_id_str(page.entries[0].transaction_id) == transaction_id_str(
            results[0].transaction_id)  # type: ignore[union-attr]
        held = await remote.reserve(user, "r1", amount_cents=5)
        assert held.reservation.amount_cents == 5
        committed = await remote.commit_reservation("r1", cost_cents=2)
        assert committed.released_cents == 3
        with pytest.raises(NotFound):
            await remote.release_reservation("no-such-reservation")
        assert (await remote.payments.set_customer(user, "cus_1")).stripe_customer_id == "cus_1"
        assert remote.accepting_writes
        assert remote.quote(METRIC).cost_micros == 67_500  # priced in the worker itself
        assert (await running.billing.get_account(user)) == await remote.get_account(user)


def test_every_remote_method_of_the_facades_can_cross_the_socket():
    """A refactor that gives a facade method a type msgspec cannot carry fails here."""
    codec = Codec(WIRE_EXTENSIONS)
    for path, cls in (("billing", Billing), ("billing.payments", Payments),
                      ("billing.subscriptions", Subscriptions),
                      ("stripe.webhooks", StripeWebhooks), ("lago.webhooks", LagoWebhooks)):
        methods = remote_methods(cls)
        assert methods, cls
        for name, function in methods.items():
            spec = method_spec(f"{path}.{name}", function)
            codec.decoder(spec.params)
            codec.decoder(spec.result)
    assert "run_sweeper" not in remote_methods(Subscriptions)  # a service, not a call


def test_request_headers_cross_as_case_insensitive_headers():
    codec = Codec(WIRE_EXTENSIONS)
    spec = method_spec("lago.webhooks.handle", LagoWebhooks.handle)
    sent = Headers([("x-lago-signature", "abc"), ("x-lago-unique-key", "k")])
    (payload,) = Framer().feed(bytes(codec.frame((1, [], spec.path,
                                                  {"body": b"{}", "headers": sent}))))
    _, _, _, params = codec.call_envelope.decode(payload)
    arguments = codec.decode_params(spec, params)
    assert arguments["body"] == b"{}"
    assert arguments["headers"].get("X-Lago-Signature") == "abc"


def test_slots_are_stable_and_named_by_the_accounts_a_call_touches():
    user = UserId(uuid.UUID("8d6c4a52-9f1e-4c38-a0b2-5f3e7d9c1a24"))
    assert slot_of(user) == zlib.crc32(user.bytes) % 4096
    assert slot_of(UserId(uuid.UUID(int=0))) == 2901  # fixed forever: crc32 of 16 zero bytes
    other = new_user()
    spec = method_spec("billing.report_usage_many", Billing.report_usage_many)
    requests = [UsageRequest("a", user, cost_cents=1), UsageRequest("b", other, cost_cents=1)]
    assert spec.slots({"requests": requests}) == sorted({slot_of(user), slot_of(other)})
    reservation = method_spec("billing.commit_reservation", Billing.commit_reservation)
    assert reservation.slots({"reservation_id": "r"}) == []


def test_frames_past_the_maximum_are_refused_both_ways():
    with pytest.raises(ProtocolError):
        Framer().feed(HEADER.pack(FRAME_BYTES_MAX + 1))
    with pytest.raises(ProtocolError):
        Codec().frame("x" * (FRAME_BYTES_MAX + 1))


async def test_a_malformed_frame_drops_that_connection_and_no_other(data_dir, caplog):
    caplog.set_level(logging.WARNING, "zbilling.engine_socket")
    async with engine(data_dir) as running, worker(running.path) as (_, remote):
        user = new_user()
        await remote.open_account(user)
        for garbage in (HEADER.pack(5) + b"hello",  # not JSON
                        HEADER.pack(FRAME_BYTES_MAX + 1),  # too long
                        bytes(Codec().frame((1, [], "billing.get_account",
                                             {"user_id": str(user)})))):  # before $hello
            stream = await trio.open_unix_socket(str(running.path))
            await stream.send_all(garbage)
            with trio.fail_after(5):
                assert await stream.receive_some() == b""  # the engine hung up
            await stream.aclose()
            assert (await remote.get_account(user)).user_id == user
        assert running.server.protocol_errors == 3
        assert caplog.text.count("malformed frame") == 3
        assert stat.S_IMODE(running.path.stat().st_mode) == 0o600


async def test_debits_arriving_together_are_answered_each_in_one_batch(data_dir, caplog):
    caplog.set_level(logging.WARNING, "zbilling.engine_socket")
    codec = Codec()
    async with engine(data_dir) as running:
        user = new_user()
        await running.billing.open_account(user)
        await running.billing.add_credits(user, 10)
        stream = await trio.open_unix_socket(str(running.path))
        frames = [codec.frame((0, [], "$hello", {"protocol": 1, "role": "test", "pid": 1}))]
        for request_id, (event_id, cents) in enumerate(
                [("t1", 4), ("t2", 100), ("t1", 4), ("t3", 6)], start=1):
            request = UsageRequest(event_id, user, cost_cents=cents)
            frames.append(codec.frame((request_id, [slot_of(user)], "billing.report_usage",
                                       {"request": request})))
        await stream.send_all(b"".join(frames))  # one write: one read, one batch
        framer, replies = Framer(), {}
        with trio.fail_after(10):
            while len(replies) < 5:
                for payload in framer.feed(await stream.receive_some()):
                    request_id, status, body = codec.reply_envelope.decode(payload)
                    replies[request_id] = (status, msgspec.json.decode(body))
        await stream.aclose()
    assert [replies[n][0] for n in range(1, 5)] == [OK, ERROR, ERROR, OK]
    assert replies[2][1][1] == "insufficient_credits"
    assert replies[3][1][1] == "duplicate_event"
    assert replies[4][1]["balance_cents"] == 0
    assert "not batched" not in caplog.text


async def test_calls_past_the_link_bound_are_overloaded_at_once(data_dir):
    async with engine(data_dir) as running, worker(running.path, calls_max=2) as (_, remote):
        user = new_user()
        await remote.open_account(user)
        outcomes: list[str] = []

        async def debit(index: int) -> None:
            try:
                await remote.check_balance(user, index)
                outcomes.append("ok")
            except Overloaded:
                outcomes.append("overloaded")

        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(debit, index)
        assert sorted(outcomes) == ["ok", "ok", "overloaded"]


async def test_a_slot_this_engine_does_not_own_is_refused(data_dir):
    async with engine(data_dir, owned_slots=frozenset()) as running, \
            worker(running.path) as (_, remote):
        with pytest.raises(WrongEngine) as refused:
            await remote.open_account(new_user())
        assert refused.value.code == "engine_unavailable"


async def test_without_the_engine_calls_fail_at_once_and_the_link_comes_back(data_dir):
    data_dir.mkdir(parents=True)
    path = data_dir / SOCKET_NAME
    async with trio.open_nursery() as nursery:
        link = EngineLink(path, Codec(), role="worker")
        nursery.start_soon(link.run)
        remote = remote_billing(link)
        with trio.fail_after(1), pytest.raises(EngineUnavailable):
            await remote.open_account(new_user())
        with pytest.raises(EngineUnavailable):
            remote.accepting_writes  # noqa: B018 - /ready answers 503 engine_unavailable
        async with engine(data_dir):
            with trio.fail_after(10):
                await link.wait_connected()
            user = new_user()
            assert (await remote.open_account(user)).user_id == user
        with trio.fail_after(10):
            while link.up:
                await trio.sleep(0.01)
        with pytest.raises(EngineUnavailable):
            await remote.get_account(user)
        nursery.cancel_scope.cancel()


async def test_engine_metrics_reach_the_worker(data_dir):
    async with engine(data_dir) as running, worker(running.path) as (link, remote):
        await remote.open_account(new_user())
        names = {family.name for family in await link.engine_families()}
        assert {"zbilling_engine_connected_workers", "zbilling_journal_commit_seconds",
                "zbilling_active_actors"} <= names
        assert running.server.connected_workers == 1
