"""Account state: one immutable value per account, replaced by each transition."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.caps import Controls, holds_problems
from engine.errors import AccountClosed, AccountNotFound, InvalidInput, require
from engine.ids import UserId
from engine.lots import Lots, lots_problems, unspendable_cents
from engine.money import AMOUNT_CENTS_MAX, MICROS_PER_CREDIT, require_int
from engine.subscription_state import Subscription

AUTO_REFILL_TRIGGER_CENTS_MIN = 100
AUTO_REFILL_TRIGGER_CENTS_DEFAULT = 500
AUTO_REFILL_AMOUNT_CENTS_MIN = 500
AUTO_REFILL_AMOUNT_CENTS_DEFAULT = 2500
AUTO_REFILL_AMOUNT_CENTS_MAX = 100_000
PLAN_DEFAULT = "free"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"


class AutoRefillSettings(msgspec.Struct, frozen=True, gc=False):
    enabled: bool = False
    trigger_below_cents: int = AUTO_REFILL_TRIGGER_CENTS_DEFAULT
    refill_amount_cents: int = AUTO_REFILL_AMOUNT_CENTS_DEFAULT

    @staticmethod
    def validated(
        enabled: object, trigger_below_cents: object, refill_amount_cents: object
    ) -> AutoRefillSettings:
        if type(enabled) is not bool:
            raise InvalidInput("enabled must be a boolean", {"field": "enabled"})
        return AutoRefillSettings(
            enabled=enabled,
            trigger_below_cents=require_int(
                "trigger_below_cents", trigger_below_cents,
                AUTO_REFILL_TRIGGER_CENTS_MIN, AMOUNT_CENTS_MAX,
            ),
            refill_amount_cents=require_int(
                "refill_amount_cents", refill_amount_cents,
                AUTO_REFILL_AMOUNT_CENTS_MIN, AUTO_REFILL_AMOUNT_CENTS_MAX,
            ),
        )


class Account(msgspec.Struct, frozen=True, gc=False):
    """`*_cents` fields are credits (1 credit = US$0.01); `seq` counts ledger entries."""

    user_id: UserId
    created_at_ms: int
    updated_at_ms: int
    balance_cents: int = 0
    unbilled_micros: int = 0
    held_cents: int = 0
    lifetime_purchased_cents: int = 0
    lifetime_granted_cents: int = 0
    lifetime_used_cents: int = 0
    plan: str = PLAN_DEFAULT
    auto_refill: AutoRefillSettings = msgspec.field(default_factory=AutoRefillSettings)
    stripe_customer_id: str | None = None
    lago_customer_id: str | None = None
    overdraft_limit_cents: int = 0
    status: AccountStatus = AccountStatus.ACTIVE
    seq: int = 0
    # Auto-refill: refills raised so far (the current one's number), whether one is in flight,
    # its declines so far, and the last decline (kept when auto-refill was switched off).
    refill_count: int = 0
    refill_pending: bool = False
    refill_declines: int = 0
    auto_refill_error: str | None = None
    subscription: Subscription | None = None
    # The credits behind the balance, in burn order (engine/lots.py), and credits owed:
    # balance = remaining of all lots - debt.
    lots: Lots = ()
    debt_cents: int = 0
    # Spend caps, their time zone and per-scope holds (engine/caps.py); None: never set.
    controls: Controls | None = None

    def available_cents(self, now_ms: int) -> int:
        """Credits that may be spent at `now_ms` without an overdraft: the balance less open
        holds and less lots not in effect."""
        available = self.balance_cents - self.held_cents
        return available - unspendable_cents(self.lots, now_ms) if self.lots else available

    def can_afford_micros(self, cost_micros: int, now_ms: int) -> bool:
        """Unbilled fractions count against the balance before they become a whole credit."""
        headroom = self.available_cents(now_ms) + self.overdraft_limit_cents
        return headroom * MICROS_PER_CREDIT - self.unbilled_micros >= cost_micros

    def check_invariants(self) -> None:
        """Stop rather than store a state no rule can produce."""
        # Every transition passes here: one test, the named checks only when it fails.
        if not (0 <= self.unbilled_micros < MICROS_PER_CREDIT and self.held_cents >= 0
                and self.overdraft_limit_cents >= 0 and self.seq >= 0):
            require(0 <= self.unbilled_micros < MICROS_PER_CREDIT,
                    "unbilled_micros %d out of range", self.unbilled_micros)
            require(self.held_cents >= 0, "held %d is negative", self.held_cents)
            require(self.overdraft_limit_cents >= 0, "overdraft_limit %d < 0",
                    self.overdraft_limit_cents)
            require(self.seq >= 0, "seq %d < 0", self.seq)
        problems = lots_problems(self.lots, self.balance_cents, self.debt_cents,
                                 self.held_cents)
        require(not problems, "lots: %s", problems)
        if self.controls is not None and self.controls.holds:
            held = holds_problems(self.controls)
            require(not held, "controls: %s", held)


class AccountAt(msgspec.Struct, frozen=True, gc=False):
    """An account with the instant it was read at (which lots are in effect depends on it)."""

    account: Account
    now_ms: int


def live_account(account: Account | None, user_id: UserId) -> Account:
    """The account a command may change: it exists and is not closed."""
    if account is None:
        raise AccountNotFound(f"no account for user {user_id}", {"user_id": str(user_id)})
    if account.status is AccountStatus.CLOSED:
        raise AccountClosed(
            f"account {user_id} is closed", {"user_id": str(user_id), "reason": "account_closed"}
        )
    return account
