"""The usage routes: debit one event or a batch, check a balance, price a metric (services),
and usage summaries (the caller, and an admin about any account)."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import request

from actors.billing import Billing
from api import schemas
from api.http import JSON, MSGPACK, BodyDecoder, Register, service_key_name
from api.replies import (
    agent_id,
    error_detail,
    estimate,
    quote_reply,
    summary_days,
    usage_reply,
    usage_request,
    usage_summary_reply,
)
from api.routes import ERRORS_SERVICE, ERRORS_USER, Caller, Route
from engine.commands import UsageResult
from engine.errors import BillingError
from engine.ids import UserId, parse_user_id
from engine.metering import UsageRequest
from engine.pricing import model_reserve_cents

_usage_decoder = BodyDecoder(schemas.UsageBody)
_generic_json = msgspec.json.Decoder()
_generic_msgpack = msgspec.msgpack.Decoder()


def register_usage_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("POST", "/v1/usage", "Debit one usage event", Caller.SERVICE,
                    body=schemas.UsageBody, reply=schemas.UsageReply, msgpack=True,
                    errors=(*ERRORS_SERVICE, 402, 404, 409), headers=(schemas.SERVICE_NAME,)))
    async def usage(body: schemas.UsageBody) -> schemas.UsageReply:
        return usage_reply(await billing.report_usage(usage_request(body, service_key_name())))

    @endpoint(Route("POST", "/v1/usage/batch",
                    "Debit up to 1000 events; per-event results, in request order",
                    Caller.SERVICE, body=schemas.UsageBatchBody,
                    reply=schemas.UsageBatchReply, msgpack=True, errors=ERRORS_SERVICE,
                    headers=(schemas.SERVICE_NAME,)))
    async def usage_batch(body: schemas.UsageBatchBody) -> schemas.UsageBatchReply:
        content_type = request.mimetype or JSON
        service = service_key_name()
        parsed: list[UsageRequest | BillingError] = []
        for raw in body.events:
            try:
                parsed.append(usage_request(_usage_decoder.decode(raw, content_type), service))
            except BillingError as error:
                parsed.append(error)
        valid = [item for item in parsed if isinstance(item, UsageRequest)]
        outcomes = iter(await billing.report_usage_many(valid))
        results: list[Any] = []
        processed = 0
        for raw, item in zip(body.events, parsed, strict=True):
            outcome = next(outcomes) if isinstance(item, UsageRequest) else item
            if isinstance(outcome, UsageResult):
                results.append(usage_reply(outcome))
                processed += 1
            else:
                event_id = (item.event_id if isinstance(item, UsageRequest)
                            else _event_id_of(raw, content_type))
                results.append(schemas.UsageFailure(False, event_id, error_detail(outcome)))
        return schemas.UsageBatchReply(results, processed, len(results) - processed)

    @endpoint(Route("POST", "/v1/usage/check",
                    "Would this much be spendable, and how many output tokens are affordable?",
                    Caller.SERVICE, body=schemas.UsageCheckBody,
                    reply=schemas.UsageCheckReply, msgpack=True,
                    errors=(*ERRORS_SERVICE, 404, 409)))
    async def usage_check(body: schemas.UsageCheckBody) -> schemas.UsageCheckReply:
        required = body.required_cents
        if required <= 0 and body.provider is not None and body.model is not None:
            required = model_reserve_cents(billing.pricing, body.provider, body.model)
        check = await billing.check_balance(
            UserId(body.user_id), required, agent_id=agent_id(body.agent_id),
            service=service_key_name(),
            estimate=estimate(body.prompt))
        return schemas.UsageCheckReply(check.sufficient, check.balance_cents,
                                       check.available_cents, check.required_cents,
                                       check.spendable_micros, check.within_caps,
                                       check.max_output_tokens)

    @endpoint(Route("POST", "/v1/usage/quote", "Price a metric without debiting",
                    Caller.SERVICE, body=schemas.QuoteBody, reply=schemas.QuoteReply,
                    msgpack=True, errors=ERRORS_SERVICE))
    async def usage_quote(body: schemas.QuoteBody) -> schemas.QuoteReply:
        return quote_reply(billing.quote(body.metric))


def _event_id_of(raw: bytes, content_type: str) -> str | None:
    """Best effort, for the answer to an event that failed to decode."""
    try:
        event = (_generic_msgpack if content_type == MSGPACK else _generic_json).decode(raw)
    except msgspec.DecodeError:
        return None
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) else None


def register_report_routes(endpoint: Register, billing: Billing) -> None:
    @endpoint(Route("GET", "/v1/usage/summary",
                    "The caller's usage per day, model or agent (credits and tokens)",
                    Caller.USER, reply=schemas.UsageSummaryReply, errors=ERRORS_USER,
                    parameters=schemas.UsageSummaryQuery))
    async def my_usage_summary(user: UserId, query: schemas.UsageSummaryQuery
                               ) -> schemas.UsageSummaryReply:
        await billing.open_account(user)
        return await _summary(billing, user, query)

    @endpoint(Route("GET", "/v1/admin/accounts/{user_id}/usage/summary",
                    "An account's usage per day, model or agent (admin)", Caller.ADMIN,
                    reply=schemas.UsageSummaryReply, errors=(400, 401, 403, 404, 503),
                    parameters=schemas.UsageSummaryQuery))
    async def admin_usage_summary(query: schemas.UsageSummaryQuery, user_id: str
                                  ) -> schemas.UsageSummaryReply:
        user = parse_user_id(user_id)
        await billing.get_account(user)
        return await _summary(billing, user, query)


async def _summary(billing: Billing, user: UserId, query: schemas.UsageSummaryQuery
                   ) -> schemas.UsageSummaryReply:
    from_day, to_day = summary_days(query)
    summary = await billing.reports.summary(user, from_day, to_day, query.group_by)
    return usage_summary_reply(user, summary)
