"""The worker's end of the engine socket: `RemoteBilling` is the `Billing` facade of an HTTP
worker process. Its public async methods (and those of its sub-facades) are not written
again: each is derived from `Billing`'s own signature and runs in the engine, so a handler
cannot tell an in-process engine from a remote one. What a worker knows itself — pricing and
plans (loaded from the same settings), its clock, the pure `quote` — stays local.

`EngineLink` is the one connection a process keeps to the engine: any number of calls in flight
(up to LINK_CALLS_MAX; past it `overloaded`), each answered in its own time; it reconnects by
itself, and while the engine is away every call fails at once with `engine_unavailable`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import outcome
import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from actors.balance_feed import PUSH_ID, RemoteBalanceFeed
from actors.billing import Billing
from actors.controls import SpendControls
from actors.engine_socket import RECEIVE_BYTES, WireFamily, unix_address
from actors.lots import CreditLots
from actors.payments import Payments
from actors.reports import UsageReports
from actors.runtime import system_wall_clock_ms
from actors.subscriptions import Subscriptions
from actors.webhooks import Webhooks
from actors.wire import (
    ERROR,
    HELLO,
    METRICS,
    OK,
    PROTOCOL_VERSION,
    STATUS,
    Codec,
    EngineUnavailable,
    Framer,
    MethodSpec,
    ProtocolError,
    WireError,
    error_from_wire,
    method_spec,
    remote_methods,
)
from engine.errors import InvalidInput, Overloaded
from engine.plans import Plans
from engine.pricing import PricingConfig

log = logging.getLogger("zbilling.remote")

LINK_CALLS_MAX = 1024
CALL_TIMEOUT_S = 10.0
HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
RECONNECT_DELAY_MIN_S = 0.02
RECONNECT_DELAY_MAX_S = 0.5
ROUND_TRIP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.5, 1.0, 5.0)

# Billing's sub-facades, served to workers under "billing.<name>"; one declaration for both
# ends (a sub-facade added to Billing is named here, and `billing_facades` checks it).
SUB_FACADES: dict[str, type] = {"payments": Payments, "subscriptions": Subscriptions,
                                "lots": CreditLots, "controls": SpendControls,
                                "webhooks": Webhooks, "reports": UsageReports}


# Billing methods whose calls arriving together are applied as one call of a batch form
# (EngineSocket checks on the signatures that the batch form fits): one task and one settle
# pass for a read full of debits instead of one each.
BILLING_BATCH_FORMS = {"billing.report_usage": "billing.report_usage_many"}


def billing_facades(billing: Billing) -> dict[str, object]:
    """The facade tree the engine serves: "billing", "billing.payments", ..."""
    facades: dict[str, object] = {"billing": billing}
    for name, cls in SUB_FACADES.items():
        facade = getattr(billing, name)
        if not isinstance(facade, cls):
            raise TypeError(f"billing.{name} is a {type(facade).__name__}, not a {cls.__name__}")
        facades[f"billing.{name}"] = facade
    return facades


class RemoteFailure(Exception):
    """An unexpected error in the engine (its log has the traceback): a 500, as in-process."""


class EngineLink:
    def __init__(self, socket_path: Path, codec: Codec, *, role: str,
                 registry: CollectorRegistry | None = None,
                 calls_max: int = LINK_CALLS_MAX, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._path = socket_path
        self._codec = codec
        self._role = role
        self._calls_max = calls_max
        self._call_timeout_s = call_timeout_s
        self._stream: trio.SocketStream | None = None
        self._up = False  # the hello was answered: calls may go
        self._accepting_writes = False
        self._outgoing: list[bytearray] = []
        self._ready = trio.Event()
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._next_id = 1
        self._connected = trio.Event()
        self._round_trip = (
            Histogram("zbilling_engine_round_trip_seconds",
                      "Worker to engine call round trip (encode, socket, engine, decode)",
                      ["method"], buckets=ROUND_TRIP_BUCKETS, registry=registry)
            if registry is not None else None)
        self._round_trip_children: dict[str, Any] = {}
        # Balance updates the engine pushes (actors.balance_feed), and what to do each time
        # the link is up again (subscribe them again).
        self.on_push: Callable[[bytes], None] | None = None
        self.on_connected: list[Callable[[], Awaitable[None]]] = []

    @property
    def up(self) -> bool:
        return self._up

    @property
    def accepting_writes(self) -> bool:
        if not self._up:
            raise EngineUnavailable("the engine is not reachable; retry shortly")
        return self._accepting_writes

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep a connection to the engine, forever."""
        task_status.started()
        delay = RECONNECT_DELAY_MIN_S
        while True:
            try:
                with unix_address(self._path) as address:
                    stream = await trio.open_unix_socket(address)
            except OSError:
                await trio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX_S)
                continue
            delay = RECONNECT_DELAY_MIN_S
            try:
                await self._session(stream)
            finally:
                self._disconnected()
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            log.warning("engine connection lost; reconnecting")

    async def _session(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, stream, nursery.cancel_scope)
            nursery.start_soon(self._write, stream, nursery.cancel_scope)
            try:
                with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                    hello = await self._builtin(HELLO, {"protocol": PROTOCOL_VERSION,
                                                        "role": self._role,
                                                        "pid": os.getpid()})
                self._accepting_writes = bool(hello["accepting_writes"])
                self._up = True
                self._connected.set()
                log.info("connected to the engine (pid %s)", hello["pid"])
                for hook in self.on_connected:
                    nursery.start_soon(hook)
                while True:
                    await trio.sleep(HEARTBEAT_S)
                    with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                        status = await self._builtin(STATUS, {})
                    self._accepting_writes = bool(status["accepting_writes"])
            except (trio.TooSlowError, EngineUnavailable):
                log.warning("the engine did not answer within %s s", HEARTBEAT_TIMEOUT_S)
            except ProtocolError as error:
                log.error("engine handshake failed: %s", error)
            nursery.cancel_scope.cancel()

    def _disconnected(self) -> None:
        self._stream = None
        self._up = False
        self._connected = trio.Event()
        self._outgoing = []
        pending, self._pending = self._pending, {}
        for task in pending.values():
            trio.lowlevel.reschedule(task, outcome.Error(EngineUnavailable(
                "the connection to the engine broke; the call may have been applied, and a "
                "retry with the same key is answered with its result")))

    async def _read(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        framer = Framer()
        envelope = self._codec.reply_envelope
        try:
            while data := await stream.receive_some(RECEIVE_BYTES):
                for payload in framer.feed(data):
                    try:
                        request_id, status, body = envelope.decode(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError) as error:
                        raise ProtocolError(f"not a reply frame: {error}") from None
                    if request_id == PUSH_ID:
                        if self.on_push is not None and status == OK:
                            self.on_push(body)
                        continue
                    task = self._pending.pop(request_id, None)
                    if task is not None:  # else its caller gave up (timeout, cancelled)
                        trio.lowlevel.reschedule(task, outcome.Value((status, body)))
        except ProtocolError as error:
            log.error("the engine sent a malformed frame (%s): reconnecting", error)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _write(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while True:
                if not self._outgoing:
                    self._ready = trio.Event()
                    await self._ready.wait()
                    continue
                batch, self._outgoing = self._outgoing, []
                await stream.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()

    async def _exchange(self, path: str, slots: list[int], params: dict[str, Any], *,
                        builtin: bool = False) -> tuple[int, msgspec.Raw]:
        if not (self._up or (builtin and self._stream is not None)):
            raise EngineUnavailable("the engine is not reachable; retry shortly")
        if len(self._pending) >= self._calls_max:
            raise Overloaded(f"{self._calls_max} calls are already waiting for the engine")
        request_id = self._next_id
        self._next_id += 1
        try:
            frame = self._codec.frame((request_id, slots, path, params))
        except ProtocolError as error:
            raise InvalidInput(str(error)) from None
        self._outgoing.append(frame)
        self._ready.set()
        self._pending[request_id] = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._pending.pop(request_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        with trio.move_on_after(self._call_timeout_s) as deadline:
            reply: tuple[int, msgspec.Raw] = await trio.lowlevel.wait_task_rescheduled(abort)
            return reply
        assert deadline.cancelled_caught
        raise EngineUnavailable(f"the engine did not answer within {self._call_timeout_s} s; "
                                "the call may still be applied")

    async def builtin(self, path: str, params: dict[str, Any]) -> Any:
        """A call the engine socket answers itself (`$subscribe`, ...), once the link is up."""
        if not self._up:
            raise EngineUnavailable("the engine is not reachable; retry shortly")
        return await self._builtin(path, params)

    async def _builtin(self, path: str, params: dict[str, Any]) -> Any:
        status, body = await self._exchange(path, [], params, builtin=True)
        if status != OK:
            raise ProtocolError(f"{path} failed: {bytes(body)[:200]!r}")
        return msgspec.json.decode(body)

    async def call(self, spec: MethodSpec, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        status, body = await self._exchange(spec.path, spec.slots(params), params)
        if self._round_trip is not None:
            child = self._round_trip_children.get(spec.path)
            if child is None:
                child = self._round_trip_children[spec.path] = self._round_trip.labels(spec.path)
            child.observe(time.perf_counter() - started)
        if status == OK:
            return self._codec.decode_result(spec, body)
        if status == ERROR:
            raise error_from_wire(self._codec.decoder(WireError).decode(body))
        raise RemoteFailure(f"{spec.path} failed in the engine: {msgspec.json.decode(body)}")

    async def engine_families(self) -> list[Metric]:
        """The engine's metrics, as prometheus families (raises EngineUnavailable)."""
        families = msgspec.convert(await self._builtin(METRICS, {}), list[WireFamily])
        rebuilt = []
        for name, documentation, kind, unit, samples in families:
            family = Metric(name, documentation, kind, unit)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, math.nan if value is None else value)
            rebuilt.append(family)
        return rebuilt


class RemoteFacade:
    """A facade class's public async methods, run in the engine under `path`. Any other
    attribute is not served: asking for it says so (AttributeError)."""

    def __init__(self, link: EngineLink, cls: type, path: str) -> None:
        self._link = link
        self._cls = cls
        self._path = path
        self._functions = remote_methods(cls)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._functions:
            raise AttributeError(f"{self._cls.__name__}.{name} is not served to HTTP workers "
                                 "(only its public async methods run remotely)")
        method = _remote_method(self._link, method_spec(f"{self._path}.{name}",
                                                        self._functions[name]))
        self.__dict__[name] = method  # built once: later lookups do not reach __getattr__
        return method


def _remote_method(link: EngineLink, spec: MethodSpec) -> Callable[..., Any]:
    names = spec.names

    async def remote(*args: Any, **kwargs: Any) -> Any:
        if len(args) > len(names):
            raise TypeError(f"{spec.path} takes {len(names)} positional arguments")
        params = dict(zip(names, args, strict=False))
        params.update(kwargs)
        return await link.call(spec, params)

    remote.__name__ = remote.__qualname__ = spec.path
    return remote


@dataclass(frozen=True)
class WorkerMetrics:
    """What the HTTP layer reads of `billing.metrics` in a worker."""

    registry: CollectorRegistry


class RemoteBilling(RemoteFacade):
    """`Billing` in an HTTP worker (see the module docstring)."""

    def __init__(self, link: EngineLink, *, pricing: PricingConfig, plans: Plans,
                 registry: CollectorRegistry) -> None:
        super().__init__(link, Billing, "billing")
        self.pricing = pricing
        self.plans = plans
        self.metrics = WorkerMetrics(registry)
        self.balance_feed = RemoteBalanceFeed(link)
        link.on_push = self.balance_feed.pushed
        link.on_connected.append(self.balance_feed.resubscribe)
        for name, cls in SUB_FACADES.items():
            setattr(self, name, RemoteFacade(link, cls, f"billing.{name}"))

    @property
    def accepting_writes(self) -> bool:
        return self._link.accepting_writes

    wall_clock_ms = staticmethod(system_wall_clock_ms)
    # Pure pricing over `self.pricing`: Billing's own method, run here.
    quote = Billing.quote


class AllProcessesRegistry(CollectorRegistry):
    """A worker's /metrics: every worker's own metrics, summed by prometheus-client's
    multiprocess mode (their files in `metrics_dir`; a restarted worker's counts stay in), and
    the engine's, fetched over the socket by `refresh` just before the scrape is answered.

    Metrics registered here only declare themselves: their values live in those files, so
    `collect` reads the files rather than the registered objects (which would count this
    worker twice)."""

    def __init__(self, metrics_dir: Path) -> None:
        super().__init__()
        self._workers = MultiProcessCollector(None, path=str(metrics_dir))
        self._engine: list[Metric] = []
        self._engine_up = False
        self._refreshing: trio.Event | None = None

    async def refresh(self, fetch: Callable[[], Awaitable[list[Metric]]]) -> None:
        """Fetch the engine's metrics; concurrent scrapes share one fetch."""
        if self._refreshing is not None:
            await self._refreshing.wait()
            return
        self._refreshing = done = trio.Event()
        try:
            with trio.move_on_after(HEARTBEAT_TIMEOUT_S):
                self._engine, self._engine_up = await fetch(), True
                return
            self._engine, self._engine_up = [], False
        except (EngineUnavailable, ProtocolError):
            self._engine, self._engine_up = [], False
        finally:
            self._refreshing = None
            done.set()

    def collect(self) -> Iterator[Metric]:
        yield from self._workers.collect()
        yield from self._engine
        up = GaugeMetricFamily("zbilling_engine_up",
                               "1 when the worker that answered reached the engine")
        up.add_metric([], 1 if self._engine_up else 0)
        yield up
