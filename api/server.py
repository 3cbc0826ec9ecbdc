"""`zbilling serve`: hypercorn's trio server, the quart-trio app and the engine in one
trio.run. SIGTERM and SIGINT stop it cleanly: in-flight requests finish, the journal flushes,
the process exits 0."""

from __future__ import annotations

import logging
import signal
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from actors.billing import Billing
from actors.config import load_pricing
from actors.metrics import TallyCollector
from actors.runtime import open_billing
from api.app import create_app
from api.auth import Authenticator
from api.settings import Settings
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter
from integrations.lago.webhooks import LagoWebhooks, load_public_key
from integrations.stripe.gateway import StripeGateway
from integrations.stripe.service import StripeService, stripe_service

log = logging.getLogger("zbilling.server")

# How long in-flight requests may take to finish after SIGTERM.
SHUTDOWN_GRACE_S = 10.0
KEEP_ALIVE_MAX_REQUESTS = 2**62


async def serve(settings: Settings) -> None:
    exporter = (
        lago_exporter(LagoClient(settings.lago_api_url or "", settings.lago_api_key or ""))
        if settings.lago_enabled else None
    )
    pricing = load_pricing(settings.pricing_path)
    async with open_billing(settings.data_dir, pricing=pricing, plans=settings.plans,
                            exporter=exporter) as billing:
        stripe = stripe_for(settings, billing)
        lago_webhooks = lago_webhooks_for(settings, billing)
        app = create_app(billing, settings, Authenticator(settings), stripe, lago_webhooks)
        config = Config()
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
        stop = trio.Event()
        print_banner(settings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            if stripe is not None:
                await nursery.start(stripe.refills.run)
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    print("z-billing stopped; journal flushed", flush=True)


def stripe_for(settings: Settings, billing: Billing) -> StripeService | None:
    if not settings.stripe_enabled:
        return None
    gateway = StripeGateway(settings.stripe_api_key or "",
                            webhook_secret=settings.stripe_webhook_secret,
                            frontend_url=settings.frontend_url,
                            api_base=settings.stripe_api_base)
    return stripe_service(gateway, billing.payments, billing.subscriptions, billing.plans,
                          billing.metrics.registry,
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


def run(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    trio.run(serve, settings)
