"""The caller's live balance, `GET /ws/balance?token=<jwt>`, as an iterator of `BalanceEvent`.

httpx-ws carries the WebSocket over httpx (sync, and async under trio or asyncio through
anyio), so the client keeps its one HTTP stack. The first event is the balance at connect
time. When the server goes away (a restart: close 1001 or 1012, a broken connection) or drops
a reader that fell behind (1008), the iterator connects again, at most RECONNECT_ATTEMPTS_MAX
times in a row with backoff, and goes on from the current balance: updates in between are
not replayed, the latest balance always arrives. A refused connection raises the error of its
code at once (`Unauthorized` for a bad token); a normal close (1000) ends the iteration.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
import httpx
import msgspec

from ._errors import BillingApiError, Overloaded
from ._requests import _error
from ._results import BalanceEvent

PATH = "/ws/balance"
# About a minute of trying (the delay tops out at RECONNECT_DELAY_MAX_S): a restart fits.
RECONNECT_ATTEMPTS_MAX = 40
RECONNECT_DELAY_MIN_S = 0.05
RECONNECT_DELAY_MAX_S = 2.0
CLOSE_NORMAL = 1000
# Messages held for the reader by httpx-ws before it stops reading the socket.
QUEUE_MESSAGES_MAX = 64

_decode: Callable[[str], BalanceEvent] = msgspec.json.Decoder(BalanceEvent).decode


@functools.cache
def _lib() -> Any:
    """httpx-ws, loaded on first use: importing it loads httpcore's backends (trio among
    them where it is installed), which an application that never streams need not load."""
    import httpx_ws  # noqa: PLC0415 - see above

    return httpx_ws


def _broken() -> tuple[type[Exception], ...]:
    """What may break a stream: the server closed it, or the network did."""
    return (_lib().WebSocketDisconnect, _lib().WebSocketNetworkError, httpx.TransportError)


def _unreachable() -> tuple[type[Exception], ...]:
    """What may fail a reconnect and be tried again: the network, or a 503 (the server is
    stopping or busy); any other refusal, with its error code, fails at once."""
    return (_lib().WebSocketNetworkError, httpx.TransportError, Overloaded)


def _closing() -> tuple[type[BaseException], ...]:
    # httpx-ws wraps what its task group saw in an ExceptionGroup: closing, it is moot.
    return (_lib().HTTPXWSException, httpx.TransportError, ExceptionGroup)


def _path(token: str | None) -> str:
    # Without a token the server answers 401 (Unauthorized), like every user route.
    return f"{PATH}?token={quote(token or '', safe='')}"


def _read_refusal(response: httpx.Response) -> None:
    """httpx event hook: a refused upgrade's error body is read before httpx-ws drops it."""
    if response.status_code != 101:
        response.read()


async def _aread_refusal(response: httpx.Response) -> None:
    if response.status_code != 101:
        await response.aread()


def _refused(error: Any) -> BillingApiError:
    return _error(error.response)




