"""A local stand-in for Stripe's API on 127.0.0.1, behaving like Stripe where our payment code
depends on it, so that the real `stripe` library talks to it unchanged
(`StripeClient(..., base_addresses={"api": fake.url}, http_client=stripe.HTTPXClient())`).

- Form-encoded bodies (`metadata[k]=v`, `line_items[0][price_data][unit_amount]=..`) decoded
  into nested dicts and lists; values stay strings as on the wire; JSON answers.
- Bearer auth (401), idempotency keys (replay with `Idempotent-Replayed: true`, 400
  `idempotency_error` on different parameters), Stripe's error shapes and status codes.
- Customers, Checkout Sessions, PaymentIntents (test payment methods `PM_OK`, `PM_DECLINED`,
  `PM_AUTH_REQUIRED`), listing with cursors, refunds, billing portal sessions, subscriptions
  (retrieve, list, update `cancel_at_period_end`/`metadata`, cancel) and their invoices.
- Test controls: completing a Checkout Session (in subscription mode: a subscription and its
  first paid invoice), renewing a subscription paid or not, paying an open invoice, reaching
  the end of a period, refunding, building events and delivering them to `webhook_url` with a
  correct (or deliberately wrong) `Stripe-Signature`.
- Modes: "ok", "error" (every call 500 `api_error`), and `stop()`/`start()` to refuse
  connections and come back on the same port.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import stripe

API_KEY = "sk_test_fake_0123456789"
WEBHOOK_SECRET = "whsec_fake_0123456789"
PM_OK = "pm_card_visa"
PM_DECLINED = "pm_card_chargeDeclined"
PM_AUTH_REQUIRED = "pm_card_authenticationRequired"
PAYMENT_METHODS = (PM_OK, PM_DECLINED, PM_AUTH_REQUIRED)

# Stripe's minimum charge for USD; the fake applies it to every currency.
MINIMUM_AMOUNT = 50
LIST_LIMIT_MAX = 100
LIST_LIMIT_DEFAULT = 10
METADATA_VALUE_MAX = 500
DELIVER_TIMEOUT_S = 10.0
# A subscription's billing period in the fake: always 30 days.
PERIOD_S = 30 * 24 * 3600
POLL_S = 0.02

Answer = tuple[int, dict[str, Any], dict[str, str]]


class Headers(dict[str, str]):
    """Request headers under their canonical spelling, also found case-insensitively (HTTP
    header names are case-insensitive; tests write `headers["Idempotency-Key"]`)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.title())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.title())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.title(), default)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    headers: Headers = field(default_factory=Headers)


class StripeError(Exception):
    """An error answer in Stripe's shape: {"error": {"type", "message", ...}}."""

    def __init__(self, status: int, type: str, message: str, *, code: str | None = None,
                 param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
        if param is not None:
            self.body["param"] = param
        self.body.update(extra)


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code=code, param=param)


def missing_param(param: str) -> StripeError:
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def no_such(kind: str, ident: str, param: str | None = None, status: int = 400) -> StripeError:
    return StripeError(status, "invalid_request_error", f"No such {kind}: '{ident}'",
                       code="resource_missing", param=param)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into nested data: `a[b][0][c]=v` -> {"a": {"b": [{"c": v}]}}.
    Values stay strings, as Stripe receives them."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [head]
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                if child not in (None, ""):  # `metadata=` (unset) then `metadata[k]=v` is fine
                    raise invalid(f"Invalid value for {key}.", key)
                child = node[part] = {}
            node = child
    return _listify(root, "")


def _listify(node: Any, name: str) -> Any:
    """Dicts keyed 0, 1, 2... were arrays (the library always sends indexed arrays);
    metadata keeps its keys whatever they look like."""
    if not isinstance(node, dict):
        return node
    items = {key: _listify(value, key) for key, value in node.items()}
    keys = list(items)
    if (name != "metadata" and keys and all(key.isdigit() for key in keys)
            and sorted(int(key) for key in keys) == list(range(len(keys)))):
        return [items[str(position)] for position in range(len(keys))]
    return items


def as_int(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing_param(name)
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {value}", name, "parameter_invalid_integer") from None


def as_bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return False
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {value}", name)
    return value == "true"


def as_metadata(params: dict[str, Any], name: str = "metadata") -> dict[str, str]:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid object: {name}", name)
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"Invalid string: {name}[{key}]", f"{name}[{key}]")
        if len(item) > METADATA_VALUE_MAX:
            raise invalid(f"Metadata values can have up to {METADATA_VALUE_MAX} characters",
                          f"{name}[{key}]")
    return {key: item for key, item in value.items() if item != ""}


def merge_metadata(current: dict[str, str], update: Any) -> dict[str, str]:
    """Stripe merges metadata on update: an empty value unsets a key, `metadata=` unsets all."""
    if update == "":
        return {}
    merged = dict(current)
    for key, value in as_metadata({"metadata": update}).items():
        merged[key] = value
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
    return merged


