"""`/openapi.json`: valid OpenAPI 3.1, complete, and true (schemathesis against a real server)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe
from tests.http_support import ADMIN_KEY, SERVICE_KEY, Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance)


@pytest.fixture(scope="module")
def server(tmp_path_factory, workers):
    """Every capability on: Stripe (the fake) and Lago webhooks, so no route is a stand-in."""
    with FakeStripe() as stripe_fake:
        env = {"STRIPE_API_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "STRIPE_API_BASE": stripe_fake.url, "LAGO_WEBHOOK_SECRET": "lago-hmac-key"}
        running = Server(tmp_path_factory.mktemp("openapi"), env=env, workers=workers)
        yield running
        running.stop()


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
    }
    documented = {(method, path) for path, item in document["paths"].items()
                  for method in item}
    assert documented == expected
    for method, path in expected:  # and the server answers each one (a 404 only for the id)
        concrete = path.replace("{reservation_id}", "r-1")
        answer = httpx.request(method.upper(), f"{server.url}{concrete}",
                               headers={"X-API-Key": SERVICE_KEY})
        assert answer.status_code != 405, (method, path)
        if answer.status_code == 404:
            assert answer.json()["error"]["details"] == {"reservation_id": "r-1"}, path


def test_decimal_quantities_are_documented_as_string_or_number(document):
    compute = document["components"]["schemas"]["Compute"]["properties"]["cpu_hours"]
    assert compute["type"] == ["string", "number"]
    assert "format" not in compute


def test_the_usage_route_documents_msgpack_and_the_error_body(document):
    operation = document["paths"]["/v1/usage"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json",
                                                        "application/msgpack"}
    assert operation["responses"]["402"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorReply"}


def served_requests(server) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("zbilling_http_requests_total{")))


def test_no_5xx_and_every_answer_matches_the_document(server):
    """schemathesis generates valid and invalid requests for every operation (a bounded number
    each). Driven through its Python API: its pytest plugin does not support pytest 9 yet."""
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    before = served_requests(server)
    headers = {"X-API-Key": SERVICE_KEY, "X-Admin-Key": ADMIN_KEY}
    failures: dict[str, str] = {}
    tested = 0
    for result in loaded.get_all_operations():
        operation = result.ok()
        tested += 1

        @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE)))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case):
            user = {"Authorization": f"Bearer test-token:{uuid.uuid4()}"}
            case.call_and_validate(base_url=server.url, headers={**headers, **user},
                                   checks=CHECKS)

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as failure:  # report every operation's failure
            failures[operation.label] = str(failure)[:2000]
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
    assert tested == 28  # every operation but /openapi.json itself
    assert served_requests(server) >= before + tested * EXAMPLES_PER_OPERATION // 2
