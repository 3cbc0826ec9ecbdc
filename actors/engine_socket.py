"""The engine's end of the engine socket: HTTP workers (and benchmark load processes) call the
facades' public async methods over a Unix socket in the data directory (mode 0600).

Every complete frame of a read is decoded and dispatched before the next read, so calls that
arrive together are decided in the same scheduler pass and made durable by the same group
commit; their replies leave together too, in one write, once each call's own method has
returned (which, for a write, is after its journal commit). A connection that breaks the
framing is dropped with a log line; the others are not affected.

Bounds: CONNECTIONS_MAX connections, CONNECTION_CALLS_MAX calls in flight per connection (a
call past it is answered `overloaded` at once), frames of at most FRAME_BYTES_MAX bytes.

A worker with open balance WebSockets subscribes the accounts (`$subscribe`): the engine's
`BalanceFeed` then pushes each committed balance of those accounts to the connection as a
frame with request id PUSH_ID. A connection that lets CONNECTION_FRAMES_WAITING_MAX frames
wait unwritten is dropped (the worker reconnects and subscribes again), never waited for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import typing
from collections.abc import Awaitable, Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.balance_feed import PUSH_ID, SUBSCRIBE, UNSUBSCRIBE, BalanceFeed, BalanceUpdate
from actors.wire import (
    ERROR,
    FAILED,
    HELLO,
    METRICS,
    OK,
    PROTOCOL_VERSION,
    SLOTS,
    STATUS,
    Codec,
    Framer,
    MethodSpec,
    ProtocolError,
    WireTypeError,
    WrongEngine,
    method_spec,
    remote_methods,
)
from engine.errors import BillingError, Overloaded
from engine.ids import UserId, parse_user_id

log = logging.getLogger("zbilling.engine_socket")

SOCKET_NAME = "engine.sock"
CONNECTIONS_MAX = 256
CONNECTION_CALLS_MAX = 1024
# Calls of one read joined into one batch-form call (well below Billing's 1000 a batch).
BATCH_CALLS_MAX = 256
RECEIVE_BYTES = 256 * 1024
# Frames (replies and pushed balances) waiting to be written to one connection.
CONNECTION_FRAMES_WAITING_MAX = 8192
# sun_path holds 108 bytes; a longer path is reached through /proc/self/fd (Linux).
UNIX_PATH_BYTES_MAX = 100
ROLE_WORKER = "worker"

Facades = Mapping[str, object]
# A family as it crosses the socket: name, help, type, unit, samples (name, labels, value).
WireFamily = tuple[str, str, str, str, list[tuple[str, dict[str, str], float | None]]]


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for `path` that fits sun_path (test directories can be deep)."""
    if len(os.fsencode(path)) <= UNIX_PATH_BYTES_MAX:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the start (only this user can connect).
    The caller holds the data directory lock, so an existing socket file is a stale one."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        with unix_address(path) as address:
            listener.bind(address)
    except BaseException:
        listener.close()
        raise
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    listener.listen(CONNECTIONS_MAX)
    return listener


def wire_families(registry: CollectorRegistry) -> list[WireFamily]:
    return [(family.name, family.documentation, family.type, family.unit,
             [(sample.name, sample.labels, sample.value) for sample in family.samples])
            for family in registry.collect()]


@dataclass(frozen=True)
class _Method:
    spec: MethodSpec
    function: Callable[..., Awaitable[Any]]


