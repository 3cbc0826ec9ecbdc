"""Promotional grants: the signup grant, the daily grant and the referral grant.

Each grant is exactly once per its key, and the key is an idempotency record written in the
same commit as the entry (`KeyRecord`), so concurrent calls and calls after a restart see it:

| grant | key (scope, key) | once per |
|---|---|---|
| signup | (`signup_grant`, user) | account |
| daily | (`daily_grant`, user `:` UTC day number) | account and UTC calendar day |
| referral | (`referral_grant`, invitee `:` side) | invitee, for each of its two sides |

A repeated grant is not an error (the original service answers `granted: false` with a
reason), so a key seen before answers `GrantOutcome(granted=False)` rather than
`DuplicateEvent`. A grant of 0 credits (switched off) records nothing, so turning it on later
grants. The signup and referral grants create the accounts they credit, as the original
does; a daily grant needs the signup grant, so it never opens an account.

The referral's two sides are two commands that `ActorSystem.apply_together` decides all or
none and queues into one group commit (one log record), so a crash keeps both or neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from engine.account import Account, live_account
from engine.commands import (
    CommandBase,
    Context,
    CreditResult,
    KeyRecord,
    Reads,
    Transition,
    _Value,
    digest,
)
from engine.export import AccountOpened
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType
from engine.lots import LotTerms
from engine.posting import post_entry

SCOPE_SIGNUP_GRANT = "signup_grant"
SCOPE_DAILY_GRANT = "daily_grant"
SCOPE_REFERRAL_GRANT = "referral_grant"
MS_PER_DAY = 86_400_000


class GrantRefusal(StrEnum):
    """Why a grant call granted nothing (the original's `reason` values, and ours)."""

    ALREADY_GRANTED = "already_granted"
    ALREADY_GRANTED_TODAY = "already_granted_today"
    DISABLED = "disabled"
    NO_SIGNUP_GRANT = "signup_grant_required"


class ReferralSide(StrEnum):
    INVITEE = "invitee"
    INVITER = "inviter"


def utc_day(epoch_ms: int) -> int:
    """Days since 1970-01-01 UTC: the daily grant's calendar day."""
    return epoch_ms // MS_PER_DAY


class SignupGrant(CommandBase):
    """`lot`: the terms of the lot the grant opens (the facade's configured defaults)."""

    user_id: UserId
    amount_cents: int
    lot: LotTerms | None = None

    def reads(self) -> Reads:
        return Reads((SCOPE_SIGNUP_GRANT, str(self.user_id)))


class DailyGrant(CommandBase):
    """`day` is `utc_day` of the caller's clock when it built the command (the key is read
    before the transition sees the time); `amounts_by_plan` the configured daily credits."""

    user_id: UserId
    day: int
    amounts_by_plan: Mapping[str, int]
    lot: LotTerms | None = None

    def reads(self) -> Reads:
        return Reads((SCOPE_DAILY_GRANT, f"{self.user_id}:{self.day}"),
                     other_keys=((SCOPE_SIGNUP_GRANT, str(self.user_id)),))


class ReferralGrant(CommandBase):
    """One side of a referral: `user_id` is credited, keyed on the invitee and the side."""

    user_id: UserId
    invitee_id: UserId
    side: ReferralSide
    amount_cents: int
    lot: LotTerms | None = None

    def reads(self) -> Reads:
        return Reads((SCOPE_REFERRAL_GRANT, f"{self.invitee_id}:{self.side.value}"))


GrantCommand = SignupGrant | DailyGrant | ReferralGrant


class GrantOutcome(_Value):
    """What a grant call did. `transaction_id` is the entry's (None when nothing granted)."""

    user_id: UserId
    granted: bool
    amount_cents: int
    balance_cents: int
    reason: GrantRefusal | None = None
    transaction_id: TransactionId | None = None


class ReferralOutcome(_Value):
    """Both sides of a referral: granted together or not at all."""

    invitee: GrantOutcome
    inviter: GrantOutcome


def _opened(account: Account | None, user_id: UserId, context: Context
            ) -> tuple[Account, tuple[AccountOpened, ...]]:
    """The live account, created (with its Lago customer) when it does not exist yet."""
    if account is not None:
        return live_account(account, user_id), ()
    created = Account(user_id=user_id, created_at_ms=context.now_ms,
                      updated_at_ms=context.now_ms)
    return created, (AccountOpened(user_id),)


def _refused(account: Account, opened: tuple[AccountOpened, ...], reason: GrantRefusal
             ) -> Transition:
    outcome = GrantOutcome(account.user_id, False, 0, account.balance_cents, reason)
    return Transition(account, opened, outcome)


def _grant(account: Account, opened: tuple[AccountOpened, ...], context: Context, *,
           entry_type: EntryType, amount_cents: int, scope: str, key: str, description: str,
           lot: LotTerms | None) -> Transition:
    """Post the grant's entry and its key record in one transition."""
    updated, entry = post_entry(account, context, entry_type, amount_cents, source_key=key,
                                description=description, terms=lot)
    result = CreditResult(account.user_id, context.transaction_id, entry_type, amount_cents,
                          updated.balance_cents)
    record = KeyRecord(scope, key, account.user_id, digest((scope, key)), result)
    outcome = GrantOutcome(account.user_id, True, amount_cents, updated.balance_cents,
                           transaction_id=context.transaction_id)
    return Transition(updated, (*opened, entry, record), outcome, (record,))


def _once(account: Account | None, command: SignupGrant | ReferralGrant, context: Context,
          *, entry_type: EntryType, scope: str, key: str, description: str) -> Transition:
    """The command's amount, once per key: the key's prior outcome refuses a repeat."""
    live, opened = _opened(account, command.user_id, context)
    if context.prior is not None:
        return _refused(live, opened, GrantRefusal.ALREADY_GRANTED)
    if command.amount_cents <= 0:
        return _refused(live, opened, GrantRefusal.DISABLED)
    return _grant(live, opened, context, entry_type=entry_type,
                  amount_cents=command.amount_cents, scope=scope, key=key,
                  description=description, lot=command.lot)


def signup_grant(account: Account | None, command: SignupGrant, context: Context
                 ) -> Transition:
    return _once(account, command, context, entry_type=EntryType.SIGNUP_GRANT,
                 scope=SCOPE_SIGNUP_GRANT, key=str(command.user_id), description="signup grant")


def daily_grant(account: Account | None, command: DailyGrant, context: Context
                ) -> Transition:
    (signup,) = context.others
    if account is None:  # no account had a signup grant: refused without opening one
        return Transition(None, (), GrantOutcome(command.user_id, False, 0, 0,
                                                 GrantRefusal.NO_SIGNUP_GRANT))
    live, opened = _opened(account, command.user_id, context)
    if context.prior is not None:
        return _refused(live, opened, GrantRefusal.ALREADY_GRANTED_TODAY)
    if signup is None:
        return _refused(live, opened, GrantRefusal.NO_SIGNUP_GRANT)
    amount = command.amounts_by_plan.get(live.plan, 0)
    if amount <= 0:
        return _refused(live, opened, GrantRefusal.DISABLED)
    return _grant(live, opened, context, entry_type=EntryType.DAILY_GRANT, amount_cents=amount,
                  scope=SCOPE_DAILY_GRANT, key=f"{command.user_id}:{command.day}",
                  description=f"daily grant ({live.plan} plan)", lot=command.lot)


def referral_grant(account: Account | None, command: ReferralGrant, context: Context
                   ) -> Transition:
    return _once(account, command, context, entry_type=EntryType.REFERRAL_GRANT,
                 scope=SCOPE_REFERRAL_GRANT, key=f"{command.invitee_id}:{command.side.value}",
                 description=f"referral grant ({command.side.value})")


HANDLERS = {
    SignupGrant: signup_grant,
    DailyGrant: daily_grant,
    ReferralGrant: referral_grant,
}
