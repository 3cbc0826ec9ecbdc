"""User authentication against a real server: RS256 tokens verified with a JWKS the test
serves over HTTP; every forged, expired or misaddressed token is refused with 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.http_support import ROOT, JwksServer, Server, rsa_signing_key

AUDIENCE = "z-billing"
HS256_SECRET = "shared-secret-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
def keys():
    return rsa_signing_key("key-1")


@pytest.fixture(scope="module")
def issuer(keys):
    server = JwksServer([keys[1]])
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer, workers):
    running = Server(tmp_path_factory.mktemp("auth") / "data", dev=False,
                     env={"AUTH_BASE_URL": issuer.url, "AUTH_HS256_SECRET": HS256_SECRET},
                     workers=workers)
    yield running
    running.stop()


def claims(issuer, **overrides) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": str(uuid.uuid4()), "aud": AUDIENCE, "iss": issuer.url, "iat": now,
            "nbf": now, "exp": now + 600}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def rs256(keys, payload, kid="key-1") -> str:
    return jwt.encode(payload, keys[0], algorithm="RS256", headers={"kid": kid})


def me(server, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/accounts/me",
                     headers={"Authorization": f"Bearer {token}"})


def test_a_valid_rs256_token_from_the_jwks_is_accepted(server, issuer, keys):
    payload = claims(issuer)
    answer = me(server, rs256(keys, payload))
    assert answer.status_code == 200, answer.text
    assert answer.json()["user_id"] == payload["sub"]


def test_hs256_works_only_with_the_configured_secret(server, issuer):
    payload = claims(issuer)
    assert me(server, jwt.encode(payload, HS256_SECRET, algorithm="HS256")).status_code == 200
    assert me(server, jwt.encode(payload, "another-secret-0123456789abcdef0123",
                                 algorithm="HS256")).status_code == 401


def _unsigned(payload: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def _tampered(keys, issuer) -> str:
    header, payload, signature = rs256(keys, claims(issuer)).split(".")
    changed = json.loads(base64.urlsafe_b64decode(payload + "=="))
    changed["sub"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_with_public_key(keys, issuer) -> str:
    public_pem = keys[0].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": "key-1", "typ": "JWT"}
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims(issuer))
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda k, i: rs256(k, claims(i, exp=int(time.time()) - 3600)),
                     id="expired"),
        pytest.param(lambda k, i: rs256(k, claims(i, nbf=int(time.time()) + 3600)),
                     id="not-yet-valid"),
        pytest.param(lambda k, i: rs256(k, claims(i, aud="another-service")),
                     id="wrong-audience"),
        pytest.param(lambda k, i: rs256(k, claims(i, iss="https://evil.example")),
                     id="wrong-issuer"),
        pytest.param(lambda k, i: rs256(k, claims(i), kid="unknown-kid"), id="unknown-kid"),
        pytest.param(lambda k, i: _unsigned(claims(i)), id="alg-none"),
        pytest.param(_hs256_with_public_key, id="hs256-signed-with-rsa-public-key"),
        pytest.param(_tampered, id="tampered-payload"),
        pytest.param(lambda k, i: rs256(k, claims(i, sub="not-a-uuid")), id="sub-not-uuid"),
        pytest.param(lambda k, i: rs256(k, claims(i, exp=None)), id="no-expiry"),
        pytest.param(lambda k, i: "test-token:" + str(uuid.uuid4()), id="dev-token-off-dev"),
    ],
)
def test_bad_tokens_are_refused(server, issuer, keys, make):
    answer = me(server, make(keys, issuer))
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthorized"


def test_the_server_refuses_to_start_without_a_service_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from api.cli import main; main()", "serve",
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "no service key" in result.stderr
