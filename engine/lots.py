"""Credit lots: every credit that enters an account is a lot with a source, a category, a
priority and maybe a time window; debits burn lots in one documented order.

Burn order (README "Credit lots"): lowest priority number first, then earliest expiry (no
expiry last), then promotional before paid, then oldest (lot ids are the ULIDs of the entries
that opened them, so they sort by creation). `Account.lots` is kept sorted in that order, so a
debit touches the first lot(s) only.

A lot is *in effect* at `now` when `effective_at <= now < expires_at`. Part of a lot may be
promised to an open reservation (`held_cents`): expiry and voids take only the rest, and the
reservation's commit burns the lots it was promised from first. Credits owed (a commit above
its hold, an overdraft, a refund of spent credits) are `Account.debt_cents`, which a new lot
pays off first.

Pure functions over tuples of frozen lots; no I/O, no clock (time is an argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec.structs import replace

from engine.errors import Conflict, InvalidInput, NotFound
from engine.ids import transaction_id_str
from engine.ledger import EntryType

PRIORITY_MIN = 0
PRIORITY_MAX = 100
PRIORITY_DEFAULT = 50
assert PRIORITY_MIN <= PRIORITY_DEFAULT <= PRIORITY_MAX
# The lot an account's balance became when lots were introduced (storage/codec.py format 2).
MIGRATED_LOT_ID = 0
MIGRATED_SOURCE = "migrated"
_NEVER = 1 << 62  # sorts a lot without expiry after every real instant


class LotCategory(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


# A subscription plan's rollover: nothing, everything, or at most this many credits.
GrantRollover = Literal["none", "all"] | int


class LotTerms(msgspec.Struct, frozen=True, gc=False):
    """What a new lot is, besides its amount. `rollover_cents` of a lot still there at
    `expires_at_ms` live on until `rollover_expires_at_ms` (a plan's capped rollover)."""

    category: LotCategory = LotCategory.PROMOTIONAL
    priority: int = PRIORITY_DEFAULT
    effective_at_ms: int | None = None
    expires_at_ms: int | None = None
    paid_usd_cents: int | None = None
    rollover_cents: int = 0
    rollover_expires_at_ms: int | None = None


PAID_FOREVER = LotTerms(LotCategory.PAID)
PROMOTIONAL_FOREVER = LotTerms(LotCategory.PROMOTIONAL)
# Defaults by the entry type that opens the lot; a type missing here (say, a grant type added
# later) opens a promotional lot that never expires. Subscription grants get their period's
# expiry from `grant_terms`; admin grants may override any attribute in the request.
LOT_DEFAULTS: Mapping[EntryType, LotTerms] = {
    EntryType.PURCHASE: PAID_FOREVER,
    EntryType.AUTO_REFILL: PAID_FOREVER,
    EntryType.SUBSCRIPTION_GRANT: PROMOTIONAL_FOREVER,
    EntryType.BONUS: PROMOTIONAL_FOREVER,
    EntryType.REFUND: PAID_FOREVER,
    EntryType.ADJUSTMENT: PAID_FOREVER,
    EntryType.REVERSAL: PAID_FOREVER,
}


def default_terms(entry_type: EntryType) -> LotTerms:
    return LOT_DEFAULTS.get(entry_type, PROMOTIONAL_FOREVER)


DAY_MS = 24 * 3600 * 1000
EXPIRES_AFTER_DAYS_MAX = 36_500
# Sources whose lots the engine makes on its own (a subscription period's grant follows its
# plan's `grant_rollover`; a reversal's lot is paid and never expires): not configurable.
_NOT_CONFIGURABLE = frozenset({EntryType.SUBSCRIPTION_GRANT, EntryType.REVERSAL})


class LotDefault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A `[lot_defaults.<entry type>]` table of the `--config` file."""

    category: LotCategory
    priority: Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = PRIORITY_DEFAULT
    expires_after_days: Annotated[int, msgspec.Meta(ge=1, le=EXPIRES_AFTER_DAYS_MAX)] | None = (
        None)


class LotRequest(msgspec.Struct, frozen=True, gc=False):
    """What a request (or a payment) says of the lot it opens; what it leaves out is the
    source's default."""

    category: LotCategory | None = None
    priority: int | None = None
    effective_at_ms: int | None = None
    expires_at_ms: int | None = None
    paid_usd_cents: int | None = None


class LotDefaults:
    """`LOT_DEFAULTS` with the configuration's tables over them, by source."""

    def __init__(self, configured: Mapping[EntryType, LotDefault] | None = None) -> None:
        self._configured = dict(configured or {})

    @classmethod
    def from_config(cls, table: Mapping[str, object] | None) -> LotDefaults:
        try:
            tables = msgspec.convert(table or {}, dict[str, LotDefault])
        except msgspec.ValidationError as error:
            raise InvalidInput(f"lot_defaults: {error}") from None
        configured: dict[EntryType, LotDefault] = {}
        for name, default in tables.items():
            try:
                source = EntryType(name)
            except ValueError:
                raise InvalidInput(f"lot_defaults: {name!r} is not an entry type") from None
            if source in _NOT_CONFIGURABLE or source not in LOT_DEFAULTS:
                raise InvalidInput(f"lot_defaults: the lots of {name!r} are not configurable")
            configured[source] = default
        return cls(configured)

    def terms(self, source: EntryType, now_ms: int, request: LotRequest | None = None
              ) -> LotTerms:
        """The lot a credit of `source` opens at `now_ms`: the request's attributes over the
        configured (or built-in) defaults."""
        configured = self._configured.get(source)
        base = default_terms(source) if configured is None else LotTerms(
            configured.category, configured.priority,
            expires_at_ms=(now_ms + configured.expires_after_days * DAY_MS
                           if configured.expires_after_days is not None else None))
        if request is None:
            return base
        given = {name: value for name, value in msgspec.structs.asdict(request).items()
                 if value is not None}
        return replace(base, **given) if given else base


class Lot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One lot. remaining = original - drawn - expired - voided (never below 0); `drawn`
    falls when a reversal gives credits back. Encoded as an array (storage/codec.py)."""

    lot_id: int
    source: str  # the entry type that opened it (a string: unknown types survive a read)
    category: LotCategory
    priority: int
    effective_at_ms: int | None
    expires_at_ms: int | None
    original_cents: int
    drawn_cents: int = 0
    expired_cents: int = 0
    voided_cents: int = 0
    held_cents: int = 0
    paid_usd_cents: int | None = None
    rollover_cents: int = 0
    rollover_expires_at_ms: int | None = None

    @property
    def remaining_cents(self) -> int:
        return self.original_cents - self.drawn_cents - self.expired_cents - self.voided_cents

    @property
    def free_cents(self) -> int:
        """Remaining and not promised to an open reservation."""
        return self.remaining_cents - self.held_cents

    def in_effect(self, now_ms: int) -> bool:
        effective, expires = self.effective_at_ms, self.expires_at_ms
        return (effective is None or effective <= now_ms) and (
            expires is None or now_ms < expires)

    def problems(self) -> list[str]:
        """What is wrong with this lot, in words (empty: sound)."""
        held, remaining = self.held_cents, self.remaining_cents
        if min(self.original_cents, self.drawn_cents, self.expired_cents, self.voided_cents,
               held, remaining) >= 0 and held <= remaining and (
                PRIORITY_MIN <= self.priority <= PRIORITY_MAX):
            return []  # the common case, without building a word
        name = transaction_id_str(self.lot_id)
        found = [f"lot {name} {label} {value} < 0" for label, value in (
            ("original", self.original_cents), ("drawn", self.drawn_cents),
            ("expired", self.expired_cents), ("voided", self.voided_cents),
            ("held", held), ("remaining", remaining)) if value < 0]
        if held > remaining:
            found.append(f"lot {name} holds {held} > remaining {remaining}")
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            found.append(f"lot {name} priority {self.priority} out of range")
        return found


def burn_key(lot: Lot) -> tuple[int, int, int, int]:
    expires = lot.expires_at_ms if lot.expires_at_ms is not None else _NEVER
    return (lot.priority, expires, lot.category is LotCategory.PAID, lot.lot_id)


Lots = tuple[Lot, ...]
# (lot id, credits): what one entry took from (or, negative, gave back to) a lot.
Draw = tuple[int, int]


class Booking(NamedTuple):
    """An entry's effect on the lots: the lots and debt after it, and its draws."""

    lots: Lots
    debt_cents: int
    draws: tuple[Draw, ...]


def _sorted(lots: list[Lot]) -> Lots:
    """Lots in burn order, emptied ones (nothing left, nothing promised) dropped."""
    return tuple(sorted((lot for lot in lots if lot.remaining_cents or lot.held_cents),
                        key=burn_key))


def validate_terms(terms: LotTerms, now_ms: int) -> LotTerms:
    """Terms an operator asked for: a priority in range and an expiry in the future, after
    the lot takes effect."""
    if type(terms.priority) is not int or not PRIORITY_MIN <= terms.priority <= PRIORITY_MAX:
        raise InvalidInput(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}",
                           {"field": "priority"})
    expires = terms.expires_at_ms
    if expires is not None and expires <= now_ms:
        raise InvalidInput("expires_at must be in the future", {"field": "expires_at"})
    if expires is not None and terms.effective_at_ms is not None and (
            expires <= terms.effective_at_ms):
        raise InvalidInput("expires_at must be after effective_at", {"field": "expires_at"})
    return terms