def find(table: dict[str, dict[str, Any]], kind: str, ident: str, param: str | None,
         status: int) -> dict[str, Any]:
    found = table.get(ident)
    if found is None:
        raise no_such(kind, ident, param, status)
    return found


def page(params: dict[str, Any], objects: list[dict[str, Any]],
         table: dict[str, dict[str, Any]], kind: str, url: str) -> dict[str, Any]:
    """A Stripe list: `limit` (1..100, default 10) objects after `starting_after`."""
    limit = as_int(params, "limit")
    limit = LIST_LIMIT_DEFAULT if limit is None else limit
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise invalid(f"Invalid limit: must be between 1 and {LIST_LIMIT_MAX}", "limit")
    after = params.get("starting_after") or None
    if after is not None:
        find(table, kind, after, "starting_after", 400)
        ids = [obj["id"] for obj in objects]
        objects = objects[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": objects[:limit], "has_more": len(objects) > limit,
            "url": url}


def is_url(value: Any) -> bool:
    return isinstance(value, str) and re.match(r"https?://[^\s/]+", value) is not None


class FakeStripe:
    def __init__(self, *, api_key: str = API_KEY, webhook_secret: str = WEBHOOK_SECRET) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_url: str | None = None
        self.mode = "ok"
        # (method, path) -> seconds to hold the answer after the work is done: Stripe acted,
        # its answer is late (a test kills its caller meanwhile).
        self.answer_delays: dict[tuple[str, str], float] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.events: list[dict[str, Any]] = []
        # Checkout Session parameters Stripe keeps but does not return, by session id.
        self._session_params: dict[str, dict[str, Any]] = {}
        # What each period of a subscription costs (0 when its Price's amount is unknown).
        self._subscription_amounts: dict[str, tuple[int, str]] = {}
        # idempotency key -> (method, path, params, status, body)
        self._idempotent: dict[str, tuple[str, str, dict[str, Any], int, dict[str, Any]]] = {}
        # Reentrant: test controls call the same helpers the API handlers use.
        self._lock = threading.RLock()
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- serving -----------------------------------------------------------------------------

    def start(self) -> None:
        """Serve in a background thread; after `stop()`, on the same port again."""
        if self._server is not None:
            return
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                headers = Headers({name.title(): value for name, value in self.headers.items()})
                status, payload, extra = fake.handle(self.command, self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        server = _QuietServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        # A short poll interval keeps stop() (server.shutdown) quick.
        self._thread = threading.Thread(target=server.serve_forever, args=(POLL_S,),
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: further connections are refused (Stripe unreachable)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FakeStripe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Answer:
        split = urlsplit(target)
        path = split.path
        with self._lock:
            request_id = new_id("req")
            try:
                raw = body.decode() if method == "POST" else split.query
                params = decode_form(parse_qsl(raw, keep_blank_values=True))
            except StripeError as error:
                params = {}
                failure: StripeError | None = error
            except UnicodeDecodeError:
                params, failure = {}, invalid("Invalid request body encoding.")
            else:
                failure = None
            self.requests.append(Recorded(method, path, params, headers))
            extra = {"Request-Id": request_id}
            if path.startswith(("/c/pay/", "/p/session/")):
                # The hosted pages a user's browser would open; no API key there.
                return 200, {"page": path}, extra
            try:
                if failure is not None:
                    raise failure
                status, payload, more = self._answer(method, path, params, headers, request_id)
            except StripeError as error:
                status, payload, more = error.status, {"error": error.body}, {}
            delay_s = self.answer_delays.get((method, path), 0.0)
        if delay_s:
            time.sleep(delay_s)  # outside the lock: other requests go on meanwhile
        return status, payload, {**extra, **more}

    def _answer(self, method: str, path: str, params: dict[str, Any], headers: Headers,
                request_id: str) -> Answer:
        authorization = headers.get("Authorization", "")
        if authorization != f"Bearer {self.api_key}":
            shown = authorization.removeprefix("Bearer ").strip()
            masked = f"{shown[:8]}{'*' * max(0, len(shown) - 12)}{shown[-4:]}" if shown else ""
            raise StripeError(401, "invalid_request_error",
                              f"Invalid API Key provided: {masked}")
        if self.mode == "error":
            # Stripe being down: nothing ran, so nothing is saved under the idempotency key.
            raise StripeError(500, "api_error",
                              "An unknown error occurred while processing your request.")
        route = self._route(method, path)
        if route is None:
            raise StripeError(404, "invalid_request_error",
                              f"Unrecognized request URL ({method}: {path}). Please see "
                              "https://stripe.com/docs or we can help at "
                              "https://support.stripe.com/.")
        handler, args = route
        key = headers.get("Idempotency-Key") if method == "POST" else None
        if key:
            seen = self._idempotent.get(key)
            if seen is not None:
                if seen[:3] != (method, path, params):
                    raise StripeError(
                        400, "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.")
                return seen[3], copy.deepcopy(seen[4]), {"Idempotent-Replayed": "true",
                                                         "Idempotency-Key": key}
        context = {"id": request_id, "idempotency_key": key}
        try:
            status, payload = 200, handler(params, context, *args)
        except StripeError as error:
            status, payload = error.status, {"error": error.body}
            # Stripe saves a result only once the endpoint ran: card errors are kept,
            # parameter validation failures are not.
            if error.status != 402:
                raise
        if key:
            self._idempotent[key] = (method, path, copy.deepcopy(params), status,
                                     copy.deepcopy(payload))
        return status, copy.deepcopy(payload), ({"Idempotency-Key": key} if key else {})

    def _route(self, method: str, path: str) -> tuple[Any, tuple[str, ...]] | None:
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/([^/]+)", self._get_customer),
            ("POST", r"/v1/customers/([^/]+)", self._update_customer),
            ("POST", r"/v1/checkout/sessions", self._create_session),
            ("GET", r"/v1/checkout/sessions/([^/]+)", self._get_session),
            ("POST", r"/v1/payment_intents", self._create_payment_intent),
            ("GET", r"/v1/payment_intents", self._list_payment_intents),
            ("GET", r"/v1/payment_intents/([^/]+)", self._get_payment_intent),
            ("POST", r"/v1/refunds", self._create_refund),
            ("POST", r"/v1/billing_portal/sessions", self._create_portal_session),
            ("GET", r"/v1/subscriptions", self._list_subscriptions),
            ("GET", r"/v1/subscriptions/([^/]+)", self._get_subscription),
            ("POST", r"/v1/subscriptions/([^/]+)", self._update_subscription),
            ("DELETE", r"/v1/subscriptions/([^/]+)", self._cancel_subscription),
            ("GET", r"/v1/invoices/([^/]+)", self._get_invoice),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return handler, match.groups()
        return None

    # --- customers ---------------------------------------------------------------------------

    def _create_customer(self, params: dict[str, Any], context: dict[str, Any]
                         ) -> dict[str, Any]:
        del context
        customer = {
            "id": new_id("cus"), "object": "customer", "created": now(),
            "email": params.get("email") or None, "name": params.get("name") or None,
            "description": params.get("description") or None,
            "metadata": as_metadata(params),
            "invoice_settings": {"default_payment_method": None},
            "livemode": False,
        }
        self._set_invoice_settings(customer, params)
        self.customers[customer["id"]] = customer
        return customer

    def _customer(self, customer_id: str, param: str | None = None, status: int = 400
                  ) -> dict[str, Any]:
        return find(self.customers, "customer", customer_id, param, status)

    def _get_customer(self, params: dict[str, Any], context: dict[str, Any],
                      customer_id: str) -> dict[str, Any]:
        del params, context
        return self._customer(customer_id, "id", 404)

    def _update_customer(self, params: dict[str, Any], context: dict[str, Any],
                         customer_id: str) -> dict[str, Any]:
        del context
        customer = self._customer(customer_id, "id", 404)
        if "metadata" in params:
            customer["metadata"] = merge_metadata(customer["metadata"], params["metadata"])
        for name in ("email", "name", "description"):
            if name in params:
                customer[name] = params[name] or None
        self._set_invoice_settings(customer, params)
        return customer

    def _set_invoice_settings(self, customer: dict[str, Any], params: dict[str, Any]) -> None:
        settings = params.get("invoice_settings")
        if isinstance(settings, dict) and "default_payment_method" in settings:
            method = settings["default_payment_method"] or None
            if method is not None and method not in PAYMENT_METHODS:
                raise no_such("PaymentMethod", method,
                              "invoice_settings[default_payment_method]")
            customer["invoice_settings"]["default_payment_method"] = method

    # --- checkout sessions -------------------------------------------------------------------

    def _create_session(self, params: dict[str, Any], context: dict[str, Any]
                        ) -> dict[str, Any]:
        del context
        mode = params.get("mode")
        if not mode:
            raise missing_param("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise invalid(f"Invalid mode: must be one of payment, setup, or subscription "
                          f"(got {mode!r}).", "mode", "parameter_invalid_empty")
        for name in ("success_url", "cancel_url"):
            if name == "success_url" and not params.get(name):
                raise missing_param(name)
            if name in params and not is_url(params[name]):
                raise invalid("Not a valid URL", name, "url_invalid")
        if "payment_intent_data" in params and mode != "payment":
            raise invalid("You can only specify `payment_intent_data` in `payment` mode.",
                          "payment_intent_data")
        if "subscription_data" in params and mode != "subscription":
            raise invalid("You can only specify `subscription_data` in `subscription` mode.",
                          "subscription_data")
        amount_total, currency = self._line_items(params, mode)
        customer = params.get("customer") or None
        if customer is not None:
            self._customer(customer, "customer")
        session_id = new_id("cs_test")
        session = {
            "id": session_id, "object": "checkout.session",
            "url": f"{self.url}/c/pay/{session_id}",
            "mode": mode, "status": "open", "payment_status": "unpaid",
            "amount_total": amount_total, "amount_subtotal": amount_total,
            "currency": currency, "customer": customer,
            "customer_email": params.get("customer_email") or None,
            "client_reference_id": params.get("client_reference_id") or None,
            "metadata": as_metadata(params),
            "payment_intent": None, "subscription": None,
            "success_url": params["success_url"], "cancel_url": params.get("cancel_url"),
            "created": now(), "expires_at": now() + 24 * 3600, "livemode": False,
        }
        self.sessions[session_id] = session
        self._session_params[session_id] = copy.deepcopy(params)
        return session

    def _line_items(self, params: dict[str, Any], mode: str) -> tuple[int | None, str | None]:
        """Check `line_items` as Stripe does; (amount_total, currency)."""
        items = params.get("line_items")
        if mode == "setup":
            if items:
                raise invalid("You cannot pass `line_items` in `setup` mode.", "line_items")
            return None, params.get("currency") or None
        if not items:
            raise missing_param("line_items")
        if not isinstance(items, list):
            raise invalid("Invalid array", "line_items")
        total, currencies = 0, set()
        for index, item in enumerate(items):
            where = f"line_items[{index}]"
            if not isinstance(item, dict):
                raise invalid("Invalid object", where)
            quantity = as_int(item, "quantity")
            if quantity is None:
                raise missing_param(f"{where}[quantity]")
            if quantity < 1:
                raise invalid("This value must be greater than or equal to 1.",
                              f"{where}[quantity]")
            if ("price" in item) == ("price_data" in item):
                raise invalid("You must specify either `price` or `price_data` for each "
                              "line item.", where)
            data = item.get("price_data")
            if data is None:
                continue  # a Price id: its amount is unknown to the fake
            if not isinstance(data, dict):
                raise invalid("Invalid object", f"{where}[price_data]")
            if not data.get("currency"):
                raise missing_param(f"{where}[price_data][currency]")
            unit_amount = as_int(data, "unit_amount")
            if unit_amount is None:
                raise missing_param(f"{where}[price_data][unit_amount]")
            if unit_amount < 0:
                raise invalid("This value must be greater than or equal to 0.",
                              f"{where}[price_data][unit_amount]")
            product = data.get("product_data")
            if not data.get("product") and not (isinstance(product, dict)
                                                and product.get("name")):
                raise missing_param(f"{where}[price_data][product_data][name]")
            currencies.add(str(data["currency"]).lower())
            total += unit_amount * quantity
        if len(currencies) > 1:
            raise invalid("All line items must have the same currency.", "line_items")
        return total, (currencies.pop() if currencies else "usd")

    def _get_session(self, params: dict[str, Any], context: dict[str, Any],
                     session_id: str) -> dict[str, Any]:
        del params, context
        session = self.sessions.get(session_id)
        if session is None:
            raise no_such("checkout.session", session_id, "session", 404)
        return session

    # --- payment intents ---------------------------------------------------------------------

    def _create_payment_intent(self, params: dict[str, Any], context: dict[str, Any]
                               ) -> dict[str, Any]:
        amount = as_int(params, "amount", required=True)
        assert amount is not None
        if amount < MINIMUM_AMOUNT:
            raise invalid("Amount must be at least $0.50 usd", "amount", "amount_too_small")
        currency = params.get("currency")
        if not currency:
            raise missing_param("currency")
        customer_id = params.get("customer") or None
        customer = self._customer(customer_id, "customer") if customer_id else None
        confirm = as_bool(params, "confirm")
        off_session = as_bool(params, "off_session")
        if off_session and not confirm:
            raise invalid("You can only pass `off_session` when `confirm` is true.",
                          "off_session")
        method = params.get("payment_method") or None
        if method is None and customer is not None:
            # Convenience of the fake: real Stripe does not fall back to the customer's
            # invoice default for PaymentIntents; callers should pass payment_method.
            method = customer["invoice_settings"]["default_payment_method"]
        if method is not None and method not in PAYMENT_METHODS:
            raise no_such("PaymentMethod", method, "payment_method")
        if confirm and method is None:
            raise invalid("You cannot confirm this PaymentIntent because it's missing a "
                          "payment method. Pass a payment_method.", "payment_method",
                          "parameter_missing")
        intent = {
            "id": new_id("pi"), "object": "payment_intent", "amount": amount,
            "amount_received": 0, "currency": str(currency).lower(), "customer": customer_id,
            "status": "requires_confirmation" if method else "requires_payment_method",
            "metadata": as_metadata(params), "description": params.get("description") or None,
            "payment_method": method, "last_payment_error": None, "latest_charge": None,
            "created": now(), "livemode": False,
        }
        self.payment_intents[intent["id"]] = intent
        if confirm:
            assert method is not None
            self._confirm(intent, method, context)
        return intent

    def _confirm(self, intent: dict[str, Any], method: str, context: dict[str, Any]) -> None:
        if method == PM_OK:
            self._succeed(intent, context)
            return
        if method == PM_DECLINED:
            code, decline, message = "card_declined", "generic_decline", "Your card was declined."
            intent["status"], event_type = "requires_payment_method", "payment_failed"
        else:
            code, decline = "authentication_required", "authentication_required"
            message = ("Your card was declined. This transaction requires authentication.")
            intent["status"], event_type = "requires_action", "requires_action"
        error = {"type": "card_error", "code": code, "decline_code": decline,
                 "message": message, "payment_method": {"id": method, "object": "payment_method"}}
        intent["last_payment_error"] = error
        self._emit(f"payment_intent.{event_type}", intent, context)
        raise StripeError(402, "card_error", message, code=code, decline_code=decline,
                          payment_intent=copy.deepcopy(intent))

    def _succeed(self, intent: dict[str, Any], context: dict[str, Any] | None) -> None:
        charge = {
            "id": new_id("ch"), "object": "charge", "amount": intent["amount"],
            "amount_captured": intent["amount"], "amount_refunded": 0,
            "currency": intent["currency"], "captured": True, "paid": True,
            "refunded": False, "status": "succeeded", "payment_intent": intent["id"],
            "payment_method": intent["payment_method"], "customer": intent["customer"],
            "metadata": dict(intent["metadata"]),
            "refunds": {"object": "list", "data": [], "has_more": False,
                        "url": "/v1/refunds"},
            "created": now(), "livemode": False,
        }
        self.charges[charge["id"]] = charge
        intent.update(status="succeeded", amount_received=intent["amount"],
                      latest_charge=charge["id"], last_payment_error=None)
        self._emit("payment_intent.succeeded", intent, context)

    def _payment_intent(self, intent_id: str, param: str, status: int = 400
                        ) -> dict[str, Any]:
        return find(self.payment_intents, "payment_intent", intent_id, param, status)

    def _get_payment_intent(self, params: dict[str, Any], context: dict[str, Any],
                            intent_id: str) -> dict[str, Any]:
        del params, context
        return self._payment_intent(intent_id, "intent", 404)

    def _list_payment_intents(self, params: dict[str, Any], context: dict[str, Any]
                              ) -> dict[str, Any]:
        del context
        customer = params.get("customer") or None
        # Newest first; creation order breaks ties between intents of the same second.
        intents = [intent for intent in reversed(self.payment_intents.values())
                   if customer is None or intent["customer"] == customer]
        return page(params, intents, self.payment_intents, "payment_intent",
                    "/v1/payment_intents")

    # --- refunds -----------------------------------------------------------------------------

    def _create_refund(self, params: dict[str, Any], context: dict[str, Any]
                       ) -> dict[str, Any]:
        intent_id = params.get("payment_intent") or None
        charge_id = params.get("charge") or None
        if intent_id is None and charge_id is None:
            raise invalid("One of the following params should be provided for this request: "
                          "payment_intent or charge.", "payment_intent", "parameter_missing")
        if intent_id is not None:
            intent = self._payment_intent(intent_id, "payment_intent")
            if intent["status"] != "succeeded" or intent["latest_charge"] is None:
                raise invalid(f"This PaymentIntent ({intent_id}) does not have a successful "
                              "charge to refund.", "payment_intent")
            if charge_id is not None and charge_id != intent["latest_charge"]:
                raise invalid("The charge does not belong to this PaymentIntent.", "charge")
            charge_id = intent["latest_charge"]
        charge = self.charges.get(charge_id or "")
        if charge is None:
            raise no_such("charge", str(charge_id), "charge")
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining == 0:
            raise invalid(f"Charge {charge['id']} has already been refunded.", "charge",
                          "charge_already_refunded")
        amount = as_int(params, "amount")
        amount = remaining if amount is None else amount
        if amount < 1:
            raise invalid("Refund amount must be positive.", "amount")
        if amount > remaining:
            raise invalid(f"Refund amount ({amount}) is greater than unrefunded amount on "
                          f"charge ({remaining})", "amount")
        refund = {
            "id": new_id("re"), "object": "refund", "amount": amount,
            "charge": charge["id"], "payment_intent": charge["payment_intent"],
            "currency": charge["currency"], "status": "succeeded",
            "reason": params.get("reason") or None, "metadata": as_metadata(params),
            "created": now(),
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        charge["refunds"]["data"].insert(0, refund)  # newest first, as Stripe lists them
        self._emit("charge.refunded", charge, context)
        return refund

    # --- billing portal ----------------------------------------------------------------------

    def _create_portal_session(self, params: dict[str, Any], context: dict[str, Any]
                               ) -> dict[str, Any]:
        del context
        customer = params.get("customer") or None
        if customer is None:
            raise missing_param("customer")
        self._customer(customer, "customer")
        return_url = params.get("return_url") or None
        if return_url is not None and not is_url(return_url):
            raise invalid("Not a valid URL", "return_url", "url_invalid")
        portal_id = new_id("bps")
        portal = {"id": portal_id, "object": "billing_portal.session",
                  "url": f"{self.url}/p/session/{portal_id}", "customer": customer,
                  "return_url": return_url, "created": now(), "livemode": False}
        self.portal_sessions[portal_id] = portal
        return portal

    # --- subscriptions and invoices ----------------------------------------------------------

    def _start_subscription(self, session: dict[str, Any], params: dict[str, Any]
                            ) -> dict[str, Any]:
        """The subscription a completed subscription-mode session starts, with its first paid
        invoice; `customer.subscription.created` and `invoice.paid`."""
        customer = session["customer"]
        if customer is None:  # Stripe makes a customer when Checkout was given none
            customer = self._create_customer(
                {"email": session["customer_email"] or ""}, {})["id"]
            session["customer"] = customer
        sub_data = params.get("subscription_data")
        metadata = as_metadata(sub_data) if isinstance(sub_data, dict) else {}
        item = params["line_items"][0]
        price_id = item.get("price") or new_id("price")
        start = now()
        end = start + PERIOD_S
        subscription: dict[str, Any] = {
            "id": new_id("sub"), "object": "subscription", "customer": customer,
            "status": "active", "current_period_start": start, "current_period_end": end,
            "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None,
            "ended_at": None, "metadata": metadata,
            "items": {"object": "list", "data": [{
                "id": new_id("si"), "object": "subscription_item",
                "price": {"id": price_id, "object": "price"},
                "quantity": as_int(item, "quantity") or 1,
                "current_period_start": start, "current_period_end": end,
            }], "has_more": False, "url": "/v1/subscription_items"},
            "latest_invoice": None, "created": start, "livemode": False,
        }
        self.subscriptions[subscription["id"]] = subscription
        self._subscription_amounts[subscription["id"]] = (
            session["amount_total"] or 0, session["currency"] or "usd")
        invoice = self._new_invoice(subscription, "subscription_create", paid=True,
                                    period=(start, start))
        self._emit("customer.subscription.created", subscription, None)
        self._emit("invoice.paid", invoice, None)
        return subscription

    def _new_invoice(self, subscription: dict[str, Any], billing_reason: str, *, paid: bool,
                     period: tuple[int, int]) -> dict[str, Any]:
        """An invoice for the subscription's current period (its line); `period` is the
        invoice's own `period_start`/`period_end`, which Stripe sets apart from the line's."""
        amount, currency = self._subscription_amounts.get(subscription["id"], (0, "usd"))
        metadata = dict(subscription["metadata"])
        price_id = subscription["items"]["data"][0]["price"]["id"]
        invoice = {
            "id": new_id("in"), "object": "invoice", "customer": subscription["customer"],
            "subscription": subscription["id"],
            "status": "paid" if paid else "open", "paid": paid,
            "amount_due": amount, "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount, "currency": currency,
            "billing_reason": billing_reason,
            "subscription_details": {"metadata": metadata},
            # Where API versions since 2025-03-31 put the subscription.
            "parent": {"type": "subscription_details", "subscription_details": {
                "subscription": subscription["id"], "metadata": metadata}},
            "period_start": period[0], "period_end": period[1],
            "lines": {"object": "list", "data": [{
                "id": new_id("il"), "object": "line_item", "amount": amount,
                "currency": currency,
                "period": {"start": subscription["current_period_start"],
                           "end": subscription["current_period_end"]},
                "price": {"id": price_id, "object": "price"},
                "quantity": subscription["items"]["data"][0]["quantity"],
                "metadata": metadata,
            }], "has_more": False, "url": "/v1/invoices/lines"},
            "created": now(), "livemode": False,
        }
        self.invoices[invoice["id"]] = invoice
        subscription["latest_invoice"] = invoice["id"]
        return invoice

    def _subscription(self, subscription_id: str, param: str | None = None,
                      status: int = 400) -> dict[str, Any]:
        return find(self.subscriptions, "subscription", subscription_id, param, status)

    def _get_subscription(self, params: dict[str, Any], context: dict[str, Any],
                          subscription_id: str) -> dict[str, Any]:
        del params, context
        return self._subscription(subscription_id, "id", 404)

    def _list_subscriptions(self, params: dict[str, Any], context: dict[str, Any]
                            ) -> dict[str, Any]:
        """Newest first; like Stripe, canceled subscriptions only with `status=canceled` or
        `status=all`."""
        del context
        customer = params.get("customer") or None
        status = params.get("status") or None
        subscriptions = [
            sub for sub in reversed(self.subscriptions.values())
            if (customer is None or sub["customer"] == customer)
            and (status == "all" or sub["status"] == status
                 or (status is None and sub["status"] != "canceled"))]
        return page(params, subscriptions, self.subscriptions, "subscription",
                    "/v1/subscriptions")

    def _update_subscription(self, params: dict[str, Any], context: dict[str, Any],
                             subscription_id: str) -> dict[str, Any]:
        subscription = self._subscription(subscription_id, "id", 404)
        if subscription["status"] == "canceled" and set(params) - {"metadata"}:
            raise invalid("A canceled subscription can only update its cancellation_details "
                          "and metadata.")
        previous: dict[str, Any] = {}
        if "metadata" in params:
            metadata = merge_metadata(subscription["metadata"], params["metadata"])
            if metadata != subscription["metadata"]:
                previous["metadata"] = subscription["metadata"]
                subscription["metadata"] = metadata
        if "cancel_at_period_end" in params:
            cancel = as_bool(params, "cancel_at_period_end")
            if cancel != subscription["cancel_at_period_end"]:
                for name in ("cancel_at_period_end", "cancel_at", "canceled_at"):
                    previous[name] = subscription[name]
                # Stripe records when cancellation was asked for in `canceled_at`.
                subscription.update(
                    cancel_at_period_end=cancel,
                    cancel_at=subscription["current_period_end"] if cancel else None,
                    canceled_at=now() if cancel else None)
        self._emit("customer.subscription.updated", subscription, context, previous)
        return subscription

    def _cancel_subscription(self, params: dict[str, Any], context: dict[str, Any],
                             subscription_id: str) -> dict[str, Any]:
        del params
        subscription = self._subscription(subscription_id, "id", 404)
        if subscription["status"] == "canceled":
            raise invalid("A canceled subscription can only update its cancellation_details "
                          "and metadata.")
        self._end(subscription, context)
        return subscription

    def _end(self, subscription: dict[str, Any], context: dict[str, Any] | None
             ) -> dict[str, Any]:
        stamp = now()
        subscription.update(status="canceled", ended_at=stamp,
                            canceled_at=subscription["canceled_at"] or stamp)
        return self._emit("customer.subscription.deleted", subscription, context)

    def _get_invoice(self, params: dict[str, Any], context: dict[str, Any],
                     invoice_id: str) -> dict[str, Any]:
        del params, context
        return find(self.invoices, "invoice", invoice_id, "invoice", 404)

    def renew(self, subscription_id: str, *, paid: bool = True) -> list[dict[str, Any]]:
        """The next billing period starts: a `subscription_cycle` invoice for it.
        Paid: `[customer.subscription.updated, invoice.paid]`; not paid (the invoice stays
        open, the subscription goes `past_due`):
        `[invoice.payment_failed, customer.subscription.updated]`."""
        with self._lock:
            subscription = self._subscription(subscription_id)
            if subscription["status"] == "canceled":
                raise ValueError(f"subscription {subscription_id} is canceled")
            old_start = subscription["current_period_start"]
            old_end = subscription["current_period_end"]
            previous: dict[str, Any] = {"current_period_start": old_start,
                                        "current_period_end": old_end}
            new_end = old_end + PERIOD_S
            subscription.update(current_period_start=old_end, current_period_end=new_end)
            for item in subscription["items"]["data"]:
                item.update(current_period_start=old_end, current_period_end=new_end)
            # Stripe's cycle invoice covers the period just ended; its line the new one.
            invoice = self._new_invoice(subscription, "subscription_cycle", paid=paid,
                                        period=(old_start, old_end))
            if paid:
                return [self._emit("customer.subscription.updated", subscription, None,
                                   previous),
                        self._emit("invoice.paid", invoice, None)]
            if subscription["status"] != "past_due":
                previous["status"] = subscription["status"]
                subscription["status"] = "past_due"
            return [self._emit("invoice.payment_failed", invoice, None),
                    self._emit("customer.subscription.updated", subscription, None,
                               previous)]

    def pay_invoice(self, invoice_id: str) -> list[dict[str, Any]]:
        """An open invoice is paid (e.g. a retry succeeded); its subscription is active
        again: `[invoice.paid, customer.subscription.updated]`."""
        with self._lock:
            invoice = self.invoices[invoice_id]
            if invoice["status"] != "open":
                raise ValueError(f"invoice {invoice_id} is {invoice['status']}")
            invoice.update(status="paid", paid=True, amount_paid=invoice["amount_due"],
                           amount_remaining=0)
            subscription = self._subscription(invoice["subscription"])
            previous: dict[str, Any] = {}
            if subscription["status"] in ("past_due", "unpaid", "incomplete"):
                previous["status"] = subscription["status"]
                subscription["status"] = "active"
            return [self._emit("invoice.paid", invoice, None),
                    self._emit("customer.subscription.updated", subscription, None,
                               previous)]

    def end_period(self, subscription_id: str) -> list[dict[str, Any]]:
        """The current period ends: `[customer.subscription.deleted]` when the subscription
        was set to cancel at period end, else as `renew(paid=True)`."""
        with self._lock:
            subscription = self._subscription(subscription_id)
            if subscription["status"] == "canceled":
                raise ValueError(f"subscription {subscription_id} is canceled")
            if subscription["cancel_at_period_end"]:
                return [self._end(subscription, None)]
            return self.renew(subscription_id, paid=True)

    # --- events and test controls ------------------------------------------------------------

    def _emit(self, type: str, obj: dict[str, Any], context: dict[str, Any] | None,
              previous_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        # A snapshot: later changes to the object do not show in an event already built.
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        event = {
            "id": new_id("evt"), "object": "event", "type": type, "created": now(),
            "livemode": False, "api_version": stripe.api_version,
            "data": data, "pending_webhooks": 1,
            "request": dict(context) if context else {"id": None, "idempotency_key": None},
        }
        self.events.append(event)
        return event

    def event(self, type: str, obj: dict[str, Any],
              previous_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new event about `obj` (recorded in `events`), as Stripe would send it;
        `data.previous_attributes` when given (the `*.updated` events)."""
        with self._lock:
            return self._emit(type, obj, None, previous_attributes)

    def set_default_payment_method(self, customer_id: str, payment_method: str) -> None:
        with self._lock:
            customer = self._customer(customer_id)
            customer["invoice_settings"]["default_payment_method"] = payment_method

    def complete_session(self, session_id: str, *, paid: bool = True) -> dict[str, Any]:
        """The customer finished Checkout; the `checkout.session.completed` event."""
        with self._lock:
            session = self.sessions[session_id]
            if session["status"] != "open":
                raise ValueError(f"session {session_id} is {session['status']}")
            params = self._session_params.get(session_id, {})
            session["status"] = "complete"
            if session["mode"] == "setup":
                session["payment_status"] = "no_payment_required"
            elif not paid:
                session["payment_status"] = "unpaid"
            elif session["mode"] == "subscription":
                subscription = self._start_subscription(session, params)
                session["payment_status"] = "paid"
                session["subscription"] = subscription["id"]
                session["invoice"] = subscription["latest_invoice"]
            else:
                pi_data = params.get("payment_intent_data")
                pi_data = pi_data if isinstance(pi_data, dict) else {}
                intent = {
                    "id": new_id("pi"), "object": "payment_intent",
                    "amount": session["amount_total"] or 0, "amount_received": 0,
                    "currency": session["currency"], "customer": session["customer"],
                    "status": "processing",
                    "metadata": as_metadata(pi_data),
                    "description": pi_data.get("description") or None,
                    "payment_method": PM_OK, "last_payment_error": None,
                    "latest_charge": None, "created": now(), "livemode": False,
                }
                self.payment_intents[intent["id"]] = intent
                self._succeed(intent, None)
                session["payment_status"] = "paid"
                session["payment_intent"] = intent["id"]
            return self._emit("checkout.session.completed", session, None)

    def refund(self, payment_intent_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund as `POST /v1/refunds` would (e.g. from the dashboard); the `charge.refunded`
        event. Raises `StripeError` where the API would answer with an error."""
        params: dict[str, Any] = {"payment_intent": payment_intent_id}
        if amount is not None:
            params["amount"] = str(amount)
        with self._lock:
            self._create_refund(params, {"id": None, "idempotency_key": None})
            return self.events[-1]

    def sign(self, payload: bytes, *, timestamp: int | None = None,
             secret: str | None = None) -> str:
        """The `Stripe-Signature` header: HMAC-SHA256 over "<t>.<payload>" with the secret."""
        stamp = now() if timestamp is None else timestamp
        key = (self.webhook_secret if secret is None else secret).encode()
        digest = hmac.new(key, f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
        return f"t={stamp},v1={digest}"

    def deliver(self, event: dict[str, Any], *, timestamp: int | None = None,
                secret: str | None = None, signature: str | None = None) -> httpx.Response:
        """POST the event to `webhook_url`, signed correctly unless told otherwise."""
        if self.webhook_url is None:
            raise RuntimeError("set webhook_url before delivering events")
        payload = json.dumps(event, indent=2).encode()  # Stripe sends pretty-printed JSON
        header = signature if signature is not None else self.sign(
            payload, timestamp=timestamp, secret=secret)
        return httpx.post(self.webhook_url, content=payload, timeout=DELIVER_TIMEOUT_S,
                          headers={"Content-Type": "application/json; charset=utf-8",
                                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                                   "Stripe-Signature": header})


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-answer is not an error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)
