"""`zbilling serve`: hypercorn's trio server, the quart-trio app and the engine.

With `--workers 1` all of it runs in one trio.run (`serve`). With more, `api.supervisor`
starts one engine process (`serve_engine`: the engine, its background workers and the
engine socket) and N HTTP worker processes (`serve_worker`: hypercorn + the same app over
`RemoteBilling`). SIGTERM and SIGINT stop each cleanly: in-flight requests finish, the journal
flushes, the process exits 0."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from actors.balance_feed import BalanceFeed, RemoteBalanceFeed
from actors.billing import Billing
from actors.config import load_pricing
from actors.engine_socket import ROLE_WORKER, SOCKET_NAME, EngineSocket
from actors.metrics import TallyCollector
from actors.remote import (
    BILLING_BATCH_FORMS,
    AllProcessesRegistry,
    EngineLink,
    RemoteBilling,
    RemoteFacade,
    billing_facades,
)
from actors.runtime import ExporterFactory, offset_clock, open_billing, system_wall_clock_ms
from actors.system import WallClock
from actors.wire import Codec, Extension
from api.app import create_app
from api.auth import Authenticator
from api.balance_routes import WEBSOCKET_MESSAGE_BYTES_MAX, WEBSOCKET_PING_S
from api.settings import Settings
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter
from integrations.lago.webhooks import LagoWebhooks, load_public_key
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.refill import RefillWorker
from integrations.stripe.service import StripeService, stripe_service
from integrations.stripe.webhooks import StripeWebhooks
from integrations.webhooks.delivery import WebhookDelivery

log = logging.getLogger("zbilling.server")

# How long in-flight requests may take to finish after SIGTERM.
SHUTDOWN_GRACE_S = 10.0
KEEP_ALIVE_MAX_REQUESTS = 2**62
# Kernel bytes one connection may have queued for its client (Linux doubles the figure). A
# 1000-event batch reply (~300 KB) takes a few rounds on it; that is all it costs HTTP.
SOCKET_SEND_BUFFER_BYTES = 64 * 1024


async def serve(settings: Settings) -> None:
    """`--workers 1`: the engine and one HTTP server in this process (no engine socket)."""
    exporter = lago_exporter_for(settings)
    pricing = load_pricing(settings.pricing_path)
    async with open_billing(settings.data_dir, pricing=pricing, plans=settings.plans,
                            exporter=exporter, wall_clock_ms=wall_clock_for(settings),
                            lot_defaults=settings.lot_defaults) as billing:
        stripe = stripe_for(settings, billing)
        lago_webhooks = lago_webhooks_for(settings, billing)
        app = create_app(billing, settings, Authenticator(settings), stripe, lago_webhooks)
        config = hypercorn_config(settings, _ListenConfig(reuse_port=False))
        stop = trio.Event()
        print_banner(settings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            if stripe is not None:
                await nursery.start(stripe.refills.run)
            await nursery.start(webhook_delivery_for(settings, billing).run)
            await hypercorn_serve(_CloseAfterReply(app), config,  # type: ignore[arg-type]
                                  shutdown_trigger=partial(_stopping, stop, billing.balance_feed))
            nursery.cancel_scope.cancel()
    print("z-billing stopped; journal flushed", flush=True)


def webhook_delivery_for(settings: Settings, billing: Billing) -> WebhookDelivery:
    """The engine process delivers the outbound webhooks (HTTP workers never do)."""
    return WebhookDelivery(billing.webhooks, billing.wall_clock_ms,
                           retry_base_s=settings.webhook_retry_base_ms / 1000,
                           registry=billing.metrics.registry)


def wall_clock_for(settings: Settings) -> WallClock:
    return offset_clock(settings.clock_file) if settings.clock_file else system_wall_clock_ms


def hypercorn_config(settings: Settings, config: Config | None = None) -> Config:
    config = config if config is not None else Config()
    config.bind = [settings.listen]
    config.graceful_timeout = SHUTDOWN_GRACE_S
    config.accesslog = None
    # hypercorn's errors through our logging, once (its own "-" handler would repeat them).
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn closes a keep-alive connection after keep_alive_max_requests (default 1000)
    # and its trio worker races that close against the last response's send (measured:
    # one dropped connection per 1000 requests, BusyResourceError in the log). Gateways
    # keep their connections: recycle them practically never.
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.websocket_ping_interval = WEBSOCKET_PING_S
    config.websocket_max_message_size = WEBSOCKET_MESSAGE_BYTES_MAX
    return config


def lago_exporter_for(settings: Settings) -> ExporterFactory | None:
    if not settings.lago_enabled:
        return None
    return lago_exporter(LagoClient(settings.lago_api_url or "", settings.lago_api_key or ""))


def stripe_gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings.stripe_api_key or "",
                         webhook_secret=settings.stripe_webhook_secret,
                         frontend_url=settings.checkout_return_url,
                         api_base=settings.stripe_api_base)


def stripe_for(settings: Settings, billing: Billing) -> StripeService | None:
    if not settings.stripe_enabled:
        return None
    return stripe_service(stripe_gateway(settings), billing.payments, billing.subscriptions,
                          billing.plans, billing.metrics.registry,
                          refill_retry_base_s=settings.refill_retry_base_s)


def lago_webhooks_for(settings: Settings, billing: Billing) -> LagoWebhooks | None:
    if not (settings.lago_webhook_secret or settings.lago_public_key):
        return None
    public_key = load_public_key(settings.lago_public_key) if settings.lago_public_key else None
    webhooks = LagoWebhooks(billing.subscriptions, billing.payments,
                            hmac_key=settings.lago_webhook_secret, public_key=public_key,
                            issuer=settings.lago_webhook_issuer)
    billing.metrics.registry.register(TallyCollector(
        "zbilling_lago_webhooks", "Lago webhook deliveries by type and outcome",
        ["type", "outcome"], webhooks.outcomes))
    return webhooks


# --- several processes (`--workers N`, started by api.supervisor) -------------------------

# werkzeug's request headers cross the socket for the Lago webhook handler (case-insensitive
# lookups must keep working in the engine).
WIRE_EXTENSIONS = (Extension(Headers, "headers", lambda headers: list(headers.items()), Headers),)
PARENT_POLL_S = 0.5
# Facade paths of the webhook handlers, which run in the engine.
STRIPE_WEBHOOKS = "stripe.webhooks"
LAGO_WEBHOOKS = "lago.webhooks"


def engine_socket_path(settings: Settings) -> Path:
    return settings.data_dir / SOCKET_NAME


async def serve_engine(settings: Settings, ready: Callable[[], None]) -> None:
    """The engine process: the data directory, the actors, the journal, the timers, the Lago
    exporter, the refill worker and the sweeper, and the engine socket the workers call."""
    pricing = load_pricing(settings.pricing_path)
    async with open_billing(settings.data_dir, pricing=pricing, plans=settings.plans,
                            exporter=lago_exporter_for(settings),
                            wall_clock_ms=wall_clock_for(settings),
                            lot_defaults=settings.lot_defaults) as billing:
        stripe = stripe_for(settings, billing)
        lago_webhooks = lago_webhooks_for(settings, billing)
        facades = billing_facades(billing)
        if stripe is not None:
            facades[STRIPE_WEBHOOKS] = stripe.webhooks
        if lago_webhooks is not None:
            facades[LAGO_WEBHOOKS] = lago_webhooks
        engine_socket = EngineSocket(facades, Codec(WIRE_EXTENSIONS),
                                     accepting_writes=lambda: billing.accepting_writes,
                                     registry=billing.metrics.registry,
                                     batch_forms=BILLING_BATCH_FORMS,
                                     feed=billing.balance_feed)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            nursery.start_soon(_stop_when_orphaned, stop)
            if stripe is not None:
                await nursery.start(stripe.refills.run)
            await nursery.start(webhook_delivery_for(settings, billing).run)
            await nursery.start(engine_socket.serve, engine_socket_path(settings))
            ready()
            await stop.wait()
            await engine_socket.drain(SHUTDOWN_GRACE_S)
            nursery.cancel_scope.cancel()
    print("z-billing engine stopped; journal flushed", flush=True)


class _ListenConfig(Config):
    """hypercorn's config, binding the listen address itself: with SO_REUSEPORT in a worker
    (each worker has its own listening socket and the kernel spreads connections over them;
    hypercorn sets the option only when it forks workers itself, which share one accept
    queue), and with a bounded kernel send buffer on every connection (SO_SNDBUF, inherited
    from the listening socket), so that a balance WebSocket whose reader stopped reading is
    found after about SOCKET_SEND_BUFFER_BYTES / 170 updates, not after the 4 MB an
    autotuned buffer grows to."""

    def __init__(self, *, reuse_port: bool) -> None:
        super().__init__()
        self._reuse_port = reuse_port

    def create_sockets(self) -> Sockets:
        host, port = Settings(listen=self.bind[0]).host_port
        host = host.strip("[]")
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER_BYTES)
        listener.bind((host, port))
        listener.setblocking(False)
        return Sockets(secure_sockets=[], insecure_sockets=[listener], quic_sockets=[])


class _CloseAfterReply:
    """ASGI middleware: once a reply has started, a client's disconnect is not passed on.

    hypercorn closes a `Connection: close` reply's connection from inside the app's last
    send, and tells the app `http.disconnect` just before; quart-trio's receiving task then
    ends and cancels the request's nursery, which cancels that close half-way (measured: the
    connection stayed open until shutdown). Held back, the request finishes its reply and
    its own task ends the app. A disconnect before any reply still cancels the handler."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]],
                       send: Callable[..., Awaitable[Any]]) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        replying = False

        async def receive_until_replying() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" and replying:
                await trio.sleep_forever()  # the app ends once its reply is out
            return message

        async def send_noting(message: dict[str, Any]) -> None:
            nonlocal replying
            replying = replying or message["type"] == "http.response.start"
            await send(message)

        await self._app(scope, receive_until_replying, send_noting)