def grant_terms(rollover: GrantRollover, period_start_ms: int, period_end_ms: int) -> LotTerms:
    """A subscription period's grant: promotional, expiring at the period's end unless the
    plan rolls it over; a capped rollover keeps at most that many credits one more period."""
    base = default_terms(EntryType.SUBSCRIPTION_GRANT)
    if rollover == "all":
        return base
    ending = replace(base, expires_at_ms=period_end_ms)
    if rollover in {"none", 0}:
        return ending
    assert isinstance(rollover, int) and rollover > 0
    return replace(ending, rollover_cents=rollover,
                   rollover_expires_at_ms=period_end_ms + (period_end_ms - period_start_ms))


# --- what an entry does to the lots ---------------------------------------------------------


def open_lot(lots: Lots, debt_cents: int, amount_cents: int, *, lot_id: int, source: str,
             terms: LotTerms) -> Booking:
    """A credit of `amount_cents`: a new lot, which pays off any debt first (a draw of the
    entry on its own lot)."""
    paid_off = min(debt_cents, amount_cents)
    lot = Lot(lot_id, source, terms.category, terms.priority, terms.effective_at_ms,
              terms.expires_at_ms, amount_cents, drawn_cents=paid_off,
              paid_usd_cents=terms.paid_usd_cents, rollover_cents=terms.rollover_cents,
              rollover_expires_at_ms=terms.rollover_expires_at_ms)
    draws = ((lot_id, paid_off),) if paid_off else ()
    return Booking(_sorted([*lots, lot]), debt_cents - paid_off, draws)


