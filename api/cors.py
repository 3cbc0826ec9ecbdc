"""CORS for browser callers (the end-user app): `CORS_ORIGINS`, a comma list of origins, or
`*` for any (the Origin is then mirrored, with credentials, as the original does). Unset:
no CORS headers at all, so browsers keep other sites out (the original defaulted to `*`).
Preflights (OPTIONS) are answered by Quart's automatic OPTIONS with these headers added."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = ("Authorization, Content-Type, Accept, X-API-Key, X-Service-Name, "
                   "X-Admin-Key, Idempotency-Key")
PREFLIGHT_MAX_AGE_S = 600


def install_cors(app: QuartTrio, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    any_origin = "*" in origins
    allowed = frozenset(origins)

    @app.after_request
    async def cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if origin is None or not (any_origin or origin.rstrip("/") in allowed):
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response
