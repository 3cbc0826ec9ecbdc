"""The client held to the server: a call for every served route, the same calls in both
clients, an exception for every error code, and no server code loaded by importing it."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from api import client
from api.client import AsyncBillingClient, BadRequest, BillingApiError, BillingClient
from api.client._errors import _ERRORS
from api.errors import STATUS_BY_CODE
from tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ROOT, Server

# Served routes that are not the client's to call, each for a reason.
NOT_FOR_THE_CLIENT = {
    ("post", "/webhooks/stripe"),  # Stripe calls it, signed with the webhook secret
    ("post", "/webhooks/lago"),  # Lago calls it, signed with its HMAC key
    ("get", "/metrics"),  # Prometheus scrapes it, in its text format
    ("get", "/openapi.json"),  # for tools that generate or check clients
    ("get", "/checkout/success"),  # a browser lands there after Stripe Checkout
    ("get", "/checkout/cancelled"),  # likewise, after a cancelled one
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# httpx's naming: the async client's close is `aclose`.
ASYNC_NAMES = {"close": "aclose"}
LIFECYCLE = {"close", "aclose"}

# A value for each required parameter of a client method, by name: a method with a new one
# makes the route test fail with a KeyError naming it until it is added here.
SAMPLE_ARGUMENTS: dict[str, Any] = {
    "user_id": uuid.UUID(int=1),
    "inviter_user_id": uuid.UUID(int=2),
    "invitee_user_id": uuid.UUID(int=3),
    "reservation_id": "r-1",
    "plan": "standard",
    "amount_cents": 100,
    "required_cents": 100,
    "amount_usd": "10",
    "enabled": True,
    "metric": {"type": "compute", "cpu_hours": "1"},
    "events": [],
    "lot_id": "01J00000000000000000000000",
    "event_id": "evt-1",
    "caps": [{"period": "day", "limit_cents": 100}],
    "url": "http://127.0.0.1:9/hook",
    "event_types": ["balance.low"],
    "endpoint_id": "we_1",
}
# Every call is refused at once, without retries: one request per call.
REFUSAL = {"error": {"code": "bad_request", "message": "recorded", "details": {}}}

# Server dependencies the client does without (trio too: anyio only loads it when a trio
# program uses the async client), and this project's server packages.
SERVER_PACKAGES = {"quart", "quart_trio", "hypercorn", "lmdb", "prometheus_client", "stripe",
                   "trio", "msgpack", "cbor2", "jwt", "ulid",
                   "engine", "actors", "storage", "integrations", "lago"}


def public_methods(kind: type) -> dict[str, Callable[..., Any]]:
    return {name: member for name, member in vars(kind).items()
            if callable(member) and not name.startswith("_")}


def route_methods(kind: type) -> dict[str, Callable[..., Any]]:
    return {name: method for name, method in public_methods(kind).items()
            if name not in LIFECYCLE}


def sample_arguments(method: Callable[..., Any]) -> dict[str, Any]:
    parameters = list(inspect.signature(method).parameters.values())[1:]  # after self
    return {parameter.name: SAMPLE_ARGUMENTS[parameter.name] for parameter in parameters
            if parameter.default is inspect.Parameter.empty}


class Recorder:
    """A transport that answers every request with `REFUSAL` and keeps (method, path)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.transport = httpx.MockTransport(self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method.lower(), request.url.path))
        return httpx.Response(400, json=REFUSAL)

    def only_request(self) -> tuple[str, str]:
        [request] = self.seen
        self.seen.clear()
        return request


def sync_calls() -> dict[str, tuple[str, str]]:
    recorder = Recorder()
    calls = {}
    with BillingClient("http://127.0.0.1", retries=0, transport=recorder.transport) as sync:
        for name, method in route_methods(BillingClient).items():
            with pytest.raises(BadRequest):
                method(sync, **sample_arguments(method))
            calls[name] = recorder.only_request()
    return calls


async def async_calls() -> dict[str, tuple[str, str]]:
    recorder = Recorder()
    calls = {}
    async with AsyncBillingClient("http://127.0.0.1", retries=0,
                                  transport=recorder.transport) as asynchronous:
        for name, method in route_methods(AsyncBillingClient).items():
            with pytest.raises(BadRequest):
                await method(asynchronous, **sample_arguments(method))
            calls[name] = recorder.only_request()
    return calls


def template_of(request: tuple[str, str], served: set[tuple[str, str]]) -> tuple[str, str]:
    """The served route a concrete request is for (a literal path before a template);
    the request itself when none is."""
    method, path = request
    for route in sorted(served, key=lambda route: route[1].count("{")):
        pattern = "/".join("[^/]+" if part.startswith("{") else re.escape(part)
                           for part in route[1].split("/"))
        if route[0] == method and re.fullmatch(pattern, path):
            return route
    return request


@pytest.fixture
def document(tmp_path):
    """`/openapi.json` of a server with every capability on, so every route is served."""
    with FakeStripe() as stripe_fake:
        env = {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "STRIPE_API_BASE": stripe_fake.url, "LAGO_WEBHOOK_SECRET": "lago-hmac-key"}
        running = Server(tmp_path / "data", env=env)
        try:
            answer = httpx.get(f"{running.url}/openapi.json")
        finally:
            running.stop()
    assert answer.status_code == 200
    return answer.json()


@pytest.mark.slow
def test_every_served_route_has_a_client_call(document):
    calls = sync_calls()
    assert trio.run(async_calls) == calls  # each method sends the same request in both
    served = {(method, path) for path, item in document["paths"].items()
              for method in item if method in HTTP_METHODS}
    assert NOT_FOR_THE_CLIENT - served == set()  # an exclusion outliving its route is stale
    called = {template_of(request, served) for request in calls.values()}
    # Both ways: a served route without a call, and a call to a route the server lacks.
    assert served - NOT_FOR_THE_CLIENT - called == set()
    assert called - served == set()


def test_sync_and_async_clients_offer_the_same_calls():
    sync = public_methods(BillingClient)
    asynchronous = public_methods(AsyncBillingClient)
    assert {ASYNC_NAMES.get(name, name) for name in sync} == set(asynchronous)
    for name, method in sync.items():
        twin = asynchronous[ASYNC_NAMES.get(name, name)]
        assert inspect.iscoroutinefunction(twin), name
        # Annotations are strings, and an async method is annotated with what it returns
        # once awaited, so the whole signatures compare equal.
        assert inspect.signature(method) == inspect.signature(twin), name

    def construction(kind: type) -> list[tuple[str, Any, Any]]:
        # The transport's annotation differs (httpx's sync and async transport classes).
        return [(parameter.name, parameter.kind, parameter.default)
                for parameter in inspect.signature(kind).parameters.values()]

    assert construction(BillingClient) == construction(AsyncBillingClient)


def test_client_knows_every_error_code():
    assert set(_ERRORS) == set(STATUS_BY_CODE)
    # And every public exception class is one the table can raise.
    exceptions = {value for value in vars(client).values()
                  if isinstance(value, type) and issubclass(value, BillingApiError)}
    assert exceptions == {*_ERRORS.values(), BillingApiError}


def test_importing_the_client_loads_no_server_code():
    probe = "import json, sys, api.client; print(json.dumps(sorted(sys.modules)))"
    ran = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    loaded = json.loads(ran.stdout)
    assert {"api.client", "httpx", "anyio", "msgspec"} <= set(loaded)  # the probe probed
    server = [name for name in loaded
              if name.partition(".")[0] in SERVER_PACKAGES
              or (name.startswith("api.") and name.split(".")[1] != "client")]
    assert server == []
