"""The z-billing callback for the LiteLLM proxy.

Per call (LiteLLM proxy hooks, all on the proxy's event loop):

- `async_pre_call_hook`: find the z-billing user, price an estimate (the prompt's tokens and
  `max_tokens`) and hold it with `POST /v1/reservations`; refuse the call when the user cannot
  pay (402 naming balance and required) or when z-billing cannot be reached (503, unless
  fail-open).
- `async_log_success_event`: commit the actual usage LiteLLM reports (input, output, cache
  reads, cache writes). LiteLLM also sends this event for a stream the client cut off, with the
  usage of what was streamed, so that case is charged for what was produced.
- `async_post_call_streaming_iterator_hook`: remembers what a stream produced, so that a
  stream the upstream cut off (the failure hook below) is charged for it.
- `async_post_call_failure_hook`: release the hold (or commit what a broken stream produced).

Reservation, commit and late-report ids are `litellm-<LiteLLM call id>`: a retry of a call is
the same z-billing key, so it is never charged twice; a client that re-sends a finished call's
`x-litellm-call-id` is refused instead of getting a free call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException, UserAPIKeyAuth
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

from api.client import (
    AccountNotFound,
    AsyncBillingClient,
    BillingApiError,
    Conflict,
    DuplicateEvent,
    EngineStopped,
    ExternalServiceError,
    InsufficientCredits,
    InternalError,
    Overloaded,
    ReservationExpired,
)
from integrations.litellm.settings import BillingSettings, OtherCalls, UserSource
from integrations.litellm.usage import (
    Tokens,
    billing_id,
    parse_user_id,
    split_model,
    tokens_from_usage,
)

log = logging.getLogger("zbilling.litellm")

# Call types priced by tokens (LiteLLM's names; the proxy passes the async ones).
BILLED_CALL_TYPES = frozenset({"completion", "acompletion", "text_completion", "atext_completion"})
# Calls between the pre-call hook and their settlement; past this the oldest is forgotten (its
# hold is then released by its expiry) rather than letting a leak grow without bound.
OPEN_CALLS_MAX = 100_000
SETTLE_ATTEMPTS_MAX = 60
SETTLE_BACKOFF_MAX_S = 5.0
METADATA_TEXT_MAX = 128
# Errors that mean "z-billing is not answering now", as opposed to an answer about the call.
UNAVAILABLE = (httpx.TransportError, Overloaded, EngineStopped, InternalError,
               ExternalServiceError)

DECISIONS = ("reserved", "insufficient_credits", "no_account", "no_user", "duplicate_call",
             "refused_call_type", "unbilled_call_type", "rejected", "fail_closed", "fail_open")
SETTLEMENTS = {"commit": ("ok", "duplicate", "failed", "dropped"),
               "release": ("ok", "duplicate", "failed", "dropped"),
               "report": ("ok", "duplicate", "failed", "dropped")}


class CallbackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("zbilling_litellm_calls", "LiteLLM calls by the callback's decision "
                             "before the call", ["decision"], registry=registry)
        self.settlements = Counter("zbilling_litellm_settlements", "Commits, releases and late "
                                   "usage reports after calls, by outcome", ["action", "outcome"],
                                   registry=registry)
        self.reserve_seconds = Histogram("zbilling_litellm_reserve_seconds", "Time the pre-call "
                                         "hook spent on z-billing", registry=registry,
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25, 0.5, 1.0, 2.5, 5.0))
        # Every known label set exists from the start, at 0, so alerts and rates see a series.
        for decision in DECISIONS:
            self.calls.labels(decision)
        for action, outcomes in SETTLEMENTS.items():
            for outcome in outcomes:
                self.settlements.labels(action, outcome)


@dataclass
class OpenCall:
    """A call that passed the pre-call hook and is not settled yet."""

    user_id: uuid.UUID
    reservation_id: str | None  # None: let through fail-open, usage is reported afterwards
    provider: str
    model: str
    litellm_model: str
    prompt_tokens: int
    produced: list[str] = field(default_factory=list)


def refusal(status: int, kind: str, message: str, **details: object) -> ProxyException:
    """An OpenAI-shaped error the proxy answers the caller with, status `status`."""
    return ProxyException(message=message, type=kind, param=None, code=status,
                          openai_code=kind, provider_specific_fields=details or None)


class ZBillingCallback(CustomLogger):
    def __init__(self, settings: BillingSettings, *,
                 registry: CollectorRegistry = REGISTRY,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = CallbackMetrics(registry)
        self._transport = transport
        self._open: OrderedDict[str, OpenCall] = OrderedDict()
        self._clients: dict[asyncio.AbstractEventLoop, AsyncBillingClient] = {}
        # Settlements run as tasks so a slow z-billing never holds up LiteLLM's logging worker;
        # the set keeps them referenced until they end.
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.metrics_listen is not None:
            host, port = settings.metrics_listen
            start_http_server(port, addr=host, registry=registry)

    # --- before the call ---------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: UserAPIKeyAuth, cache: Any,
                                  data: dict[str, Any], call_type: str) -> dict[str, Any]:
        if call_type not in BILLED_CALL_TYPES:
            if self.settings.other_calls is OtherCalls.ALLOW:
                self.metrics.calls.labels("unbilled_call_type").inc()
                return data
            self.metrics.calls.labels("refused_call_type").inc()
            raise refusal(400, "unsupported_call_type",
                          f"z-billing cannot price {call_type} calls; this proxy refuses them")
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise refusal(500, "internal_error", "LiteLLM gave the call no litellm_call_id")
        user_id = self._user_of(user_api_key_dict, data)
        litellm_model = self._deployment_model(str(data.get("model", "")))
        provider, model = split_model(litellm_model, None)
        prompt_tokens = _prompt_tokens(litellm_model, data)
        max_tokens = data.get("max_tokens") or data.get("max_completion_tokens")
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            max_tokens = self.settings.max_tokens_default
        estimate = Tokens(input=prompt_tokens, output=max_tokens)
        reservation_id = billing_id(call_id)
        started = time.perf_counter()
        try:
            await self._client().reserve(
                user_id, reservation_id=reservation_id, metric=estimate.metric(provider, model),
                ttl_seconds=self.settings.reservation_ttl_s,
                metadata={"source": "litellm",
                          "model_group": str(data.get("model", ""))[:METADATA_TEXT_MAX]})
        except InsufficientCredits as error:
            self.metrics.calls.labels("insufficient_credits").inc()
            raise refusal(
                402, "insufficient_credits",
                f"z-billing: insufficient credits for user {user_id}: balance "
                f"{error.balance_cents} credits, available {error.available_cents}, required "
                f"{error.required_cents}", balance_cents=error.balance_cents,
                available_cents=error.available_cents, required_cents=error.required_cents,
            ) from None
        except AccountNotFound:
            self.metrics.calls.labels("no_account").inc()
            raise refusal(402, "insufficient_credits",
                          f"z-billing: user {user_id} has no account (balance 0 credits)",
                          balance_cents=0, available_cents=0) from None
        except (DuplicateEvent, Conflict):
            self.metrics.calls.labels("duplicate_call").inc()
            raise refusal(409, "duplicate_call",
                          f"z-billing: call id {call_id} was already billed; send a new "
                          "x-litellm-call-id for a new call") from None
        except UNAVAILABLE as error:
            if not self.settings.fail_open:
                self.metrics.calls.labels("fail_closed").inc()
                log.warning("z-billing unreachable, call refused (fail-closed): %r", error)
                raise refusal(503, "billing_unavailable",
                              "z-billing cannot be reached; calls are refused until it is "
                              "back") from None
            self.metrics.calls.labels("fail_open").inc()
            log.warning("z-billing unreachable, call let through (fail-open): %r", error)
            reservation_id = None
        except BillingApiError as error:
            self.metrics.calls.labels("rejected").inc()
            raise refusal(400, "billing_rejected", f"z-billing refused the call: {error}") from None
        finally:
            self.metrics.reserve_seconds.observe(time.perf_counter() - started)
        if reservation_id is not None:
            self.metrics.calls.labels("reserved").inc()
        self._remember(call_id, OpenCall(user_id, reservation_id, provider, model, litellm_model,
                                         prompt_tokens))
        return data

    def _user_of(self, auth: UserAPIKeyAuth, data: dict[str, Any]) -> uuid.UUID:
        if self.settings.user_source is UserSource.KEY_METADATA:
            raw = (auth.metadata or {}).get(self.settings.user_metadata_key)
            where = f"the key's metadata field {self.settings.user_metadata_key!r}"
        else:
            raw = auth.end_user_id or data.get("user")
            where = "the request's `user` field"
        user_id = parse_user_id(raw)
        if user_id is None:
            self.metrics.calls.labels("no_user").inc()
            raise refusal(400, "billing_user_required",
                          f"z-billing: {where} must be the z-billing user id (a UUID)")
        return user_id

    @staticmethod
    def _deployment_model(model_group: str) -> str:
        """The model the proxy will call for `model_group` (its first deployment), which is
        what z-billing's price table knows; the commit uses the deployment actually called."""
        # Imported here: the module is the running proxy (importing it at the top would start
        # one in a process that only uses this class, such as a unit test).
        from litellm.proxy import proxy_server  # noqa: PLC0415

        router = getattr(proxy_server, "llm_router", None)
        try:
            deployments = router.get_model_list(model_name=model_group) if router else None
        except Exception:  # the router's internals are LiteLLM's: price by the group's name
            log.warning("no deployment found for %r; priced by its name", model_group)
            deployments = None
        for deployment in deployments or ():
            params = deployment.get("litellm_params") or {}
            if isinstance(params.get("model"), str):
                return params["model"]
        return model_group

    def _remember(self, call_id: str, call: OpenCall) -> None:
        self._open[call_id] = call
        while len(self._open) > OPEN_CALLS_MAX:
            _, dropped = self._open.popitem(last=False)
            action = "commit" if dropped.reservation_id is not None else "report"
            self.metrics.settlements.labels(action, "dropped").inc()

    # --- during a stream ---------------------------------------------------------------------

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: UserAPIKeyAuth, response: Any, request_data: dict[str, Any],
    ) -> AsyncGenerator[Any, None]:
        call = self._open.get(str(request_data.get("litellm_call_id")))
        async for chunk in response:
            if call is not None:
                for choice in getattr(chunk, "choices", None) or ():
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if isinstance(content, str):
                        call.produced.append(content)
            yield chunk

    # --- after the call ----------------------------------------------------------------------

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        call = self._open.pop(str(kwargs.get("litellm_call_id")), None)
        if call is None:
            return  # not a call we billed, or already settled
        usage = getattr(response_obj, "usage", None)
        tokens = tokens_from_usage(usage)
        if usage is None:
            tokens = _produced_tokens(call)
        model = kwargs.get("model")
        provider, model_name = (split_model(model, kwargs.get("custom_llm_provider"))
                                if isinstance(model, str) and model
                                else (call.provider, call.model))
        self._spawn(self._charge(call, tokens, provider, model_name,
                                 str(kwargs.get("litellm_call_id"))))

    async def async_post_call_failure_hook(self, request_data: dict[str, Any],
                                           original_exception: Exception,
                                           user_api_key_dict: UserAPIKeyAuth,
                                           traceback_str: str | None = None) -> None:
        call_id = str(request_data.get("litellm_call_id"))
        call = self._open.pop(call_id, None)
        if call is None:
            return None
        if call.produced:
            # A stream broke after sending output: the caller got that much.
            log.warning("call %s failed after streaming %d chunks (%r); charging them",
                        call_id, len(call.produced), original_exception)
            self._spawn(self._charge(call, _produced_tokens(call), call.provider, call.model,
                                     call_id))
        elif call.reservation_id is not None:
            reservation_id = call.reservation_id
            self._spawn(self._settle(
                "release", lambda: self._client().release_reservation(reservation_id)))
        return None

    async def _charge(self, call: OpenCall, tokens: Tokens, provider: str, model: str,
                      call_id: str) -> None:
        metric = tokens.metric(provider, model)
        metadata = {"source": "litellm", **tokens.metadata()}
        event_id = billing_id(call_id)
        if call.reservation_id is None:
            await self._settle("report", lambda: self._client().report_usage(
                call.user_id, event_id=event_id, metric=metric, metadata=metadata))
            return
        reservation_id = call.reservation_id

        async def commit() -> object:
            try:
                return await self._client().commit_reservation(
                    reservation_id, event_id=event_id, metric=metric, metadata=metadata)
            except ReservationExpired:
                # A call longer than the hold's TTL: the service was delivered, charge it.
                return await self._client().report_usage(
                    call.user_id, event_id=event_id, metric=metric, metadata=metadata)

        await self._settle("commit", commit)

    async def _settle(self, action: str, send: Callable[[], Awaitable[object]]) -> None:
        """Send one settlement, retrying while z-billing is unavailable, bounded in attempts
        and by the settle deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.settle_deadline_s
        for attempt in range(SETTLE_ATTEMPTS_MAX):
            try:
                await send()
            except DuplicateEvent:
                self.metrics.settlements.labels(action, "duplicate").inc()
                return
            except UNAVAILABLE as error:
                remaining = deadline - loop.time()
                if remaining <= 0 or attempt == SETTLE_ATTEMPTS_MAX - 1:
                    self.metrics.settlements.labels(action, "failed").inc()
                    log.error("z-billing %s given up after %d attempts: %r", action,
                              attempt + 1, error)
                    return
                await asyncio.sleep(min(SETTLE_BACKOFF_MAX_S, 0.2 * 2**attempt, remaining))
                continue
            except BillingApiError as error:
                self.metrics.settlements.labels(action, "failed").inc()
                log.error("z-billing refused a %s: %s", action, error)
                return
            self.metrics.settlements.labels(action, "ok").inc()
            return

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self) -> AsyncBillingClient:
        """One client per event loop: httpx's pool belongs to the loop that opened it."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            client = AsyncBillingClient(self.settings.url, service_key=self.settings.service_key,
                                        timeout=self.settings.timeout_s,
                                        transport=self._transport)
            self._clients[loop] = client
        return client


def _prompt_tokens(litellm_model: str, data: dict[str, Any]) -> int:
    messages = data.get("messages")
    prompt = data.get("prompt")
    try:
        if isinstance(messages, list):
            return int(litellm.token_counter(model=litellm_model, messages=messages))
        if isinstance(prompt, str | list):
            return int(litellm.token_counter(model=litellm_model, text=prompt))
    except Exception:  # a tokenizer LiteLLM cannot load: fall back to ~4 characters a token
        log.warning("token count failed for %s; estimating from length", litellm_model)
        return len(str(messages if messages is not None else prompt)) // 4 + 1
    return 0


def _produced_tokens(call: OpenCall) -> Tokens:
    text = "".join(call.produced)
    try:
        output = int(litellm.token_counter(model=call.litellm_model, text=text,
                                           count_response_tokens=True)) if text else 0
    except Exception:
        output = len(text) // 4 + 1
    return Tokens(input=call.prompt_tokens, output=output)
