"""A local stand-in for Lago's API on 127.0.0.1, behaving as the OpenAPI document describes
where the exporter depends on it, and able to fail on demand.

- `POST /api/v1/customers`: create or update by external id.
- `POST /api/v1/subscriptions` (create by external id, for a known customer) and
  `DELETE /api/v1/subscriptions/{external_id}` (terminate; 404 when unknown).
- `POST /api/v1/events/batch`: Bearer auth (401), at most 100 events (422), all-or-nothing
  validation with per-index `error_details` (422), a transaction id seen before refused as
  `value_already_exist` (Lago deduplicates on it), 200 with the created events otherwise.
- Every request body is validated against `EventBatchInput` of the shared OpenAPI document
  when that file exists; violations are recorded in `schema_errors` and answered 400.
- Modes: "ok", "error" (500), "rate_limited" (429 with Retry-After), "slow" (delays), and
  `stop()`/`start()` to refuse connections; `reject` holds transaction ids answered 422.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import SHARED_DIR

LAGO_OPENAPI = SHARED_DIR / "reference" / "lago" / "openapi.yaml"
BATCH_EVENTS_MAX = 100
SLOW_RESPONSE_S = 0.2


def validators() -> dict[str, Any]:
    """JSON Schema validators for the request bodies we send, by path; empty without the
    shared OpenAPI document (then only the fake's own checks run)."""
    if not LAGO_OPENAPI.exists():
        return {}
    document = yaml.safe_load(Path(LAGO_OPENAPI).read_text())
    uri = "urn:lago-openapi"
    registry = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return {
        path: Draft202012Validator({"$ref": f"{uri}#/components/schemas/{schema}"},
                                   registry=registry)
        for path, schema in (("/api/v1/events/batch", "EventBatchInput"),
                             ("/api/v1/customers", "CustomerCreateInput"),
                             ("/api/v1/subscriptions", "SubscriptionCreateInput"))
    }


class FakeLago:
    def __init__(
        self, api_key: str = "lago-test-key", port: int = 0, *, validate: bool = True
    ) -> None:
        self.api_key = api_key
        self.mode = "ok"
        self.reject: set[str] = set()
        self.events: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []
        self.events_before_customer = 0
        self.duplicates_refused = 0
        self.batch_sizes: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.schema_errors: list[str] = []
        self.requests = 0
        self._validators = validators() if validate else {}
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def validates_schema(self) -> bool:
        return bool(self._validators)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def do_POST(self) -> None:
                self.answer("POST")

            def do_DELETE(self) -> None:
                self.answer("DELETE")

            def answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status, payload, headers = fake.handle(
                    method, self.path, self.headers.get("Authorization", ""), body
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        server = _QuietServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: further connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, method: str, path: str, authorization: str, body: bytes
               ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.requests += 1
            status, payload, headers = self._answer(method, path, authorization, body)
            self.statuses[status] += 1
        if self.mode == "slow":
            time.sleep(SLOW_RESPONSE_S)
        return status, payload, headers

    def _answer(self, method: str, path: str, authorization: str, body: bytes
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
        terminating = method == "DELETE" and path.startswith("/api/v1/subscriptions/")
        if not terminating and (method, path) not in (
            ("POST", "/api/v1/events/batch"), ("POST", "/api/v1/customers"),
            ("POST", "/api/v1/subscriptions"),
        ):
            return 404, _NOT_FOUND, {}
        if authorization != f"Bearer {self.api_key}":
            return 401, {"status": 401, "error": "Unauthorized"}, {}
        if self.mode == "error":
            return 500, {"status": 500, "error": "Internal Server Error"}, {}
        if self.mode == "rate_limited":
            return 429, {"status": 429, "error": "Too Many Requests"}, {"Retry-After": "0"}
        if terminating:
            external_id = path.rsplit("/", 1)[1]
            if self.subscriptions.pop(external_id, None) is None:
                return 404, {**_NOT_FOUND, "code": "subscription_not_found"}, {}
            self.terminated.append(external_id)
            return 200, {"subscription": {"external_id": external_id,
                                          "status": "terminated"}}, {}
        try:
            document = json.loads(body)
        except ValueError:
            return 400, {"status": 400, "error": "BadRequest: invalid JSON"}, {}
        validator = self._validators.get(path)
        if validator is not None:
            problems = [error.message for error in validator.iter_errors(document)]
            if problems:
                self.schema_errors.extend(problems)
                return 400, {"status": 400, "error": "BadRequest", "details": problems}, {}
        if path == "/api/v1/customers":
            customer = document["customer"]
            self.customers[customer["external_id"]] = customer
            return 200, {"customer": {"lago_id": None, **customer}}, {}
        if path == "/api/v1/subscriptions":
            subscription = document["subscription"]
            if subscription.get("external_customer_id") not in self.customers:
                return 422, _validation({"customer": ["customer_not_found"]}), {}
            self.subscriptions[subscription["external_id"]] = subscription
            return 200, {"subscription": {"lago_id": None, "status": "active",
                                          **subscription}}, {}
        events = document.get("events", [])
        if len(events) > BATCH_EVENTS_MAX:
            self.schema_errors.append(f"batch of {len(events)} events")
            return 422, _validation({"events": ["too_many_events"]}), {}
        details: dict[str, Any] = {}
        for index, event in enumerate(events):
            transaction_id = event.get("transaction_id")
            if transaction_id in self.events:
                details[str(index)] = {"transaction_id": ["value_already_exist"]}
            elif transaction_id in self.reject:
                details[str(index)] = {"code": ["metric_not_found"]}
        if details:
            self.duplicates_refused += sum(
                1 for detail in details.values() if "transaction_id" in detail
            )
            return 422, _validation(details), {}
        self.batch_sizes.append(len(events))
        for event in events:
            self.events[event["transaction_id"]] = event
            if event.get("external_subscription_id") not in self.customers:
                self.events_before_customer += 1
        return 200, {"events": [{"lago_id": None, **event} for event in events]}, {}


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-answer (our engine shutting down) is not an error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)


_NOT_FOUND = {"status": 404, "error": "Not Found", "code": "not_found"}


def _validation(details: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }


def main() -> None:
    """`python -m tests.fake_lago MODE`: serve on a free port, print its URL, run until
    SIGTERM (for benchmarks, which keep the fake off the engine's process; the schema check
    is off there so that the sink, not the exporter, is not what gets measured)."""
    lago = FakeLago(validate=False)
    lago.mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    print(lago.url, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    lago.stop()


if __name__ == "__main__":
    main()
