"""Pure transitions `(state, command, context) → Transition`. No I/O, no clock, no trio.

Domain errors are raised; an actor turns them into replies. Nothing is recorded for a command
that raised, so a rejected event id may be retried after the cause is fixed (say, a top-up).
"""

from __future__ import annotations

import msgspec
from msgspec.structs import replace

from engine import subscriptions
from engine.account import Account, AccountStatus, live_account
from engine.commands import (
    AddCredits,
    BalanceCheck,
    CheckBalance,
    CloseAccount,
    Command,
    CreditResult,
    GetAccount,
    KeyRecord,
    OpenAccount,
    PriorOutcome,
    ReportUsage,
    SetAutoRefill,
    Transition,
    UsageEventRecord,
    UsageResult,
)
from engine.errors import (
    AccountExists,
    AccountNotFound,
    DuplicateEvent,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    ReservationClosed,
    ReservationExpired,
    require,
)
from engine.export import AccountOpened
from engine.ids import TransactionId
from engine.ledger import GRANTED_TYPES, PURCHASED_TYPES, EntryType, LedgerEntry
from engine.money import COST_MICROS_MAX, MICROS_PER_CREDIT, micros_to_cents_ceil, split_micros
from engine.payments import (
    DeclineRefill,
    PaymentCommand,
    SetStripeCustomer,
    TakeBackCredits,
    decline_refill,
    enabling_clears_error,
    refill_if_low,
    set_stripe_customer,
    settle_refill,
    take_back_credits,
)
from engine.reservations import (
    RESERVATION_TTL_S_MAX,
    CommitReservation,
    ExpireReservation,
    ReleaseReservation,
    Reservation,
    ReservationCommand,
    ReservationCommitted,
    ReservationHeld,
    ReservationReleased,
    ReservationStatus,
    Reserve,
)
from engine.subscriptions import (
    CancelSubscription,
    EndSubscription,
    GrantPeriod,
    PaymentFailed,
    Subscribe,
    SubscriptionCommand,
    SweepSubscription,
)


class Context(msgspec.Struct, frozen=True, gc=False):
    """What a transition may know of the world: the time, a fresh id, a key's history and the
    reservation the command names."""

    now_ms: int
    transaction_id: TransactionId
    prior: PriorOutcome | None = None
    reservation: Reservation | None = None


def apply(
    account: Account | None,
    command: Command | ReservationCommand | PaymentCommand | SubscriptionCommand,
    context: Context,
) -> Transition:
    handler = _HANDLERS[type(command)]
    transition = handler(account, command, context)
    if transition.account is not None:
        transition.account.check_invariants()
    return transition


def _check_prior(command: AddCredits | ReportUsage, prior: PriorOutcome | None) -> None:
    """A key seen before is either a retry (the original result) or a different request."""
    if prior is None:
        return
    if prior.fingerprint != command.fingerprint:
        raise IdempotencyConflict(command.key or "")
    raise DuplicateEvent(command.key or "", prior.result.to_dict())


def _open(account: Account | None, command: OpenAccount, context: Context) -> Transition:
    if account is not None:
        if command.must_be_new:
            raise AccountExists(
                f"account {command.user_id} already exists", {"user_id": str(command.user_id)}
            )
        return Transition(account, (), account)
    created = Account(
        user_id=command.user_id, created_at_ms=context.now_ms, updated_at_ms=context.now_ms
    )
    return Transition(created, (AccountOpened(command.user_id),), created)


def _get(account: Account | None, command: GetAccount, context: Context) -> Transition:
    if account is None:
        raise AccountNotFound(
            f"no account for user {command.user_id}", {"user_id": str(command.user_id)}
        )
    return Transition(account, (), account)


def _close(account: Account | None, command: CloseAccount, context: Context) -> Transition:
    live = live_account(account, command.user_id)
    closed = replace(live, status=AccountStatus.CLOSED, updated_at_ms=context.now_ms)
    return Transition(closed, (), closed)


