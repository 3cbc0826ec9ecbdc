"""The credit-lot routes: the caller's lots (JWT), and the operators' view of an account and
undo tools (admin): void a lot, debit by hand, reverse a usage event."""

from __future__ import annotations

from quart import request

from actors.billing import Billing
from api import schemas
from api.http import Register
from api.replies import account_reply, credit_reply, lots_reply
from api.routes import ERRORS_USER, Caller, Route
from engine.ids import UserId, parse_user_id

# What an admin write can answer: 402 when a debit exceeds what may be spent.
ERRORS_ADMIN_WRITE = (400, 401, 402, 403, 404, 409, 413, 415, 503)


def _idempotency_key() -> str | None:
    return request.headers.get(schemas.IDEMPOTENCY_KEY.name)


def register_lot_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("GET", "/v1/credits/lots", "The caller's credit lots, in burn order",
                    Caller.USER, reply=schemas.LotsReply, errors=ERRORS_USER))
    async def my_lots(user: UserId) -> schemas.LotsReply:
        return lots_reply(await billing.lots.account_at(user))

    @endpoint(Route("GET", "/v1/admin/accounts/{user_id}", "An account with its lots (admin)",
                    Caller.ADMIN, reply=schemas.AccountReply,
                    errors=(400, 401, 403, 404, 503)))
    async def admin_account(user_id: str) -> schemas.AccountReply:
        return account_reply(await billing.lots.account_at(parse_user_id(user_id),
                                                           open_on_first_use=False))

    @endpoint(Route("POST", "/v1/admin/lots/void", "Void what is left of a lot (admin)",
                    Caller.ADMIN, body=schemas.LotVoidBody, reply=schemas.CreditReply,
                    errors=ERRORS_ADMIN_WRITE, headers=(schemas.IDEMPOTENCY_KEY,)))
    async def void_lot(body: schemas.LotVoidBody) -> schemas.CreditReply:
        return credit_reply(await billing.lots.void(
            UserId(body.user_id), body.lot_id, reason=body.reason,
            idempotency_key=_idempotency_key()))

    @endpoint(Route("POST", "/v1/admin/credits/debit", "Debit credits by hand (admin)",
                    Caller.ADMIN, body=schemas.CreditsDebitBody, reply=schemas.CreditReply,
                    errors=ERRORS_ADMIN_WRITE, headers=(schemas.IDEMPOTENCY_KEY,)))
    async def debit_credits(body: schemas.CreditsDebitBody) -> schemas.CreditReply:
        return credit_reply(await billing.lots.debit(
            UserId(body.user_id), body.amount_cents, reason=body.reason,
            idempotency_key=_idempotency_key()))

    @endpoint(Route("POST", "/v1/admin/usage/reverse",
                    "Give a usage event's cost back to its lots, once (admin)", Caller.ADMIN,
                    body=schemas.UsageReverseBody, reply=schemas.CreditReply,
                    errors=ERRORS_ADMIN_WRITE))
    async def reverse_usage(body: schemas.UsageReverseBody) -> schemas.CreditReply:
        return credit_reply(await billing.lots.reverse_usage(body.event_id,
                                                             reason=body.reason))