class _FreshEngineMetrics:
    """ASGI middleware: fetch the engine's metrics before the app answers /metrics
    (prometheus collectors are synchronous, so the await happens here)."""

    def __init__(self, app: QuartTrio, registry: AllProcessesRegistry, link: EngineLink
                 ) -> None:
        self._app = app
        self._registry = registry
        self._link = link

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]],
                       send: Callable[..., Awaitable[Any]]) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await self._registry.refresh(self._link.engine_families)
        await self._app(scope, receive, send)


async def serve_worker(settings: Settings, metrics_dir: Path, ready: Callable[[], None]
                       ) -> None:
    """An HTTP worker process: hypercorn and the app, on the engine's facades over the socket.
    It binds the listen address only once it reached the engine, so it never answers a
    request it could not serve."""
    codec = Codec(WIRE_EXTENSIONS)
    registry = AllProcessesRegistry(metrics_dir)
    link = EngineLink(engine_socket_path(settings), codec, role=ROLE_WORKER, registry=registry)
    billing = RemoteBilling(link, pricing=load_pricing(settings.pricing_path),
                            plans=settings.plans, registry=registry)
    lago_webhooks = (cast(LagoWebhooks, RemoteFacade(link, LagoWebhooks, LAGO_WEBHOOKS))
                     if settings.lago_webhook_secret or settings.lago_public_key else None)
    # Billing's interface, served by introspection of Billing itself (actors.remote).
    facade = cast(Billing, billing)
    app = create_app(facade, settings, Authenticator(settings), worker_stripe(settings, link,
                     facade), lago_webhooks)
    config = hypercorn_config(settings, _ListenConfig(reuse_port=True))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, stop)
        nursery.start_soon(_stop_when_orphaned, stop)
        await nursery.start(link.run)
        await _first_of(link.wait_connected, stop.wait)
        if not stop.is_set():
            async with trio.open_nursery() as http:
                await http.start(partial(hypercorn_serve,
                                         _CloseAfterReply(_FreshEngineMetrics(app, registry, link)),
                                         config, shutdown_trigger=partial(
                                             _stopping, stop, billing.balance_feed)))
                ready()
        nursery.cancel_scope.cancel()