def _set_auto_refill(
    account: Account | None, command: SetAutoRefill, context: Context
) -> Transition:
    live = enabling_clears_error(command.settings, live_account(account, command.user_id))
    updated = replace(live, auto_refill=command.settings, updated_at_ms=context.now_ms)
    return Transition(updated, (), updated)


def _check_balance(
    account: Account | None, command: CheckBalance, context: Context
) -> Transition:
    live = live_account(account, command.user_id)
    sufficient = live.can_afford_micros(command.required_cents * MICROS_PER_CREDIT)
    reply = BalanceCheck(
        sufficient=sufficient,
        balance_cents=live.balance_cents,
        available_cents=live.available,
        required_cents=command.required_cents,
    )
    return Transition(live, (), reply)


def _add_credits(account: Account | None, command: AddCredits, context: Context) -> Transition:
    _check_prior(command, context.prior)
    live = live_account(account, command.user_id)
    if command.entry_type is EntryType.USAGE or command.amount_cents <= 0:
        raise InvalidInput("credits added must be a positive amount of a credit type")
    balance = live.balance_cents + command.amount_cents
    entry = LedgerEntry(
        transaction_id=context.transaction_id,
        user_id=live.user_id,
        entry_type=command.entry_type,
        amount=command.amount_cents,
        balance_after=balance,
        created_at_ms=context.now_ms,
        source_key=command.key,
        description=command.description,
        metadata=command.metadata,
    )
    updated = replace(
        live,
        balance_cents=balance,
        lifetime_purchased_cents=live.lifetime_purchased_cents
        + (command.amount_cents if command.entry_type in PURCHASED_TYPES else 0),
        lifetime_granted_cents=live.lifetime_granted_cents
        + (command.amount_cents if command.entry_type in GRANTED_TYPES else 0),
        seq=live.seq + 1,
        updated_at_ms=context.now_ms,
    )
    updated, settled = settle_refill(updated, command.refill_number)
    reply = CreditResult(
        user_id=live.user_id,
        transaction_id=context.transaction_id,
        entry_type=command.entry_type,
        amount_cents=command.amount_cents,
        balance_cents=balance,
    )
    marker = (command.webhook,) if command.webhook is not None else ()
    if command.key is None:
        return Transition(updated, (entry, *settled, *marker), reply)
    key_record = KeyRecord(
        scope=command.scope,
        key=command.key,
        user_id=live.user_id,
        fingerprint=command.fingerprint,
        result=reply,
    )
    return Transition(updated, (entry, key_record, *settled, *marker), reply, (key_record,))


def _report_usage(
    account: Account | None, command: ReportUsage, context: Context
) -> Transition:
    _check_prior(command, context.prior)
    live = live_account(account, command.user_id)
    _check_cost(command.cost_micros)
    if not live.can_afford_micros(command.cost_micros):
        raise InsufficientCredits(
            balance_cents=live.balance_cents,
            available_cents=live.available,
            required_cents=micros_to_cents_ceil(live.unbilled_micros + command.cost_micros),
        )
    transition = _debit(live, command, context, live.held_cents, {})
    updated = transition.account
    assert updated is not None
    require(updated.available >= -updated.overdraft_limit_cents, "debit passed overdraft")
    return transition


def _check_cost(cost_micros: int) -> None:
    if not 0 <= cost_micros <= COST_MICROS_MAX:
        raise InvalidInput("cost is out of range", {"field": "cost_micros"})


