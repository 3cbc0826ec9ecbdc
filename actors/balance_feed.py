"""Live balances: every committed balance change of an account, pushed to its subscribers.

`BalanceFeed` lives in the engine. It listens to the journal's post-commit listener, so a
pushed balance is always a committed one, and it hands each subscribed account's new state
to that account's sinks, in commit order. A sink never blocks a commit: a `Subscription` (one
WebSocket) holds at most SUBSCRIPTION_UPDATES_MAX updates and is ended and dropped from the
feed (`SlowReader`) when its reader lets more pile up; an engine-socket connection (a worker
subscribing for its WebSockets, actors/engine_socket.py) is written to by its own task and
dropped past its own bound.

In an HTTP worker, `RemoteBalanceFeed` keeps the worker's WebSockets by account and subscribes
the engine once per account (`$subscribe` over the engine socket); the engine pushes updates
as frames with request id PUSH_ID. After a reconnect (an engine restart) it subscribes again,
and each subscription gets the account's current committed balance at once: an update missed
while the engine was away is never replayed, but the latest balance always arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import trio

from actors.wire import EngineUnavailable, ProtocolError
from engine.account import Account
from engine.errors import Overloaded
from engine.ids import UserId
from engine.money import format_usd
from storage.store import Store

log = logging.getLogger("zbilling.balance_feed")

EVENT_TYPE = "balance.updated"
# Updates one subscription may hold for its reader; past it the reader is too slow.
SUBSCRIPTION_UPDATES_MAX = 32
# Subscriptions (WebSockets) one process holds; past it a new one is refused (503).
SUBSCRIPTIONS_MAX = 10_000


class BalanceUpdate(msgspec.Struct, frozen=True, gc=False):
    """An account's committed balance. `seq` counts the ledger entries behind it (a hold or
    a release changes `held_cents` alone and keeps `seq`)."""

    user_id: UserId
    balance_cents: int
    held_cents: int
    seq: int

    @classmethod
    def of(cls, account: Account) -> BalanceUpdate:
        return cls(account.user_id, account.balance_cents, account.held_cents, account.seq)

    def message(self) -> dict[str, Any]:
        """The WebSocket message: the original service's fields, and ours."""
        return {"type": EVENT_TYPE, "userId": str(self.user_id),
                "balanceCents": self.balance_cents,
                "balanceFormatted": format_usd(self.balance_cents),
                "heldCents": self.held_cents,
                "availableCents": self.balance_cents - self.held_cents, "seq": self.seq}


class SlowReader(Exception):
    """The subscription's reader let more than SUBSCRIPTION_UPDATES_MAX updates wait."""


class FeedFull(Overloaded):
    """This process already holds SUBSCRIPTIONS_MAX subscriptions, or is stopping (503,
    Retry-After)."""


class Sink(Protocol):
    def offer(self, update: BalanceUpdate) -> bool:
        """Take an update without waiting (a commit is waiting behind this call); False:
        this sink takes no more (its reader fell behind), drop it."""


class Subscription:
    """One account's updates for one reader, bounded; iterate to receive them."""

    def __init__(self, user_id: UserId, capacity: int = SUBSCRIPTION_UPDATES_MAX) -> None:
        self.user_id = user_id
        self._send, self._receive = trio.open_memory_channel[BalanceUpdate](capacity)
        self._last: BalanceUpdate | None = None
        self._ended = False
        self.overflowed = False
        # Told when the reader fell behind (for metrics: the reader itself may be blocked in
        # a send to a client that does not read, which hypercorn does not let us cancel).
        self.on_overflow: Callable[[], None] | None = None

    def offer(self, update: BalanceUpdate) -> bool:
        if self._ended:
            return False
        if update == self._last:
            return True
        try:
            self._send.send_nowait(update)
        except trio.WouldBlock:
            self.overflowed = True
            self.end()
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self._last = update
        return True

    def end(self) -> None:
        """No more updates (the server is stopping, or the reader is too slow)."""
        self._ended = True
        self._send.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BalanceUpdate:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.overflowed:
                raise SlowReader(f"more than {SUBSCRIPTION_UPDATES_MAX} balance updates "
                                 "waited for this reader") from None
            raise StopAsyncIteration from None


class Sinks:
    """Sinks by account; `add` and `discard` say whether the account's first came or its
    last went (a worker subscribes the engine once per account)."""

    def __init__(self) -> None:
        self._by_user: dict[UserId, set[Sink]] = {}

    def __contains__(self, user_id: UserId) -> bool:
        return user_id in self._by_user

    def __len__(self) -> int:
        return sum(map(len, self._by_user.values()))

    def users(self) -> list[UserId]:
        return list(self._by_user)

    def add(self, user_id: UserId, sink: Sink) -> bool:
        sinks = self._by_user.setdefault(user_id, set())
        sinks.add(sink)
        return len(sinks) == 1

    def discard(self, user_id: UserId, sink: Sink) -> bool:
        sinks = self._by_user.get(user_id)
        if sinks is None or sink not in sinks:
            return False
        sinks.discard(sink)
        if not sinks:
            del self._by_user[user_id]
            return True
        return False

    def publish(self, update: BalanceUpdate) -> None:
        for sink in list(self._by_user.get(update.user_id, ())):
            if not sink.offer(update):
                self.discard(update.user_id, sink)

    def each(self) -> list[Sink]:
        return [sink for sinks in self._by_user.values() for sink in sinks]


