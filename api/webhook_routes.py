"""The outbound webhook routes (admin): register endpoints, rotate their signing secrets,
remove them, and see and re-send the events an endpoint did not take in time."""

from __future__ import annotations

from actors.billing import Billing
from api import schemas
from api.http import Register
from api.replies import endpoint_reply, parked_webhooks_reply
from api.routes import Caller, Route

ERRORS_ADMIN_READ = (400, 401, 403, 404, 503)
ERRORS_ADMIN_WRITE = (400, 401, 403, 404, 409, 413, 415, 503)


def register_webhook_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("POST", "/v1/admin/webhooks",
                    "Register a webhook endpoint; the reply shows its signing secret once",
                    Caller.ADMIN, body=schemas.WebhookEndpointBody,
                    reply=schemas.WebhookEndpointReply, status=201,
                    errors=ERRORS_ADMIN_WRITE))
    async def create_webhook(body: schemas.WebhookEndpointBody) -> schemas.WebhookEndpointReply:
        created = await billing.webhooks.create(body.url, list(body.event_types))
        return endpoint_reply(created, with_secret=True)

    @endpoint(Route("GET", "/v1/admin/webhooks", "The webhook endpoints (without secrets)",
                    Caller.ADMIN, reply=schemas.WebhookEndpointsReply,
                    errors=ERRORS_ADMIN_READ))
    async def list_webhooks() -> schemas.WebhookEndpointsReply:
        return schemas.WebhookEndpointsReply(
            [endpoint_reply(found) for found in await billing.webhooks.endpoints()])

    @endpoint(Route("POST", "/v1/admin/webhooks/{endpoint_id}/rotate",
                    "A new signing secret (shown once); the old one signs too for 24 h",
                    Caller.ADMIN, body=schemas.EmptyBody, reply=schemas.WebhookEndpointReply,
                    errors=ERRORS_ADMIN_WRITE))
    async def rotate_webhook(_: schemas.EmptyBody, endpoint_id: str
                             ) -> schemas.WebhookEndpointReply:
        return endpoint_reply(await billing.webhooks.rotate(endpoint_id), with_secret=True)

    @endpoint(Route("DELETE", "/v1/admin/webhooks/{endpoint_id}", "Remove a webhook endpoint",
                    Caller.ADMIN, reply=schemas.WebhookEndpointReply,
                    errors=ERRORS_ADMIN_READ))
    async def delete_webhook(endpoint_id: str) -> schemas.WebhookEndpointReply:
        return endpoint_reply(await billing.webhooks.delete(endpoint_id))

    @endpoint(Route("GET", "/v1/admin/webhooks/{endpoint_id}/dead-letters",
                    "Events the endpoint did not take within the retry window",
                    Caller.ADMIN, reply=schemas.ParkedWebhooksReply,
                    errors=ERRORS_ADMIN_READ))
    async def webhook_dead_letters(endpoint_id: str) -> schemas.ParkedWebhooksReply:
        await billing.webhooks.endpoint_named(endpoint_id)
        return parked_webhooks_reply(endpoint_id,
                                     await billing.webhooks.dead_letters(endpoint_id))

    @endpoint(Route("POST", "/v1/admin/webhooks/{endpoint_id}/resend",
                    "Deliver parked events again, in their order, to this endpoint",
                    Caller.ADMIN, body=schemas.WebhookResendBody, reply=schemas.ResentReply,
                    errors=ERRORS_ADMIN_WRITE))
    async def resend_webhooks(body: schemas.WebhookResendBody, endpoint_id: str
                              ) -> schemas.ResentReply:
        return schemas.ResentReply(await billing.webhooks.resend(endpoint_id, body.sequences))
