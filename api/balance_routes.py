"""`GET /ws/balance?token=<jwt>`: the caller's committed balance, pushed over a WebSocket after
every change (actors/balance_feed.py), as the original service's
`{"type": "balance.updated", "userId", "balanceCents", "balanceFormatted"}` plus `heldCents`,
`availableCents` and `seq`. The first message is the balance at connect time (once the
account exists).

A missing or bad token is refused before the upgrade with 401 in the error format. The
server pings every WEBSOCKET_PING_S (hypercorn); messages from the client are read and
dropped. A reader that lets SUBSCRIPTION_UPDATES_MAX updates wait is closed with 1008
(`policy violation`), never waited for; a stopping server closes with 1001 (`going away`).
"""

from __future__ import annotations

import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter
from quart import Response, websocket
from quart_trio import QuartTrio

from actors.balance_feed import SUBSCRIPTION_UPDATES_MAX, SlowReader, Subscription
from actors.billing import Billing
from api import schemas
from api.auth import Authenticator
from api.errors import ApiError, render
from api.http import JSON, Endpoints
from api.routes import Caller, Route
from engine.errors import BillingError

PATH = "/ws/balance"
WEBSOCKET_PING_S = 30.0
# Largest message a client may send (it is dropped anyway).
WEBSOCKET_MESSAGE_BYTES_MAX = 4096
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
# How long a close may take to reach a reader that does not read.
CLOSE_TIMEOUT_S = 1.0

_encoder = msgspec.json.Encoder()


def register_balance_socket(app: QuartTrio, endpoint: Endpoints, billing: Billing,
                            auth: Authenticator, registry: CollectorRegistry) -> None:
    feed = billing.balance_feed
    opened = Counter("zbilling_balance_sockets", "Balance WebSockets accepted",
                     registry=registry)
    dropped = Counter("zbilling_balance_slow_readers",
                      "Balance WebSockets closed because their reader fell behind",
                      registry=registry)

    @endpoint(Route("GET", PATH, "Live balance: a WebSocket (a plain GET is refused, 400)",
                    Caller.PUBLIC, parameters=schemas.BalanceSocketQuery,
                    errors=(400, 401)))
    async def balance_socket_without_upgrade(query: schemas.BalanceSocketQuery) -> Response:
        await auth.user_of_token(query.token)
        raise ApiError("bad_request", f"{PATH} is a WebSocket: connect with Upgrade: websocket")

    @app.websocket(PATH)
    async def balance_socket() -> Response | None:
        try:
            user = await auth.user_of_token(websocket.args.get("token", ""))
            subscription = await feed.subscribe(user)
        except BillingError as error:  # refused before the upgrade, in the error format
            payload, status, headers = render(error)
            return Response(_encoder.encode(payload), status, headers=headers,
                            content_type=JSON)
        subscription.on_overflow = dropped.inc
        try:
            await websocket.accept()
            opened.inc()
            await _forward(subscription)
        finally:
            with trio.CancelScope(shield=True):
                await feed.unsubscribe(subscription)
        return None


async def _forward(subscription: Subscription) -> None:
    """Send each update until the feed ends it: the server stops (1001) or the reader fell
    behind (1008). A send to a client that does not read blocks in hypercorn (uncancellable)
    until the client reads or goes; the feed has dropped the subscription by then, so all it
    holds is its connection's kernel buffer (SO_SNDBUF, api/server.py)."""
    code, reason = CLOSE_GOING_AWAY, "the server is stopping"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drop_incoming)
        try:
            async for update in subscription:
                await websocket.send(_encoder.encode(update.message()).decode())
        except SlowReader:
            code = CLOSE_POLICY_VIOLATION
            reason = f"too slow: more than {SUBSCRIPTION_UPDATES_MAX} updates waited"
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await websocket.close(code, reason)
        nursery.cancel_scope.cancel()


async def _drop_incoming() -> None:
    while True:
        await websocket.receive()
