"""`/openapi.json`: valid OpenAPI 3.1, complete, and true (schemathesis against a real server)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from openapi_spec_validator import validate

from api.schemas import DECIMAL_RULES, UsdAmount, printable_pattern
from engine.errors import InvalidInput
from engine.payments import purchase_credits
from engine.usage import Quantity, QuantityError, _check_quantity
from tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, ROOT, SERVICE_KEY, STOP_TIMEOUT_S, Server

pytestmark = pytest.mark.slow

LAGO_HMAC_KEY = "lago-hmac-key"
# A plan sold through Stripe, so that subscription checkout is a real route too.
PLANS = """
[plans.standard]
name = "Standard"
monthly_price_usd_cents = 2000
monthly_credits = 2500
stripe_price_id = "price_standard"
"""
# schemathesis --max-examples: cases per operation in the fuzzing phase (and the bound of
# each stateful scenario); the coverage phase adds its own boundary cases, as many as the
# document has rules. A fixed seed makes a failure reproducible (`st replay <id>`).
EXAMPLES_PER_OPERATION = 10
SEED = 1
OPERATIONS = 51  # every operation but /openapi.json itself
SCHEMATHESIS_TIMEOUT_S = 600
# Which state-dependent refusals the positive-data check accepts (402 on the debit routes).
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


class DrainedServer(Server):
    """A `Server` whose output is read as it comes: the INFO lines of the Stripe traffic
    alone would fill the pipe and block the server on its next log line."""

    def __init__(self, data_dir: Path, **options: object) -> None:
        super().__init__(data_dir, **options)  # type: ignore[arg-type]
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)
        return code, "".join(self.output)


@pytest.fixture(scope="module")
def server(tmp_path_factory, workers):
    """Every capability on: Stripe (the fake) and Lago webhooks, so no route is a stand-in."""
    directory = tmp_path_factory.mktemp("openapi")
    config = directory / "zbilling.toml"
    config.write_text(PLANS)
    with FakeStripe() as stripe_fake:
        env = {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "STRIPE_API_BASE": stripe_fake.url, "LAGO_WEBHOOK_SECRET": LAGO_HMAC_KEY}
        running = DrainedServer(directory / "data", env=env, args=("--config", str(config)),
                                workers=workers)
        yield running
        code, output = running.stop()
        assert code == 0, output[-5000:]


@pytest.fixture(scope="module")
def document(server):
    answer = httpx.get(f"{server.url}/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_the_server_answers_is_documented(server, document):
    expected = {
        ("get", "/health"), ("get", "/ready"), ("get", "/metrics"), ("get", "/openapi.json"),
        ("post", "/v1/accounts"), ("get", "/v1/accounts/me"), ("delete", "/v1/accounts/me"),
        ("get", "/v1/credits/balance"), ("get", "/v1/credits/transactions"),
        ("get", "/v1/credits/auto-refill"), ("post", "/v1/credits/auto-refill"),
        ("post", "/v1/credits/add"), ("post", "/v1/usage"), ("post", "/v1/usage/batch"),
        ("post", "/v1/usage/check"), ("post", "/v1/usage/quote"),
        ("post", "/v1/reservations"), ("get", "/v1/reservations/{reservation_id}"),
        ("post", "/v1/reservations/{reservation_id}/commit"),
        ("delete", "/v1/reservations/{reservation_id}"),
        ("post", "/v1/credits/purchase"), ("get", "/v1/payments"),
        ("get", "/v1/subscriptions/me"), ("post", "/v1/subscriptions/checkout"),
        ("post", "/v1/subscriptions/cancel"), ("post", "/v1/subscriptions/portal"),
        ("post", "/webhooks/stripe"), ("post", "/webhooks/lago"),
        ("post", "/v1/admin/subscriptions"),
        ("get", "/v1/credits/lots"), ("get", "/v1/admin/accounts/{user_id}"),
        ("post", "/v1/admin/lots/void"), ("post", "/v1/admin/credits/debit"),
        ("post", "/v1/admin/usage/reverse"),
        ("post", "/v1/credits/signup-grant"), ("post", "/v1/credits/daily-grant"),
        ("post", "/v1/credits/referral-grant"), ("get", "/ws/balance"),
        ("get", "/checkout/success"), ("get", "/checkout/cancelled"),
        ("get", "/v1/credits/spend-controls"), ("post", "/v1/credits/spend-controls"),
        ("get", "/v1/admin/accounts/{user_id}/spend-controls"),
        ("post", "/v1/admin/accounts/{user_id}/spend-controls"),
        ("post", "/v1/admin/webhooks"), ("get", "/v1/admin/webhooks"),
        ("post", "/v1/admin/webhooks/{endpoint_id}/rotate"),
        ("delete", "/v1/admin/webhooks/{endpoint_id}"),
        ("get", "/v1/admin/webhooks/{endpoint_id}/dead-letters"),
        ("post", "/v1/admin/webhooks/{endpoint_id}/resend"),
        ("get", "/v1/usage/summary"), ("get", "/v1/admin/accounts/{user_id}/usage/summary"),
    }
    documented = {(method, path) for path, item in document["paths"].items()
                  for method in item}
    assert documented == expected
    for method, path in expected:  # and the server answers each one (a 404 only for the id)
        concrete = path.replace("{reservation_id}", "r-1").replace(
            "{user_id}", "00000000-0000-0000-0000-000000000001")
        answer = httpx.request(method.upper(), f"{server.url}{concrete}",
                               headers={"X-API-Key": SERVICE_KEY})
        assert answer.status_code != 405, (method, path)
        if answer.status_code == 404:
            assert answer.json()["error"]["details"] == {"reservation_id": "r-1"}, path


def test_decimal_quantities_are_documented_as_string_or_number(document):
    compute = document["components"]["schemas"]["Compute"]["properties"]["cpu_hours"]
    assert compute["type"] == ["string", "number"]
    assert "format" not in compute
    assert (compute["minimum"], compute["maximum"], compute["multipleOf"]) == (0, 10**9, 1e-9)


def test_the_usage_route_documents_msgpack_and_the_error_body(document):
    operation = document["paths"]["/v1/usage"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json",
                                                        "application/msgpack"}
    assert operation["responses"]["402"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorReply"}


def test_every_405_says_which_methods_are_allowed(server):
    answer = httpx.put(f"{server.url}/v1/accounts/me",
                       headers={"Authorization": f"Bearer test-token:{uuid.uuid4()}"})
    assert answer.status_code == 405
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "DELETE", "OPTIONS"}


def test_the_key_pattern_is_exactly_str_isprintable():
    printable = re.compile(printable_pattern())
    for code in range(sys.maxunicode + 1):
        character = chr(code)
        assert bool(printable.fullmatch(character)) == character.isprintable(), hex(code)
    assert re.compile(printable_pattern("/")).fullmatch("a/b") is None


def engine_takes_quantity(text: str) -> bool:
    try:
        _check_quantity("q", Decimal(text))
    except (InvalidOperation, QuantityError):
        return False
    return True


def engine_takes_usd(text: str) -> bool:
    try:
        purchase_credits(Decimal(text))
    except (InvalidOperation, InvalidInput):
        return False
    return True


@given(st.decimals(allow_nan=False, allow_infinity=False)
       | st.integers(0, 9).flatmap(lambda places: st.decimals(0, 10**9, places=places))
       | st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{1,20})?([eE][+-]?0?[0-9]{1,2})?\Z"))
@example(Decimal("0E+10"))  # zero with an exponent past the bound's: refused by both
def test_a_quantity_spelling_is_one_the_engine_takes(value):
    """The pattern admits only strings the engine takes, and every value the engine takes
    as `str(Decimal)` and plain notation write it (a sign excepted: "-0")."""
    spellings = DECIMAL_RULES[Quantity].spellings
    if spellings.fullmatch(str(value)):
        assert engine_takes_quantity(str(value)), value
    decimal = Decimal(value)
    if engine_takes_quantity(str(decimal)) and not decimal.is_signed():
        assert spellings.fullmatch(str(decimal)), decimal
        assert spellings.fullmatch(format(decimal, "f")), decimal


@given(st.from_regex(r"\A[0-9]{1,5}(\.[0-9]{1,3})?\Z"))
def test_a_usd_spelling_is_exactly_what_the_engine_takes(text):
    spellings = DECIMAL_RULES[UsdAmount].spellings
    leading_zero = len(text.split(".")[0]) > 1 and text.startswith("0")
    assert bool(spellings.fullmatch(text)) == (engine_takes_usd(text) and not leading_zero)


def served_requests(server) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("zbilling_http_requests_total{")))


def test_schemathesis_with_every_check_phase_and_mode_finds_nothing(server, tmp_path):
    """schemathesis (its CLI, the documented interface: its pytest plugin does not support
    pytest 9 yet) runs every check in every phase (examples, coverage, fuzzing, stateful)
    with valid and invalid data over every operation. tests/schemathesis_hooks.py signs the
    webhook deliveries with the server's secrets and decodes msgpack answers."""
    report = tmp_path / "report.json"
    before = served_requests(server)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG),
        "run", f"{server.url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--mode", "all",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
        "--workers", "1", "--generation-database", "none", "--no-color",
        "--header", f"X-API-Key: {SERVICE_KEY}", "--header", f"X-Admin-Key: {ADMIN_KEY}",
        "--header", f"Authorization: Bearer test-token:{uuid.uuid4()}",
        "--report", "json", "--report-json-path", str(report),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "LAGO_WEBHOOK_SECRET": LAGO_HMAC_KEY}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=SCHEMATHESIS_TIMEOUT_S, check=False)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    result = json.loads(report.read_text())
    assert (result["operations"]["tested"], result["test_cases"]["errored"]) == (OPERATIONS, 0)
    # The examples phase has nothing to run: the document carries no examples.
    assert {name: phase["status"] for name, phase in result["phases"].items()} == {
        "examples": "skip", "coverage": "success", "fuzzing": "success", "stateful": "success"}
    assert served_requests(server) >= before + OPERATIONS * EXAMPLES_PER_OPERATION