def burn(lots: Lots, debt_cents: int, amount_cents: int, now_ms: int,
         first: tuple[Draw, ...] = ()) -> Booking:
    """A debit of `amount_cents`: from the lots `first` names (up to each amount, in or out
    of effect: a commit's hold, a refund's purchase), then the free part of the lots in
    effect in burn order; what they cannot pay becomes debt."""
    need = amount_cents
    draws: list[Draw] = []
    updated = list(lots)
    emptied = False
    if first:
        wanted = dict(first)
        for index, lot in enumerate(updated):
            take = min(need, wanted.get(lot.lot_id, 0), lot.free_cents)
            if take > 0:
                updated[index] = drawn = replace(lot, drawn_cents=lot.drawn_cents + take)
                draws.append((lot.lot_id, take))
                need -= take
                emptied |= not (drawn.remaining_cents or drawn.held_cents)
    for index, lot in enumerate(updated):
        if need == 0:
            break
        take = min(need, lot.free_cents)
        if take > 0 and lot.in_effect(now_ms):
            updated[index] = drawn = replace(lot, drawn_cents=lot.drawn_cents + take)
            draws.append((lot.lot_id, take))
            need -= take
            emptied |= not (drawn.remaining_cents or drawn.held_cents)
    if not draws:
        return Booking(lots, debt_cents + need, ())
    if first:  # a lot named first may have paid again in the burn order: one draw per lot
        merged: dict[int, int] = {}
        for lot_id, cents in draws:
            merged[lot_id] = merged.get(lot_id, 0) + cents
        draws = list(merged.items())
    # Drawing never changes the burn order; only emptied lots leave.
    kept = (tuple(lot for lot in updated if lot.remaining_cents or lot.held_cents) if emptied
            else tuple(updated))
    return Booking(kept, debt_cents + need, tuple(draws))