class BalanceFeed:
    """The engine's feed: a journal listener (`committed`) and the sinks it pushes to."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sinks = Sinks()
        self._ended = False
        self.pushed = 0

    @property
    def subscriptions(self) -> int:
        return len(self._sinks)

    def committed(self, batch: Any, _seconds: float) -> None:
        """Journal listener: after a commit, the new state of each subscribed account."""
        sinks = self._sinks
        if not len(sinks):
            return  # nobody listens: no per-account work on the commit path
        for account in batch.accounts.values():
            if account.user_id in sinks:
                sinks.publish(BalanceUpdate.of(account))
                self.pushed += 1

    def attach(self, user_id: UserId, sink: Sink) -> None:
        """Push the account's committed balance to `sink` now, then every change. Reads and
        registers with no checkpoint between, so no commit falls in between."""
        self._sinks.add(user_id, sink)
        account = self._store.get_account(user_id)  # the store holds committed state only
        if account is not None:
            sink.offer(BalanceUpdate.of(account))

    def detach(self, user_id: UserId, sink: Sink) -> None:
        self._sinks.discard(user_id, sink)

    async def subscribe(self, user_id: UserId) -> Subscription:
        """A subscription in this process (one-process mode); `unsubscribe` ends it."""
        _check_room(self._sinks, self._ended)
        subscription = Subscription(user_id)
        self.attach(user_id, subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self.detach(subscription.user_id, subscription)

    def end_all(self) -> None:
        """The server is stopping: every subscription ends (its WebSocket closes, 1001), and
        new ones are refused (a socket opened now would hold the shutdown up)."""
        self._ended = True
        for sink in self._sinks.each():
            if isinstance(sink, Subscription):
                sink.end()


def _check_room(sinks: Sinks, ended: bool) -> None:
    if ended:
        raise FeedFull("the server is stopping; connect again shortly")
    if len(sinks) >= SUBSCRIPTIONS_MAX:
        raise FeedFull(f"{SUBSCRIPTIONS_MAX} balance subscriptions are open")


class FeedLink(Protocol):
    """What `RemoteBalanceFeed` needs of the worker's engine link (actors.remote)."""

    @property
    def up(self) -> bool: ...

    async def builtin(self, path: str, params: dict[str, Any]) -> Any: ...


SUBSCRIBE = "$subscribe"
UNSUBSCRIBE = "$unsubscribe"
# A reply frame with this request id is a pushed update, not the answer to a call.
PUSH_ID = 0
UNSUBSCRIBE_TIMEOUT_S = 2.0


class RemoteBalanceFeed:
    """A worker's feed: its subscriptions by account, one engine subscription per account."""

    def __init__(self, link: FeedLink) -> None:
        self._link = link
        self._sinks = Sinks()
        self._ended = False
        self._decode: Callable[[bytes], BalanceUpdate] = msgspec.json.Decoder(
            BalanceUpdate).decode

    def pushed(self, body: bytes) -> None:
        """An update the engine pushed (called by the link's reader, in stream order)."""
        self._sinks.publish(self._decode(body))

    async def subscribe(self, user_id: UserId) -> Subscription:
        _check_room(self._sinks, self._ended)
        subscription = Subscription(user_id)
        self._sinks.add(user_id, subscription)
        try:
            # The engine pushes the account's current balance (to this worker: each of its
            # subscriptions of the account drops it if it has it already) before it answers.
            await self._link.builtin(SUBSCRIBE, {"user_id": str(user_id)})
        except BaseException:
            self._sinks.discard(user_id, subscription)
            raise
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        self._sinks.discard(subscription.user_id, subscription)  # (already, if it overflowed)
        if subscription.user_id not in self._sinks and self._link.up:
            with trio.move_on_after(UNSUBSCRIBE_TIMEOUT_S):
                await self._link.builtin(UNSUBSCRIBE, {"user_id": str(subscription.user_id)})

    async def resubscribe(self) -> None:
        """After the link (re)connected: subscribe the engine again for every account (a
        link that breaks meanwhile calls this again once it is back)."""
        try:
            for user_id in self._sinks.users():
                await self._link.builtin(SUBSCRIBE, {"user_id": str(user_id)})
        except (EngineUnavailable, ProtocolError) as error:
            log.warning("balance subscriptions not renewed: %s", error)

    def end_all(self) -> None:
        self._ended = True
        for sink in self._sinks.each():
            if isinstance(sink, Subscription):
                sink.end()
