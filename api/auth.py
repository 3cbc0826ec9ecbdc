"""Who is calling: end users (ZID JWTs), services (API keys with scopes), operators (admin)."""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
import trio

from api.errors import ApiError
from api.settings import KeyScope, ServiceKey, Settings
from engine.ids import UserId

JWKS_REFRESH_INTERVAL_S = 60.0
JWKS_FETCH_TIMEOUT_S = 5.0
JWT_LEEWAY_S = 30
TOKEN_LENGTH_MAX = 8192
DEV_TOKEN_PREFIX = "test-token:"
# Asymmetric algorithms taken from the JWKS, and the key type each needs: a token cannot
# pick HS256 to have the public key used as an HMAC secret.
JWKS_ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}


def unauthorized(message: str) -> ApiError:
    return ApiError("unauthorized", message)


class Jwks:
    """The issuer's signing keys, fetched with httpx and cached; an unknown kid triggers a
    refresh at most once per JWKS_REFRESH_INTERVAL_S."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -JWKS_REFRESH_INTERVAL_S
        self._lock = trio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            async with self._lock:
                if kid not in self._keys and (
                    time.monotonic() - self._fetched_at >= JWKS_REFRESH_INTERVAL_S
                ):
                    await self._refresh()
        found = self._keys.get(kid)
        if found is None:
            raise unauthorized("token signed with an unknown key")
        return found

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_S) as client:
                response = await client.get(self._url)
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            raise ApiError("external_service_error",
                           f"cannot load the signing keys: {type(error).__name__}") from error
        self._keys = {key.key_id: key for key in keys if key.key_id}


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keys = settings.service_keys
        self._jwks = (
            Jwks(f"{settings.auth_base_url}/.well-known/jwks.json")
            if settings.auth_base_url else None
        )
        self._issuer = settings.auth_issuer or settings.auth_base_url

    def service(self, headers: Mapping[str, str]) -> ServiceKey:
        presented = headers.get("X-API-Key")
        if not presented:
            raise unauthorized("missing X-API-Key")
        found = None
        for key in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(presented.encode(), key.key.encode()):
                found = key
        if found is None:
            raise unauthorized("invalid API key")
        return found

    def admin(self, headers: Mapping[str, str]) -> None:
        admin_key = self._settings.admin_key
        presented = headers.get("X-Admin-Key")
        if presented:
            if admin_key and hmac.compare_digest(presented.encode(), admin_key.encode()):
                return
            raise unauthorized("invalid admin key")
        if KeyScope.ADMIN not in self.service(headers).scopes:
            raise ApiError("forbidden", "this key has no admin scope")

    async def user(self, headers: Mapping[str, str]) -> UserId:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("missing bearer token")
        return await self.user_of_token(token)

    async def user_of_token(self, token: str) -> UserId:
        """The user a token names (a bearer header's, or `?token=` of the WebSocket)."""
        if not token or len(token) > TOKEN_LENGTH_MAX:
            raise unauthorized("missing bearer token")
        if token.startswith(DEV_TOKEN_PREFIX):
            if not self._settings.dev:
                raise unauthorized("test tokens work only in --dev mode")
            return _user_id(token[len(DEV_TOKEN_PREFIX):])
        claims = await self._verify(token)
        # ZID's tokens name the user in `id`; others in `sub` (the original reads both).
        return _user_id(claims["id"] if "id" in claims else claims.get("sub"))

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("malformed token") from None
        algorithm = header.get("alg")
        options: dict[str, Any] = {"require": ["exp", "aud", "iss"]}
        try:
            if algorithm == "HS256" and self._settings.auth_hs256_secret:
                key: Any = self._settings.auth_hs256_secret
            elif algorithm in JWKS_ALGORITHMS and self._jwks is not None:
                found = await self._jwks.key(str(header.get("kid", "")))
                if found.key_type != JWKS_ALGORITHMS[algorithm]:
                    raise unauthorized("token algorithm does not match its key")
                key = found.key
            else:
                raise unauthorized(f"tokens signed with {algorithm!r} are not accepted")
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._settings.auth_audience,
                issuer=self._issuer,
                leeway=JWT_LEEWAY_S,
                options=options,
            )
        except jwt.PyJWTError as error:
            raise unauthorized(f"invalid token: {type(error).__name__}") from None


def _user_id(subject: object) -> UserId:
    try:
        return UserId(uuid.UUID(str(subject)))
    except ValueError:
        raise unauthorized("token subject is not a user id") from None