def hold(lots: Lots, amount_cents: int, now_ms: int) -> tuple[Lots, tuple[Draw, ...]]:
    """Promise up to `amount_cents` of free credits in effect to a reservation, in burn
    order; returns the lots and what was promised from each."""
    need = amount_cents
    promised: list[Draw] = []
    updated = list(lots)
    for index, lot in enumerate(updated):
        if need == 0:
            break
        take = min(need, lot.free_cents)
        if take > 0 and lot.in_effect(now_ms):
            updated[index] = replace(lot, held_cents=lot.held_cents + take)
            promised.append((lot.lot_id, take))
            need -= take
    return (tuple(updated), tuple(promised)) if promised else (lots, ())


def unhold(lots: Lots, promised: tuple[Draw, ...]) -> Lots:
    """A reservation ended: its promise no longer protects those credits."""
    if not promised:
        return lots
    released = dict(promised)
    return _sorted([replace(lot, held_cents=lot.held_cents - min(lot.held_cents, released[
        lot.lot_id])) if lot.lot_id in released else lot for lot in lots])


def expire_due(lots: Lots, debt_cents: int, now_ms: int) -> Booking:
    """Expire, at `now_ms`, the free remainder of each lot whose expiry has come (a capped
    rollover keeps its cap for one more period, once)."""
    draws: list[Draw] = []
    updated: list[Lot] = []
    for lot in lots:
        free = lot.free_cents
        if lot.expires_at_ms is None or lot.expires_at_ms > now_ms or free <= 0:
            updated.append(lot)
            continue
        kept = min(free, lot.rollover_cents)
        changed = lot
        if kept:
            changed = replace(changed, expires_at_ms=lot.rollover_expires_at_ms,
                              rollover_cents=0, rollover_expires_at_ms=None)
        if free - kept:
            draws.append((lot.lot_id, free - kept))
            changed = replace(changed, expired_cents=lot.expired_cents + free - kept)
        updated.append(changed)
    return Booking(_sorted(updated), debt_cents, tuple(draws)) if draws or updated != list(
        lots) else Booking(lots, debt_cents, ())


def void(lots: Lots, debt_cents: int, lot_id: int) -> Booking:
    """Void what is left of a lot (but not what an open reservation was promised)."""
    lot = find(lots, lot_id)
    if lot.free_cents <= 0:
        reason = "was voided" if lot.voided_cents else "has nothing left to void"
        raise Conflict(f"lot {transaction_id_str(lot_id)} {reason}",
                       {"lot_id": transaction_id_str(lot_id), "reason": "nothing_to_void"})
    voided = replace(lot, voided_cents=lot.voided_cents + lot.free_cents)
    return Booking(_sorted([voided if each is lot else each for each in lots]), debt_cents,
                   ((lot_id, lot.free_cents),))


def give_back(lots: Lots, debt_cents: int, draws: tuple[Draw, ...], *, debt_part_cents: int,
              lot_id: int, source: str, terms: LotTerms) -> Booking:
    """Undo a debit: each draw goes back to its lot (negative draws), the part that became
    debt cancels debt. What cannot go back — a lot emptied and dropped since, debt paid off
    since — opens one new lot `lot_id` on `terms`."""
    by_id = {lot.lot_id: lot for lot in lots}
    returned: list[Draw] = []
    orphaned = 0
    for drawn_id, cents in draws:
        lot = by_id.get(drawn_id)
        if lot is None:
            orphaned += cents
            continue
        by_id[drawn_id] = replace(lot, drawn_cents=lot.drawn_cents - cents)
        returned.append((drawn_id, -cents))
    cancelled = min(debt_cents, debt_part_cents)
    orphaned += debt_part_cents - cancelled
    booking = Booking(_sorted(list(by_id.values())), debt_cents - cancelled, tuple(returned))
    if not orphaned:
        return booking
    opened = open_lot(booking.lots, booking.debt_cents, orphaned, lot_id=lot_id, source=source,
                      terms=terms)
    return Booking(opened.lots, opened.debt_cents, (*booking.draws, *opened.draws))


def balance_as_lots(balance_cents: int) -> tuple[Lots, int]:
    """A balance from before lots (storage/codec.py format 2) as lots and debt: one paid lot
    without expiry, or what is owed."""
    if balance_cents <= 0:
        return (), -balance_cents
    return (Lot(MIGRATED_LOT_ID, MIGRATED_SOURCE, LotCategory.PAID, PRIORITY_DEFAULT, None,
                None, balance_cents),), 0


# --- reading --------------------------------------------------------------------------------