def worker_stripe(settings: Settings, link: EngineLink, billing: Billing) -> StripeService | None:
    """Stripe in a worker: the gateway (checkout, customers, payment history) is called from
    here; webhooks are applied in the engine, which also runs the refill worker (this
    process's RefillWorker is never started)."""
    if not settings.stripe_enabled:
        return None
    gateway = stripe_gateway(settings)
    return StripeService(gateway,
                         cast(StripeWebhooks, RemoteFacade(link, StripeWebhooks, STRIPE_WEBHOOKS)),
                         RefillWorker(gateway, billing.payments, billing.plans),
                         billing.payments, billing.plans)


async def _stopping(stop: trio.Event, feed: BalanceFeed | RemoteBalanceFeed) -> None:
    """hypercorn's shutdown trigger: once stopping, the balance WebSockets close (1001)
    rather than hold the graceful shutdown until its time-out."""
    await stop.wait()
    feed.end_all()


async def _first_of(*waits: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        async def until(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(until, wait)


async def _stop_when_orphaned(stop: trio.Event) -> None:
    """A child of the supervisor stops (cleanly) when the supervisor is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(PARENT_POLL_S)
    print("the supervisor is gone: shutting down", flush=True)
    stop.set()


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            print(f"received {signal.Signals(received).name}: shutting down", flush=True)
            stop.set()
            return


def print_banner(settings: Settings) -> None:
    print("z-billing starting", flush=True)
    for line in settings.summary():
        print(f"  {line}", flush=True)
    if settings.generated_keys:
        # --dev only: keys generated for this run, printed so that a developer can call us.
        for key in settings.service_keys:
            print(f"  dev service key ({key.name}): {key.key}", flush=True)
        print(f"  dev admin key: {settings.admin_key}", flush=True)


def configure_logging(process: str = "") -> None:
    tag = f" [{process}]" if process else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{tag} %(message)s")


def run(settings: Settings) -> None:
    configure_logging()
    trio.run(serve, settings)
