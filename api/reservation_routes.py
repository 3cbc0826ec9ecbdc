"""The reservation routes (services): hold credits for a streaming call, then commit the actual
usage or release the hold."""

from __future__ import annotations

from actors.billing import Billing
from api import schemas
from api.http import Register, service_key_name
from api.replies import (
    agent_id,
    commit_reply,
    estimate,
    release_reply,
    reservation_held_reply,
    reservation_reply,
)
from api.routes import ERRORS_SERVICE, Caller, Route
from engine.ids import UserId, parse_key


def register_reservation_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("POST", "/v1/reservations", "Hold credits for a streaming call",
                    Caller.SERVICE, body=schemas.ReserveBody,
                    reply=schemas.ReservationHeldReply, status=201, msgpack=True,
                    errors=(*ERRORS_SERVICE, 402, 404, 409)))
    async def reserve(body: schemas.ReserveBody) -> schemas.ReservationHeldReply:
        return reservation_held_reply(await billing.reserve(
            UserId(body.user_id),
            parse_key("reservation_id", body.reservation_id),
            amount_cents=body.amount_cents,
            metric=body.metric,
            ttl_s=body.ttl_seconds,
            metadata=body.metadata,
            agent_id=agent_id(body.agent_id),
            service=service_key_name(),
            clamp=body.clamp,
            estimate=estimate(body.prompt),
        ))

    @endpoint(Route("GET", "/v1/reservations/{reservation_id}", "A reservation",
                    Caller.SERVICE, reply=schemas.ReservationReply,
                    errors=(400, 401, 403, 404, 503)))
    async def get_reservation(reservation_id: str) -> schemas.ReservationReply:
        return reservation_reply(await billing.get_reservation(reservation_id))

    @endpoint(Route("POST", "/v1/reservations/{reservation_id}/commit",
                    "Charge the actual usage and release the rest of the hold",
                    Caller.SERVICE, body=schemas.CommitBody, reply=schemas.CommitReply,
                    msgpack=True, errors=(*ERRORS_SERVICE, 404, 409)))
    async def commit_reservation(body: schemas.CommitBody,
                                 reservation_id: str) -> schemas.CommitReply:
        return commit_reply(await billing.commit_reservation(
            reservation_id,
            event_id=body.event_id,
            metric=body.metric,
            cost_cents=body.cost_cents,
            cost_micros=body.cost_micros,
            agent_id=agent_id(body.agent_id),
            metadata=body.metadata,
            service=service_key_name(),
        ))

    @endpoint(Route("DELETE", "/v1/reservations/{reservation_id}", "Release a hold",
                    Caller.SERVICE, reply=schemas.ReleaseReply,
                    errors=(400, 401, 403, 404, 409, 503)))
    async def release_reservation(reservation_id: str) -> schemas.ReleaseReply:
        return release_reply(await billing.release_reservation(reservation_id))
