"""The pages Stripe Checkout returns a browser to when FRONTEND_URL is unset (the original's
`/checkout/success` and `/checkout/cancelled`): small static HTML. The credits themselves come
with the signed webhook, never with this page."""

from __future__ import annotations

from quart import Response

from api.http import Register
from api.routes import Caller, Route

HTML = "text/html; charset=utf-8"
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 4rem auto; text-align: center">
<h1>{title}</h1><p>{text}</p><p>You can close this window.</p></body></html>
"""
SUCCESS = _PAGE.format(title="Payment received",
                       text="Thank you. Your credits are added as soon as Stripe confirms "
                            "the payment, usually within seconds.")
CANCELLED = _PAGE.format(title="Payment cancelled",
                         text="Nothing was charged and your balance is unchanged.")


def register_checkout_pages(endpoint: Register) -> None:
    @endpoint(Route("GET", "/checkout/success", "Where Checkout returns after a payment",
                    Caller.PUBLIC, media_type="text/html"))
    async def checkout_success() -> Response:
        return Response(SUCCESS, 200, content_type=HTML)

    @endpoint(Route("GET", "/checkout/cancelled", "Where Checkout returns when cancelled",
                    Caller.PUBLIC, media_type="text/html"))
    async def checkout_cancelled() -> Response:
        return Response(CANCELLED, 200, content_type=HTML)