class _Connection:
    def __init__(self, stream: trio.SocketStream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.role = "unknown"
        self.pid = 0
        self.outgoing: list[bytearray] = []
        self.queued_replies = 0
        self.calls = 0  # calls dispatched whose reply is not yet written
        self.ready = trio.Event()
        self.closed = False
        self.scope = trio.CancelScope()
        self.subscribed: set[UserId] = set()

    def __str__(self) -> str:
        return f"connection {self.number} ({self.role}, pid {self.pid})"


class EngineSocket:
    def __init__(self, facades: Facades, codec: Codec, *,
                 accepting_writes: Callable[[], bool], registry: CollectorRegistry,
                 owned_slots: Container[int] = range(SLOTS),
                 batch_forms: Mapping[str, str] | None = None,
                 feed: BalanceFeed | None = None) -> None:
        self._facades = facades
        self._feed = feed
        self._codec = codec
        self._accepting_writes = accepting_writes
        self._registry = registry
        self._owned_slots = owned_slots
        self._methods: dict[str, _Method | None] = {}
        self._batch_forms = {single: batch for single, batch in (batch_forms or {}).items()
                             if self._batch_form_fits(single, batch)}
        self._connections: set[_Connection] = set()
        self._opened = 0
        self._running_calls = 0
        self._idle = trio.Event()
        self._idle.set()
        self._calls_nursery: trio.Nursery | None = None
        self._listening = trio.CancelScope()
        self.protocol_errors = 0
        registry.register(_SocketCollector(self))

    @property
    def connected_workers(self) -> int:
        return sum(1 for connection in self._connections if connection.role == ROLE_WORKER)

    @property
    def running_calls(self) -> int:
        return self._running_calls

    async def serve(self, path: Path, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(bind_unix_socket(path)))
        try:
            # Calls run in their own nursery: a call outlives a connection that drops.
            async with trio.open_nursery() as calls, trio.open_nursery() as connections:
                self._calls_nursery = calls
                connections.start_soon(self._accept, listener, connections)
                task_status.started()
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        with self._listening:
            async with listener:
                while True:
                    stream = await listener.accept()
                    connections.start_soon(self._serve_connection, stream)

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting connections, let the calls in flight finish (at most `timeout_s`),
        then close every connection."""
        self._listening.cancel()
        with trio.move_on_after(timeout_s):
            await self._idle.wait()
        for connection in list(self._connections):
            connection.scope.cancel()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self._opened += 1
        connection = _Connection(stream, self._opened)
        if len(self._connections) >= CONNECTIONS_MAX:
            log.warning("engine socket: %d connections open, refusing another", CONNECTIONS_MAX)
            await stream.aclose()
            return
        self._connections.add(connection)
        try:
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, connection)
                    await self._read(connection)
        finally:
            connection.closed = True
            self._connections.discard(connection)
            if self._feed is not None:
                for user_id in connection.subscribed:
                    self._feed.detach(user_id, _PushSink(self, connection))
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, connection: _Connection) -> None:
        framer = Framer()
        try:
            while True:
                data = await connection.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return
                batches: dict[str, list[tuple[int, Any]]] = {}
                for payload in framer.feed(data):
                    self._dispatch(connection, payload, batches)
                for path, calls in batches.items():
                    for start in range(0, len(calls), BATCH_CALLS_MAX):
                        self._start(self._call_many, connection, self._methods[path],
                                    calls[start:start + BATCH_CALLS_MAX])
        except ProtocolError as error:
            self.protocol_errors += 1
            log.warning("engine socket: %s sent a malformed frame (%s): disconnected",
                        connection, error)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            connection.scope.cancel()

    async def _write(self, connection: _Connection) -> None:
        try:
            while True:
                if not connection.outgoing:
                    connection.ready = trio.Event()
                    await connection.ready.wait()
                    continue
                batch, connection.outgoing = connection.outgoing, []
                replies, connection.queued_replies = connection.queued_replies, 0
                await connection.stream.send_all(b"".join(batch))
                connection.calls -= replies
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            connection.scope.cancel()

    def _reply(self, connection: _Connection, message: tuple[int, int, Any], *,
               call: bool = False) -> None:
        if connection.closed:
            return
        try:
            frame = self._codec.frame(message)
        except (NotImplementedError, TypeError, ValueError, ProtocolError) as error:
            log.error("engine socket: reply %d cannot be encoded: %s", message[0], error)
            frame = self._codec.frame((message[0], FAILED, "the reply cannot be encoded"))
        connection.outgoing.append(frame)
        if call:
            connection.queued_replies += 1
        connection.ready.set()

    def _dispatch(self, connection: _Connection, payload: bytes,
                  batches: dict[str, list[tuple[int, Any]]]) -> None:
        """Decode one call and start it, or, for a method with a batch form, add it to the
        batch of this read (started by the caller once the whole read is dispatched)."""
        try:
            request_id, slots, path, params = self._codec.call_envelope.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise ProtocolError(f"not a call frame: {error}") from None
        if path.startswith("$"):
            self._reply(connection, (request_id, OK, self._builtin(connection, path, params)))
            return
        if connection.role == "unknown":
            raise ProtocolError(f"{path} before {HELLO}")
        method = self._method(path)
        if method is None:
            log.warning("engine socket: %s called an unknown method %r", connection, path)
            self._reply(connection, (request_id, FAILED, f"unknown method {path!r}"))
            return
        refusal: BillingError | None = None
        if any(slot not in self._owned_slots for slot in slots):
            refusal = WrongEngine("this engine does not own the account's slot",
                                  retry_after_s=1)
        elif connection.calls >= CONNECTION_CALLS_MAX:
            refusal = Overloaded(f"more than {CONNECTION_CALLS_MAX} calls in flight")
        if refusal is not None:
            self._reply(connection, (request_id, ERROR, refusal))
            return
        try:
            arguments = self._codec.decode_params(method.spec, params)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            # The worker encodes typed objects: this is a bug or a version skew, not input.
            log.error("engine socket: %s sent bad arguments for %s: %s", connection, path, error)
            self._reply(connection, (request_id, FAILED, f"bad arguments for {path}"))
            return
        connection.calls += 1
        batch = self._batch_forms.get(path)
        if batch is not None:
            (value,) = arguments.values()
            batches.setdefault(batch, []).append((request_id, value))
            self._method(batch)  # resolved now, so that the caller finds it
        else:
            self._start(self._call, connection, request_id, method, arguments)

    def _start(self, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._running_calls += 1
        if self._running_calls == 1:
            self._idle = trio.Event()
        assert self._calls_nursery is not None
        self._calls_nursery.start_soon(call, *args)

    def _call_done(self) -> None:
        self._running_calls -= 1
        if self._running_calls == 0:
            self._idle.set()

    async def _call(self, connection: _Connection, request_id: int, method: _Method,
                    arguments: dict[str, Any]) -> None:
        try:
            result = await method.function(**arguments)
        except BillingError as error:
            message: tuple[int, int, Any] = (request_id, ERROR, error)
        except Exception:
            log.exception("engine socket: %s failed", method.spec.path)
            message = (request_id, FAILED, "internal error")
        else:
            message = (request_id, OK, result)
        finally:
            self._call_done()
        self._reply(connection, message, call=True)

    async def _call_many(self, connection: _Connection, method: _Method,
                         calls: list[tuple[int, Any]]) -> None:
        """Calls of one read to a method with a batch form, as one call of the batch form:
        each decided on its own, in order, all settled by as few commits as needed."""
        try:
            results = await method.function([value for _, value in calls])
            messages = [(request_id, ERROR if isinstance(result, BillingError) else OK, result)
                        for (request_id, _), result in zip(calls, results, strict=True)]
        except BillingError as error:
            messages = [(request_id, ERROR, error) for request_id, _ in calls]
        except Exception:
            log.exception("engine socket: %s failed", method.spec.path)
            messages = [(request_id, FAILED, "internal error") for request_id, _ in calls]
        finally:
            self._call_done()
        for message in messages:
            self._reply(connection, message, call=True)

    def _batch_form_fits(self, single: str, batch: str) -> bool:
        """`batch` takes a sequence of what `single` takes and answers a list of what
        `single` answers or raises: checked on their signatures, else not used."""
        one, many = self._method(single), self._method(batch)
        fits = False
        if one is not None and many is not None and len(one.spec.names) == 1 \
                and len(many.spec.names) == 1:
            one_hints = typing.get_type_hints(one.function)
            many_hints = typing.get_type_hints(many.function)
            sequence = many_hints[many.spec.names[0]]
            answers = typing.get_args(many_hints.get("return"))
            fits = (typing.get_origin(sequence) in (list, Sequence)
                    and typing.get_args(sequence) == (one_hints[one.spec.names[0]],)
                    and len(answers) == 1
                    and one_hints.get("return") in typing.get_args(answers[0])
                    and BillingError in typing.get_args(answers[0]))
        if not fits:
            log.warning("engine socket: %s is not a batch form of %s: not batched", batch,
                        single)
        return fits

    def _method(self, path: str) -> _Method | None:
        if path in self._methods:
            return self._methods[path]
        facade_path, _, name = path.rpartition(".")
        facade = self._facades.get(facade_path)
        method: _Method | None = None
        if facade is not None:
            function = remote_methods(type(facade)).get(name)
            if function is not None:
                try:
                    method = _Method(method_spec(path, function), getattr(facade, name))
                except WireTypeError as error:
                    log.error("engine socket: %s", error)
        self._methods[path] = method
        return method

    def _builtin(self, connection: _Connection, path: str, params: msgspec.Raw) -> Any:
        if path == HELLO:
            try:
                hello = msgspec.json.decode(params, type=_Hello)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise ProtocolError(f"bad {HELLO}: {error}") from None
            if hello.protocol != PROTOCOL_VERSION:
                raise ProtocolError(f"protocol {hello.protocol}, this engine speaks "
                                    f"{PROTOCOL_VERSION}")
            connection.role, connection.pid = hello.role, hello.pid
            return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                    "accepting_writes": self._accepting_writes()}
        if path == STATUS:
            return {"accepting_writes": self._accepting_writes()}
        if path == METRICS:
            return wire_families(self._registry)
        if path in (SUBSCRIBE, UNSUBSCRIBE) and self._feed is not None:
            try:
                user_id = parse_user_id(msgspec.json.decode(params, type=_Subscribe).user_id)
            except (msgspec.DecodeError, msgspec.ValidationError, BillingError) as error:
                raise ProtocolError(f"bad {path}: {error}") from None
            sink = _PushSink(self, connection)
            if path == SUBSCRIBE:
                connection.subscribed.add(user_id)
                self._feed.attach(user_id, sink)  # pushes the balance before this answer
            else:
                connection.subscribed.discard(user_id)
                self._feed.detach(user_id, sink)
            return None
        raise ProtocolError(f"unknown built-in {path!r}")


class _Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str


@dataclass(frozen=True)
class _PushSink:
    """A connection as a balance feed sink (equal for the same connection, so the feed holds
    it once per account however often the worker subscribes)."""

    server: EngineSocket
    connection: _Connection

    def offer(self, update: BalanceUpdate) -> bool:
        connection = self.connection
        if len(connection.outgoing) >= CONNECTION_FRAMES_WAITING_MAX:
            log.warning("engine socket: %s lets %d frames wait: disconnected", connection,
                        CONNECTION_FRAMES_WAITING_MAX)
            connection.scope.cancel()
            return False
        self.server._reply(connection, (PUSH_ID, OK, update))
        return True


class _Hello(msgspec.Struct, forbid_unknown_fields=True):
    protocol: int
    role: str
    pid: int


class _SocketCollector(Collector):
    def __init__(self, server: EngineSocket) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("zbilling_engine_connected_workers",
                                    "HTTP worker processes connected to the engine")
        workers.add_metric([], self._server.connected_workers)
        yield workers
        calls = GaugeMetricFamily("zbilling_engine_calls_in_flight",
                                  "Engine socket calls being decided or waiting for a commit")
        calls.add_metric([], self._server.running_calls)
        yield calls
        errors = CounterMetricFamily("zbilling_engine_socket_protocol_errors",
                                     "Connections dropped for a malformed frame")
        errors.add_metric([], self._server.protocol_errors)
        yield errors
