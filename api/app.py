"""The HTTP API (quart-trio): the plumbing of `api/http.py` and the route groups, assembled.

Every route is declared once with `@endpoint(Route(...))` in its group's module: the
declaration registers the handler with Quart, authenticates the caller, decodes the body and
query into their types, encodes the reply, and is what `/openapi.json` is generated from.
Routes whose integration (Stripe, Lago webhooks) is off answer 503 `not_configured`.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from actors.billing import Billing
from api.account_routes import register_account_routes
from api.auth import Authenticator
from api.balance_routes import register_balance_socket
from api.checkout_pages import register_checkout_pages
from api.control_routes import register_control_routes
from api.cors import install_cors
from api.grant_routes import register_grant_routes
from api.http import Endpoints, install_error_handlers, install_request_hooks
from api.lot_routes import register_lot_routes
from api.payment_routes import register_payment_routes
from api.reservation_routes import register_reservation_routes
from api.settings import Settings
from api.subscription_routes import register_lago_routes, register_subscription_routes
from api.system_routes import register_system_routes
from api.usage_routes import register_report_routes, register_usage_routes
from api.webhook_routes import register_webhook_routes
from integrations.lago.webhooks import LagoWebhooks
from integrations.stripe.service import StripeService


def create_app(
    billing: Billing, settings: Settings, auth: Authenticator,
    stripe: StripeService | None = None,
    lago_webhooks: LagoWebhooks | None = None,
) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    registry = billing.metrics.registry
    install_request_hooks(app, registry)
    install_error_handlers(app, settings.max_body_bytes)
    endpoint = Endpoints(app, auth, settings.metrics_token, registry,
                         request_timeout_s=settings.request_timeout_s)
    install_cors(app, settings.cors_origins)
    register_account_routes(endpoint, billing, stripe)
    register_lot_routes(endpoint, billing)
    register_control_routes(endpoint, billing)
    register_webhook_routes(endpoint, billing)
    register_report_routes(endpoint, billing)
    register_usage_routes(endpoint, billing)
    register_reservation_routes(endpoint, billing)
    register_grant_routes(endpoint, billing, settings)
    register_payment_routes(endpoint, billing, stripe)
    register_subscription_routes(endpoint, billing, stripe)
    register_lago_routes(endpoint, lago_webhooks, settings)
    register_balance_socket(app, endpoint, billing, auth, registry)
    register_checkout_pages(endpoint)
    register_system_routes(endpoint, billing, registry)
    return app
