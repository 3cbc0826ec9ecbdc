"""The HTTP API: the quart-trio app (`app`, `http`, the `*_routes` groups, `schemas`,
`replies`, `openapi`), authentication, settings, the server process and the CLI.

These modules may import `actors`, `integrations` and `engine` (and the CLI `storage`, for
offline verify and backup). The client (`api.client`) imports no server code at all, so a
service can use it without the server's dependencies.
"""
