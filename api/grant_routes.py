"""The promotional grant routes (services): the signup, daily and referral grants of the
original service, each exactly once per its key (engine/grants.py)."""

from __future__ import annotations

from actors.billing import Billing
from api import schemas
from api.http import Register
from api.replies import grant_reply, referral_reply
from api.routes import ERRORS_SERVICE, Caller, Route
from api.settings import Settings
from engine.ids import UserId

_ERRORS = (*ERRORS_SERVICE, 409)


def register_grant_routes(endpoint: Register, billing: Billing, settings: Settings) -> None:
    @endpoint(Route("POST", "/v1/credits/signup-grant",
                    "Grant SIGNUP_GRANT_CREDITS once per account (opens it if needed)",
                    Caller.SERVICE, body=schemas.SignupGrantBody, reply=schemas.GrantReply,
                    errors=_ERRORS))
    async def signup_grant(body: schemas.SignupGrantBody) -> schemas.GrantReply:
        return grant_reply(await billing.signup_grant(UserId(body.user_id),
                                                      settings.signup_grant_credits))

    @endpoint(Route("POST", "/v1/credits/daily-grant",
                    "Grant the plan's daily credits once per UTC day, after the signup grant",
                    Caller.SERVICE, body=schemas.DailyGrantBody, reply=schemas.GrantReply,
                    errors=_ERRORS))
    async def daily_grant(body: schemas.DailyGrantBody) -> schemas.GrantReply:
        return grant_reply(await billing.daily_grant(UserId(body.user_id)))

    @endpoint(Route("POST", "/v1/credits/referral-grant",
                    "Grant REFERRAL_GRANT_CREDITS to both sides once per invitee (both or "
                    "neither)", Caller.SERVICE, body=schemas.ReferralGrantBody,
                    reply=schemas.ReferralGrantReply, errors=_ERRORS))
    async def referral_grant(body: schemas.ReferralGrantBody) -> schemas.ReferralGrantReply:
        return referral_reply(await billing.referral_grant(
            UserId(body.inviter_user_id), UserId(body.invitee_user_id),
            settings.referral_grant_credits))
