"""Subscriptions as pure rules: the state machine of a plan subscription and its grants.

    (none) --subscribe--> active --cancel--> cancelled --period end--> (none)
    active --payment failed--> past_due --paid--> active
    past_due --grace period over--> (none)
    active --period paid--> active (next period, granted)

Grants: one `subscription_grant` entry of the plan's monthly credits per paid period, keyed
on (subscription, period start in whole seconds). Stripe's `invoice.paid` and
`customer.subscription.updated`, Lago's `subscription.started` and our own renewal timer
(admin-managed plans) all name the same key, so any order and any number of repeats grant
once; a late delivery grants its period (keys, not "the current period", decide).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec.structs import replace

from engine.account import Account, live_account
from engine.commands import CommandBase, Context, CreditResult, KeyRecord, Reads, Transition, digest
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from engine.errors import InvalidInput, NotYetApplicable
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import GrantRollover, grant_terms
from engine.plans import FREE
from engine.posting import check_prior, post_entry
from engine.subscription_state import Manager, Subscription, SubscriptionStatus

SCOPE_SUBSCRIPTION_GRANT = "subscription_grant"
MONTH_MS = 30 * 24 * 3600 * 1000  # the period of admin-managed plans


class LagoMirror(msgspec.Struct, frozen=True, gc=False):
    """A record: create (plan set) or terminate (plan None) the Lago subscription, sent
    through the outbox with the rest of the export."""

    user_id: UserId
    subscription_id: str
    plan: str | None  # Lago's plan code; None terminates

    def to_lago(self) -> dict[str, Any]:
        """An outbox row: `POST /api/v1/subscriptions`, or its termination."""
        if self.plan is None:
            return {"terminate_subscription": {"external_id": self.subscription_id}}
        return {"subscription": {"external_customer_id": str(self.user_id),
                                 "external_id": self.subscription_id,
                                 "plan_code": self.plan}}


# --- commands -------------------------------------------------------------------------------


class Subscribe(CommandBase):
    """Start (or change to) a plan. A Stripe subscription's first invoice grants its first
    period; an admin-managed one grants it now."""

    user_id: UserId
    subscription_id: str
    plan: str
    monthly_credits: int
    managed_by: Manager
    period_start_ms: int
    period_end_ms: int
    lago_plan_code: str | None = None
    grant_rollover: GrantRollover = "none"


class GrantPeriod(CommandBase):
    """A period was paid (or, admin-managed, began): grant it once; it also brings a past_due
    subscription back to active and moves the current period forward."""

    user_id: UserId
    subscription_id: str
    period_start_ms: int
    period_end_ms: int
    source: str

    @property
    def key(self) -> str:
        return grant_key(self.subscription_id, self.period_start_ms)

    def reads(self) -> Reads:
        return Reads((SCOPE_SUBSCRIPTION_GRANT, self.key))


class CancelSubscription(CommandBase):
    user_id: UserId


class PaymentFailed(CommandBase):
    user_id: UserId
    subscription_id: str


class EndSubscription(CommandBase):
    """The provider ended it (Stripe deleted, Lago terminated)."""

    user_id: UserId
    subscription_id: str


class SweepSubscription(CommandBase):
    """The sweeper's tick: end or renew what is due at `now_ms`."""

    user_id: UserId


SubscriptionCommand = (Subscribe | GrantPeriod | CancelSubscription | PaymentFailed
                       | EndSubscription | SweepSubscription)


def grant_key(subscription_id: str, period_start_ms: int) -> str:
    return f"{subscription_id}:{period_start_ms // 1000}"


def _whole_seconds(epoch_ms: int) -> int:
    """Stripe says seconds, Lago milliseconds of the same instant: periods are compared and
    keyed in whole seconds."""
    return epoch_ms // 1000 * 1000


# --- transitions ----------------------------------------------------------------------------


def _with(account: Account, subscription: Subscription | None, now_ms: int
          ) -> tuple[Account, Deadline]:
    plan = subscription.plan if subscription is not None else FREE
    updated = replace(account, subscription=subscription, plan=plan, updated_at_ms=now_ms)
    deadline = subscription.deadline_ms() if subscription is not None else None
    return updated, user_deadline(DeadlineKind.SUBSCRIPTION, account.user_id, deadline)


def _current(account: Account, subscription_id: str) -> Subscription:
    subscription = account.subscription
    if subscription is None or subscription.subscription_id != subscription_id:
        # Its start may not have arrived yet: the sender delivers again later.
        raise NotYetApplicable(f"no subscription {subscription_id!r} on this account",
                               {"subscription_id": subscription_id})
    return subscription