def find(lots: Lots, lot_id: int) -> Lot:
    for lot in lots:
        if lot.lot_id == lot_id:
            return lot
    raise NotFound(f"no lot {transaction_id_str(lot_id)} with credits left on this account",
                   {"lot_id": transaction_id_str(lot_id)})


def unspendable_cents(lots: Lots, now_ms: int) -> int:
    """Free credits of lots not in effect at `now_ms` (not yet, or expired and waiting for
    the expiry entry): counted in the balance, not in what may be spent."""
    total = 0
    for lot in lots:  # on every debit: the checks of `in_effect`, inline
        effective, expires = lot.effective_at_ms, lot.expires_at_ms
        if (effective is not None and effective > now_ms) or (
                expires is not None and expires <= now_ms):
            total += lot.free_cents
    return total


def next_expiry_ms(lots: Lots) -> int | None:
    """When the next expiry entry is due: the earliest expiry of a lot with free credits (a
    lot wholly promised to reservations waits until they end)."""
    due: int | None = None
    for lot in lots:
        expires = lot.expires_at_ms
        if expires is not None and (due is None or expires < due) and lot.free_cents > 0:
            due = expires
    return due


def may_expire_sooner(before: Lots, after: Lots) -> bool:
    """Whether `after` may have an expiry due sooner than `before`: false when every lot is
    the same one with no more free credits (a debit or a hold, the common case), so the
    caller skips `next_expiry_ms` then."""
    if len(before) != len(after):
        return True
    for old, new in zip(before, after, strict=True):
        if new is not old and (new.lot_id != old.lot_id or new.free_cents > old.free_cents
                               or new.expires_at_ms != old.expires_at_ms):
            return True
    return False


class LotSummary(NamedTuple):
    """What the balance reply says about the lots at one instant."""

    paid_cents: int
    promotional_cents: int
    next_expiry_ms: int | None
    next_expiry_cents: int


def summarize(lots: Lots, now_ms: int) -> LotSummary:
    """Remaining credits by category (of lots in effect, and what expired lots keep for open
    reservations), and the next expiry of a lot in effect (its time and amount)."""
    paid = promotional = 0
    soonest: int | None = None
    soonest_cents = 0
    for lot in lots:
        # A lot out of effect counts only what it keeps for open reservations.
        counted = lot.remaining_cents if lot.in_effect(now_ms) else lot.held_cents
        if not counted:
            continue
        if lot.category is LotCategory.PAID:
            paid += counted
        else:
            promotional += counted
        expires = lot.expires_at_ms
        if expires is not None and lot.in_effect(now_ms):
            if soonest is None or expires < soonest:
                soonest, soonest_cents = expires, lot.remaining_cents
            elif expires == soonest:
                soonest_cents += lot.remaining_cents
    return LotSummary(paid, promotional, soonest, soonest_cents)


def lots_problems(lots: Lots, balance_cents: int, debt_cents: int, held_cents: int
                  ) -> list[str]:
    """The lot invariants of one account state (README "Ledger invariants" 5 and 6) that
    every transition checks; words are built only when something is wrong."""
    remaining = promised = 0
    sound = True
    for lot in lots:
        left, held = lot.remaining_cents, lot.held_cents
        remaining += left
        promised += held
        sound = sound and 0 <= held <= left and min(
            lot.drawn_cents, lot.expired_cents, lot.voided_cents) >= 0 and (
            PRIORITY_MIN <= lot.priority <= PRIORITY_MAX)
    if sound and debt_cents >= 0 and promised <= held_cents and (
            balance_cents == remaining - debt_cents):
        return []
    found = [problem for lot in lots for problem in lot.problems()]
    if debt_cents < 0:
        found.append(f"debt {debt_cents} < 0")
    if balance_cents != remaining - debt_cents:
        found.append(f"invariant 5: balance {balance_cents} != remaining in lots {remaining} "
                     f"- debt {debt_cents}")
    if promised > held_cents:
        found.append(f"invariant 5: lots promise {promised} > held {held_cents}")
    return found


def order_problems(lots: Lots) -> list[str]:
    """The lots out of burn order (every change keeps the order: `zbilling verify` checks
    it, the transitions do not pay for it)."""
    keys = [burn_key(lot) for lot in lots]
    return [f"invariant 5: lot {transaction_id_str(lot.lot_id)} is out of burn order"
            for lot, key, previous in zip(lots[1:], keys[1:], keys[:-1], strict=True)
            if key <= previous]