class _Reconnects:
    """After each failure of the stream: end, connect again after a delay, or give up."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self.attempt = 0

    def ends(self, error: Exception) -> bool:
        """A close to end the iteration on (normal close, or reconnecting is off)."""
        return isinstance(error, _lib().WebSocketDisconnect) and (
            error.code == CLOSE_NORMAL or not self._enabled)

    def delay_s(self, failure: Exception) -> float:
        """Seconds to wait before the next attempt; raises `failure` when attempts ran out."""
        if not self._enabled or self.attempt >= RECONNECT_ATTEMPTS_MAX:
            raise failure
        ceiling = min(RECONNECT_DELAY_MAX_S, RECONNECT_DELAY_MIN_S * 2 ** self.attempt)
        self.attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter, not a secret

    def connected(self) -> None:
        self.attempt = 0


class BalanceEvents:
    """`for event in events:` the caller's balances; `close()` it (or use `with`)."""

    def __init__(self, http: httpx.Client, token: str | None, reconnect: bool) -> None:
        self._http = http
        self._path = _path(token)
        self._reconnects = _Reconnects(reconnect)
        self._stack = contextlib.ExitStack()
        self._session: Any = None
        self._connect()

    def _connect(self) -> None:
        self.close()
        self._stack = contextlib.ExitStack()
        try:
            self._session = self._stack.enter_context(_lib().connect_ws(
                self._path, self._http, queue_size=QUEUE_MESSAGES_MAX))
        except _lib().WebSocketUpgradeError as error:
            raise _refused(error) from None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> BalanceEvent:
        while True:
            try:
                event = _decode(self._session.receive_text())
            except _broken() as error:
                if self._reconnects.ends(error):
                    self.close()
                    raise StopIteration from None
                self._again(error)
                continue
            self._reconnects.connected()
            return event

    def _again(self, failure: Exception) -> None:
        while True:
            try:
                time.sleep(self._reconnects.delay_s(failure))
            except Exception:
                self.close()
                raise
            try:
                self._connect()
                return
            except _unreachable() as error:
                failure = error

    def close(self) -> None:
        with contextlib.suppress(*_closing()):
            self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class AsyncBalanceEvents:
    """`async with await client.balance_events() as events: async for event in events:`.

    The connection lives in a task of its own, started by `async with` (httpx-ws keeps a task
    group per connection, and one opened inside `__anext__` would outlive a caller's time-out
    around that call); events reach the iterator through a bounded stream."""

    def __init__(self, http: httpx.AsyncClient, token: str | None, reconnect: bool) -> None:
        self._http = http
        self._path = _path(token)
        self._reconnects = _Reconnects(reconnect)
        self._tasks: Any = None
        self._send, self._receive = anyio.create_memory_object_stream[
            BalanceEvent | Exception](QUEUE_MESSAGES_MAX)

    async def check(self) -> Self:
        """Connect once and close: a refusal (a bad token: `Unauthorized`) raises here."""
        async with self._connected():
            pass
        return self

    def _connected(self) -> Any:
        return _refusals(_lib().aconnect_ws(self._path, self._http,
                                            queue_size=QUEUE_MESSAGES_MAX))

    async def __aenter__(self) -> Self:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._run)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> bool | None:
        self._tasks.cancel_scope.cancel()
        return await self._tasks.__aexit__(kind, error, trace)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop receiving (the `async with` block's end does it too)."""
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def _run(self) -> None:
        async with self._send:
            while True:
                try:
                    async with self._connected() as session:
                        self._reconnects.connected()
                        while True:
                            await self._send.send(_decode(await session.receive_text()))
                except Exception as error:  # sorted out below
                    failure = _leaf(error)
                    if isinstance(failure, BillingApiError) and \
                            not isinstance(failure, Overloaded):  # refused on a reconnect
                        await self._send.send(failure)
                        return
                    if not isinstance(failure, (*_broken(), Overloaded)):
                        raise
                    if self._reconnects.ends(failure):
                        return
                try:
                    delay_s = self._reconnects.delay_s(failure)
                except Exception as error:
                    await self._send.send(error)
                    return
                await anyio.sleep(delay_s)

    def __aiter__(self) -> Self:
        if self._tasks is None:
            raise RuntimeError("use `async with await client.balance_events() as events`")
        return self

    async def __anext__(self) -> BalanceEvent:
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            raise item
        return item


def _leaf(error: Exception) -> Exception:
    """The first error inside the exception groups httpx-ws's task group wraps errors in."""
    while isinstance(error, ExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


@contextlib.asynccontextmanager
async def _refusals(connecting: Any) -> Any:
    """httpx-ws's connection, a refused upgrade raised as the error of its code."""
    try:
        async with connecting as session:
            yield session
    except _lib().WebSocketUpgradeError as error:
        raise _refused(error) from None