def _debit(
    live: Account,
    command: ReportUsage,
    context: Context,
    held: int,
    extra_metadata: dict[str, str],
) -> Transition:
    """Charge a usage event with the carry rule: the entry, the event record, the reply."""
    cost_micros = command.cost_micros
    debit, carried_micros = split_micros(live.unbilled_micros, cost_micros)
    balance = live.balance_cents - debit
    entry = LedgerEntry(
        transaction_id=context.transaction_id,
        user_id=live.user_id,
        entry_type=EntryType.USAGE,
        amount=-debit,
        balance_after=balance,
        created_at_ms=context.now_ms,
        source_key=command.event_id,
        metadata={**command.metadata, **extra_metadata, "cost_micros": cost_micros},
    )
    updated = replace(
        live,
        balance_cents=balance,
        held_cents=held,
        unbilled_micros=carried_micros,
        lifetime_used_cents=live.lifetime_used_cents + debit,
        seq=live.seq + 1,
        updated_at_ms=context.now_ms,
    )
    reply = UsageResult(
        event_id=command.event_id,
        user_id=live.user_id,
        transaction_id=context.transaction_id,
        cost_cents=debit,
        cost_micros=cost_micros,
        balance_cents=balance,
        held_cents=held,
    )
    event = UsageEventRecord(
        event_id=command.event_id,
        user_id=live.user_id,
        fingerprint=command.fingerprint,
        occurred_at_ms=command.occurred_at_ms,
        metric=command.metric,
        agent_id=command.agent_id,
        result=reply,
    )
    updated, refill = refill_if_low(updated)
    return Transition(updated, (entry, event, *refill), reply, (event,))


# --- reservations ---------------------------------------------------------------------------


def _reservation(command: CommitReservation | ReleaseReservation, context: Context
                 ) -> Reservation:
    reservation = context.reservation
    if reservation is None or reservation.user_id != command.user_id:
        raise NotFound(f"no reservation {command.reservation_id!r}",
                       {"reservation_id": command.reservation_id})
    return reservation


def _reserve(account: Account | None, command: Reserve, context: Context) -> Transition:
    prior = context.reservation
    if prior is not None:
        if prior.fingerprint != command.fingerprint:
            raise IdempotencyConflict(command.reservation_id)
        raise DuplicateEvent(command.reservation_id, prior.to_dict())
    live = live_account(account, command.user_id)
    if not 1 <= command.ttl_s <= RESERVATION_TTL_S_MAX:
        raise InvalidInput(f"ttl_seconds must be between 1 and {RESERVATION_TTL_S_MAX}",
                           {"field": "ttl_seconds"})
    if live.balance_cents - live.held_cents - command.amount_cents < -live.overdraft_limit_cents:
        raise InsufficientCredits(
            balance_cents=live.balance_cents,
            available_cents=live.available,
            required_cents=command.amount_cents,
        )
    reservation = Reservation(
        reservation_id=command.reservation_id,
        user_id=live.user_id,
        amount_cents=command.amount_cents,
        created_at_ms=context.now_ms,
        expires_at_ms=context.now_ms + command.ttl_s * 1000,
        fingerprint=command.fingerprint,
        metadata=command.metadata,
    )
    updated = replace(live, held_cents=live.held_cents + command.amount_cents,
                      updated_at_ms=context.now_ms)
    reply = ReservationHeld(reservation, updated.balance_cents, updated.held_cents)
    return Transition(updated, (reservation,), reply, (reservation,))


def _commit_reservation(
    account: Account | None, command: CommitReservation, context: Context
) -> Transition:
    reservation = _reservation(command, context)
    if reservation.status is ReservationStatus.COMMITTED:
        if reservation.commit_fingerprint != command.usage.fingerprint:
            raise IdempotencyConflict(command.reservation_id)
        assert reservation.commit is not None
        original = ReservationCommitted(reservation.reservation_id, reservation.commit,
                                        reservation.released_cents, False)
        raise DuplicateEvent(command.reservation_id, original.to_dict())
    if reservation.status is ReservationStatus.RELEASED:
        raise ReservationClosed(f"reservation {command.reservation_id!r} was released",
                                reservation.to_dict())
    if reservation.status is ReservationStatus.EXPIRED or (
        context.now_ms >= reservation.expires_at_ms
    ):
        raise ReservationExpired(f"reservation {command.reservation_id!r} expired",
                                 reservation.to_dict())
    usage = command.usage
    if context.prior is not None:
        # The commit's event id was used by another usage event.
        raise IdempotencyConflict(usage.event_id)
    live = live_account(account, usage.user_id)
    _check_cost(usage.cost_micros)
    # The service was delivered: the commit is charged even above the hold or the balance.
    transition = _debit(live, usage, context, live.held_cents - reservation.amount_cents,
                        {"reservation_id": reservation.reservation_id})
    result = transition.reply
    assert isinstance(result, UsageResult)
    released = max(reservation.amount_cents - result.cost_cents, 0)
    closed = replace(
        reservation,
        status=ReservationStatus.COMMITTED,
        closed_at_ms=context.now_ms,
        released_cents=released,
        commit=result,
        commit_fingerprint=usage.fingerprint,
    )
    reply = ReservationCommitted(reservation.reservation_id, result, released,
                                 result.cost_cents > reservation.amount_cents)
    return Transition(
        transition.account,
        (*transition.records, closed),
        reply,
        (*transition.keyed, closed),
    )