def subscribe(account: Account | None, command: Subscribe, context: Context) -> Transition:
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    if not command.period_start_ms < command.period_end_ms:
        raise InvalidInput("a period ends after it starts")
    current = live.subscription
    if current is not None and current.subscription_id == command.subscription_id:
        if current.plan == command.plan:
            return Transition(live, (), live)  # announced again
        # The same subscription moved to another plan (say, in Stripe's portal): the next
        # periods grant the new plan's credits.
        # Lago takes the same external id with another plan code as a plan change.
        changed = replace(current, plan=command.plan, monthly_credits=command.monthly_credits,
                          grant_rollover=command.grant_rollover)
        updated, deadline = _with(live, changed, now_ms)
        mirror = ((LagoMirror(live.user_id, command.subscription_id, command.lago_plan_code),)
                  if command.lago_plan_code is not None else ())
        return Transition(updated, (deadline, *mirror), updated)
    subscription = Subscription(
        subscription_id=command.subscription_id,
        plan=command.plan,
        status=SubscriptionStatus.ACTIVE,
        managed_by=command.managed_by,
        monthly_credits=command.monthly_credits,
        period_start_ms=command.period_start_ms,
        period_end_ms=command.period_end_ms,
        grant_rollover=command.grant_rollover,
    )
    updated, deadline = _with(live, subscription, now_ms)
    mirror: tuple[LagoMirror, ...] = (
        (LagoMirror(live.user_id, command.subscription_id, command.lago_plan_code),)
        if command.lago_plan_code is not None else ())
    if current is not None:
        mirror = (LagoMirror(live.user_id, current.subscription_id, None), *mirror)
    if command.managed_by is Manager.ADMIN:
        granted = grant_period(updated, GrantPeriod(
            live.user_id, command.subscription_id, command.period_start_ms,
            command.period_end_ms, "admin"), replace(context, prior=None))
        return Transition(granted.account, (*granted.records, *mirror), granted.account,
                          granted.keyed)
    return Transition(updated, (deadline, *mirror), updated)


def grant_period(account: Account | None, command: GrantPeriod, context: Context
                 ) -> Transition:
    fingerprint = digest((command.user_id.bytes, command.key))
    check_prior(command.key, fingerprint, context.prior)
    live = live_account(account, command.user_id)
    subscription = _current(live, command.subscription_id)
    credits = subscription.monthly_credits
    start, end_ms = _whole_seconds(command.period_start_ms), _whole_seconds(command.period_end_ms)
    newer = start >= subscription.period_start_ms
    renewed = replace(
        subscription,
        period_start_ms=start if newer else subscription.period_start_ms,
        period_end_ms=end_ms if newer else subscription.period_end_ms,
        last_granted_period_ms=max(start, subscription.last_granted_period_ms or 0),
        # A paid period is a recovered payment.
        status=(SubscriptionStatus.ACTIVE if subscription.status is SubscriptionStatus.PAST_DUE
                else subscription.status),
        past_due_since_ms=None,
    )
    granted, entry = post_entry(
        live, context, EntryType.SUBSCRIPTION_GRANT, credits, source_key=command.key,
        description=f"{subscription.plan} plan: credits for the period from "
                    f"{command.period_start_ms // 1000}",
        metadata={"subscription_id": subscription.subscription_id, "source": command.source},
        terms=grant_terms(subscription.grant_rollover, start, end_ms))
    updated, deadline = _with(granted, renewed, context.now_ms)
    reply = CreditResult(live.user_id, context.transaction_id, EntryType.SUBSCRIPTION_GRANT,
                         credits, updated.balance_cents)
    record = KeyRecord(SCOPE_SUBSCRIPTION_GRANT, command.key, live.user_id, fingerprint, reply)
    return Transition(updated, (entry, record, deadline), reply, (record,))


def cancel(account: Account | None, command: CancelSubscription, context: Context
           ) -> Transition:
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    subscription = live.subscription
    if subscription is None:
        raise InvalidInput("there is no subscription to cancel")
    if subscription.status is SubscriptionStatus.CANCELLED:
        return Transition(live, (), live)
    updated, deadline = _with(live, replace(subscription, status=SubscriptionStatus.CANCELLED),
                              now_ms)
    return Transition(updated, (deadline,), updated)


def payment_failed(account: Account | None, command: PaymentFailed, context: Context
                   ) -> Transition:
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    subscription = _current(live, command.subscription_id)
    if subscription.status is SubscriptionStatus.PAST_DUE:
        return Transition(live, (), live)
    updated, deadline = _with(live, replace(subscription, status=SubscriptionStatus.PAST_DUE,
                                            past_due_since_ms=now_ms), now_ms)
    return Transition(updated, (deadline,), updated)


def end(account: Account | None, command: EndSubscription, context: Context) -> Transition:
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    subscription = live.subscription
    if subscription is None or subscription.subscription_id != command.subscription_id:
        return Transition(live, (), live)  # already ended, or replaced by a newer one
    updated, deadline = _with(live, None, now_ms)
    mirror = LagoMirror(live.user_id, subscription.subscription_id, None)
    return Transition(updated, (deadline, mirror), updated)


def sweep(account: Account | None, command: SweepSubscription, context: Context
          ) -> Transition:
    """End a cancelled subscription at its period end or a past_due one after the grace
    period; renew an admin-managed one (its next period, granted once)."""
    now_ms = context.now_ms
    live = live_account(account, command.user_id)
    subscription = live.subscription
    deadline = subscription.deadline_ms() if subscription is not None else None
    if subscription is None or deadline is None or now_ms < deadline:
        return Transition(live, (), None)
    if subscription.status is not SubscriptionStatus.ACTIVE:
        return end(live, EndSubscription(live.user_id, subscription.subscription_id), context)
    start = subscription.period_end_ms
    return grant_period(live, GrantPeriod(live.user_id, subscription.subscription_id, start,
                                          start + MONTH_MS, "renewal_timer"), context)


HANDLERS = {
    Subscribe: subscribe,
    GrantPeriod: grant_period,
    CancelSubscription: cancel,
    PaymentFailed: payment_failed,
    EndSubscription: end,
    SweepSubscription: sweep,
}
