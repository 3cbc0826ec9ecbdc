"""The spend-control routes: the caller's caps and time zone (JWT), and any account's (admin).
Spending per cap shows here and in the balance and account replies."""

from __future__ import annotations

from actors.billing import Billing
from api import schemas
from api.http import Register
from api.replies import spend_controls_reply
from api.routes import ERRORS_USER, Caller, Route
from engine.caps import CapSetting
from engine.ids import UserId, parse_user_id

ERRORS_ADMIN_READ = (400, 401, 403, 404, 503)
ERRORS_ADMIN_WRITE = (400, 401, 403, 404, 409, 413, 415, 503)


def _settings(body: schemas.SpendControlsBody) -> list[CapSetting]:
    return [CapSetting(cap.period, cap.limit_cents, cap.hard, cap.scope, cap.name)
            for cap in body.caps]


def register_control_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("GET", "/v1/credits/spend-controls",
                    "The caller's spend caps: spent, held and remaining in each window",
                    Caller.USER, reply=schemas.SpendControlsReply, errors=ERRORS_USER))
    async def my_spend_controls(user: UserId) -> schemas.SpendControlsReply:
        return spend_controls_reply(await billing.controls.get(user))

    @endpoint(Route("POST", "/v1/credits/spend-controls",
                    "Replace the caller's spend caps (and time zone)", Caller.USER,
                    body=schemas.SpendControlsBody, reply=schemas.SpendControlsReply,
                    errors=(*ERRORS_USER, 413, 415)))
    async def set_my_spend_controls(user: UserId, body: schemas.SpendControlsBody
                                    ) -> schemas.SpendControlsReply:
        return spend_controls_reply(await billing.controls.set(
            user, _settings(body), timezone=body.timezone,
            low_balance_cents=body.low_balance_cents))

    @endpoint(Route("GET", "/v1/admin/accounts/{user_id}/spend-controls",
                    "An account's spend caps (admin)", Caller.ADMIN,
                    reply=schemas.SpendControlsReply, errors=ERRORS_ADMIN_READ))
    async def admin_spend_controls(user_id: str) -> schemas.SpendControlsReply:
        return spend_controls_reply(await billing.controls.get(parse_user_id(user_id),
                                                               open_on_first_use=False))

    @endpoint(Route("POST", "/v1/admin/accounts/{user_id}/spend-controls",
                    "Replace an account's spend caps (admin)", Caller.ADMIN,
                    body=schemas.SpendControlsBody, reply=schemas.SpendControlsReply,
                    errors=ERRORS_ADMIN_WRITE))
    async def admin_set_spend_controls(body: schemas.SpendControlsBody, user_id: str
                                       ) -> schemas.SpendControlsReply:
        return spend_controls_reply(await billing.controls.set(
            parse_user_id(user_id), _settings(body), timezone=body.timezone,
            low_balance_cents=body.low_balance_cents, open_on_first_use=False))