def _close_hold(
    account: Account | None,
    reservation: Reservation,
    status: ReservationStatus,
    context: Context,
) -> Transition:
    if account is None:
        raise AccountNotFound(f"no account for user {reservation.user_id}")
    updated = replace(account, held_cents=account.held_cents - reservation.amount_cents,
                      updated_at_ms=context.now_ms)
    closed = replace(reservation, status=status, closed_at_ms=context.now_ms,
                     released_cents=reservation.amount_cents)
    reply = ReservationReleased(reservation.reservation_id, reservation.user_id, status,
                                reservation.amount_cents, updated.balance_cents, updated.held_cents)
    return Transition(updated, (closed,), reply, (closed,))


def _release(
    account: Account | None, command: ReleaseReservation, context: Context
) -> Transition:
    reservation = _reservation(command, context)
    if reservation.status is ReservationStatus.RELEASED:
        raise DuplicateEvent(command.reservation_id, reservation.to_dict())
    if reservation.status is ReservationStatus.COMMITTED:
        raise ReservationClosed(f"reservation {command.reservation_id!r} was committed",
                                reservation.to_dict())
    if reservation.status is ReservationStatus.EXPIRED:
        raise ReservationExpired(f"reservation {command.reservation_id!r} expired",
                                 reservation.to_dict())
    return _close_hold(account, reservation, ReservationStatus.RELEASED, context)


def _expire(
    account: Account | None, command: ExpireReservation, context: Context
) -> Transition:
    reservation = context.reservation
    if (
        reservation is None
        or not reservation.is_open
        or context.now_ms < reservation.expires_at_ms
    ):
        # Already closed, or the timer woke early: nothing to do.
        return Transition(account, (), None)
    return _close_hold(account, reservation, ReservationStatus.EXPIRED, context)


_HANDLERS = {
    OpenAccount: _open,
    GetAccount: _get,
    CloseAccount: _close,
    AddCredits: _add_credits,
    ReportUsage: _report_usage,
    CheckBalance: _check_balance,
    SetAutoRefill: _set_auto_refill,
    Reserve: _reserve,
    CommitReservation: _commit_reservation,
    ReleaseReservation: _release,
    ExpireReservation: _expire,
    TakeBackCredits: lambda account, command, context: take_back_credits(
        account, command, context.now_ms, context.transaction_id, context.prior),
    DeclineRefill: lambda account, command, context: decline_refill(
        account, command, context.now_ms),
    SetStripeCustomer: lambda account, command, context: set_stripe_customer(
        account, command, context.now_ms),
    Subscribe: lambda account, command, context: subscriptions.subscribe(
        account, command, context.now_ms, context.transaction_id),
    GrantPeriod: lambda account, command, context: subscriptions.grant_period(
        account, command, context.now_ms, context.transaction_id, context.prior),
    CancelSubscription: lambda account, command, context: subscriptions.cancel(
        account, command, context.now_ms),
    PaymentFailed: lambda account, command, context: subscriptions.payment_failed(
        account, command, context.now_ms),
    EndSubscription: lambda account, command, context: subscriptions.end(
        account, command, context.now_ms),
    SweepSubscription: lambda account, command, context: subscriptions.sweep(
        account, command, context.now_ms, context.transaction_id, context.prior),
}
