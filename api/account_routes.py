"""The account routes: the caller's account, balance, ledger and auto-refill (JWT), and credit
grants (admin)."""

from __future__ import annotations

from quart import request

from actors.billing import Billing
from api import schemas
from api.http import Register
from api.replies import (
    account_reply,
    auto_refill_reply,
    balance_reply,
    credit_reply,
    lot_request,
    transaction_reply,
)
from api.routes import ERRORS_USER, Caller, Route
from engine.account import AccountAt, AutoRefillSettings
from engine.ids import UserId, parse_transaction_id
from engine.ledger import EntryType


def register_account_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("POST", "/v1/accounts", "Open the caller's account", Caller.USER,
                    body=schemas.EmptyBody, reply=schemas.AccountReply, status=201,
                    errors=(400, 401, 409, 415, 503)))
    async def create_account(user: UserId, _: schemas.EmptyBody) -> schemas.AccountReply:
        created = await billing.open_account(user, must_be_new=True)
        return account_reply(AccountAt(created, created.created_at_ms))

    @endpoint(Route("GET", "/v1/accounts/me", "The caller's account (opened on first use)",
                    Caller.USER, reply=schemas.AccountReply, errors=ERRORS_USER))
    async def my_account(user: UserId) -> schemas.AccountReply:
        return account_reply(await billing.lots.account_at(user))

    @endpoint(Route("DELETE", "/v1/accounts/me", "Close the caller's account", Caller.USER,
                    reply=schemas.DeletedReply, errors=ERRORS_USER))
    async def close_my_account(user: UserId) -> schemas.DeletedReply:
        await billing.close_account(user)
        return schemas.DeletedReply(deleted=True)

    @endpoint(Route("GET", "/v1/credits/balance", "The caller's balance", Caller.USER,
                    reply=schemas.BalanceReply, errors=ERRORS_USER))
    async def my_balance(user: UserId) -> schemas.BalanceReply:
        return balance_reply(await billing.lots.account_at(user))

    @endpoint(Route("GET", "/v1/credits/transactions", "The caller's ledger, newest first",
                    Caller.USER, reply=schemas.TransactionPageReply, errors=ERRORS_USER,
                    parameters=schemas.TransactionsQuery))
    async def my_transactions(user: UserId, query: schemas.TransactionsQuery
                              ) -> schemas.TransactionPageReply:
        before = parse_transaction_id(query.before) if query.before else None
        await billing.open_account(user)
        page = await billing.list_transactions(user, limit=query.limit, offset=query.offset,
                                               before=before)
        views = [transaction_reply(entry) for entry in page.entries]
        return schemas.TransactionPageReply(
            transactions=views,
            has_more=page.has_more,
            next_before=views[-1].id if page.has_more and views else None,
        )

    @endpoint(Route("GET", "/v1/credits/auto-refill", "The caller's auto-refill settings",
                    Caller.USER, reply=schemas.AutoRefillReply, errors=ERRORS_USER))
    async def my_auto_refill(user: UserId) -> schemas.AutoRefillReply:
        return auto_refill_reply(await billing.open_account(user))

    @endpoint(Route("POST", "/v1/credits/auto-refill", "Change the auto-refill settings",
                    Caller.USER, body=schemas.AutoRefillBody, reply=schemas.AutoRefillReply,
                    errors=(*ERRORS_USER, 413, 415)))
    async def set_my_auto_refill(user: UserId,
                                 body: schemas.AutoRefillBody) -> schemas.AutoRefillReply:
        await billing.open_account(user)
        wanted = AutoRefillSettings.validated(body.enabled, body.trigger_below_cents,
                                              body.refill_amount_cents)
        return auto_refill_reply(await billing.set_auto_refill(user, wanted))

    @endpoint(Route("POST", "/v1/credits/add", "Grant credits (admin)", Caller.ADMIN,
                    body=schemas.CreditsAddBody, reply=schemas.CreditReply,
                    errors=(400, 401, 403, 404, 409, 413, 415, 503),
                    headers=(schemas.IDEMPOTENCY_KEY,)))
    async def add_credits(body: schemas.CreditsAddBody) -> schemas.CreditReply:
        return credit_reply(await billing.add_credits(
            UserId(body.user_id),
            body.amount_cents,
            entry_type=EntryType(body.type),
            description=body.reason,
            idempotency_key=request.headers.get(schemas.IDEMPOTENCY_KEY.name),
            lot=lot_request(body),
        ))
