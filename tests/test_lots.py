"""Credit lots as pure rules: burn order, expiry at the instant, rollover caps, holds across an
expiry, refunds from the purchase's own lot, reversals and voids. No trio, no disk."""

from __future__ import annotations

import uuid

import cbor2
import pytest
from msgspec.structs import replace

from engine.account import Account, AutoRefillSettings
from engine.audit import audit_account
from engine.commands import AddCredits, Context, CreditResult, ReportUsage, credits_fingerprint
from engine.deadlines import Deadline, DeadlineKind
from engine.errors import (
    Conflict,
    DuplicateEvent,
    InsufficientCredits,
    InvalidInput,
    InvariantViolation,
    NotFound,
)
from engine.expiring import EXPIRING_NOTICE_MS, NoticeExpiringLot, notice_key
from engine.expiry import ExpireLots
from engine.ids import TransactionId, UserId, transaction_id_str
from engine.ledger import EntryType, LedgerEntry
from engine.lots import (
    LOT_DEFAULTS,
    PAID_FOREVER,
    PROMOTIONAL_FOREVER,
    LotCategory,
    LotDefaults,
    LotRequest,
    LotTerms,
    burn_key,
    default_terms,
    grant_terms,
    summarize,
)
from engine.notifications import EventType, Notification
from engine.payments import RefillIntent, TakeBackCredits
from engine.reservations import CommitReservation, ReleaseReservation, Reserve
from engine.transitions import apply
from engine.undo import DebitCredits, ReverseUsage, VoidLot, reversal_fingerprint
from storage import codec

USER = UserId(uuid.UUID(int=7))
NOW = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


class Book:
    """One account driven through `apply`, with every entry it posted (for the audit)."""

    def __init__(self) -> None:
        self.account: Account | None = Account(user_id=USER, created_at_ms=NOW,
                                               updated_at_ms=NOW)
        self.entries: list[LedgerEntry] = []
        self.records: list[object] = []
        self.tid = 0

    def run(self, command: object, now_ms: int = NOW, **context: object) -> object:
        self.tid += 1
        transition = apply(self.account, command, Context(now_ms, TransactionId(self.tid),
                                                           **context))
        self.account = transition.account
        self.entries += [r for r in transition.records if isinstance(r, LedgerEntry)]
        self.records += transition.records
        assert audit_account(self.account, self.entries, self.account.held_cents) == []
        return transition.reply

    def grant(self, amount: int, entry_type: EntryType = EntryType.BONUS,
              terms: LotTerms | None = None, now_ms: int = NOW) -> int:
        """Credits a lot; returns its id (the entry's transaction id)."""
        self.run(AddCredits(USER, amount, entry_type, None,
                            credits_fingerprint(USER, amount, entry_type), lot=terms), now_ms)
        return self.tid

    def spend(self, cents: int, event_id: str, now_ms: int = NOW) -> object:
        return self.run(ReportUsage(USER, event_id, cents * 1_000_000, b"f", now_ms), now_ms)

    def remaining(self) -> dict[int, int]:
        return {lot.lot_id: lot.remaining_cents for lot in self.account.lots}

    def expiry_deadlines(self) -> list[int | None]:
        return [r.due_ms for r in self.records
                if isinstance(r, Deadline) and r.kind is DeadlineKind.LOT_EXPIRY]


def test_burn_order_is_priority_then_expiry_then_promotional_then_oldest():
    book = Book()
    paid_old = book.grant(100, EntryType.PURCHASE)
    paid_new = book.grant(100, EntryType.PURCHASE)
    promo = book.grant(100, terms=PROMOTIONAL_FOREVER)
    expiring_late = book.grant(100, terms=LotTerms(expires_at_ms=NOW + 9 * DAY_MS))
    expiring_soon = book.grant(100, terms=LotTerms(LotCategory.PAID,
                                                   expires_at_ms=NOW + DAY_MS))
    first = book.grant(100, terms=LotTerms(LotCategory.PAID, priority=10))
    order = [lot.lot_id for lot in book.account.lots]
    assert order == [first, expiring_soon, expiring_late, promo, paid_old, paid_new]
    assert order == [lot.lot_id for lot in sorted(book.account.lots, key=burn_key)]
    book.spend(150, "e1")
    # The first lot is spent and leaves; the next pays the rest.
    assert book.remaining() == {expiring_soon: 50, expiring_late: 100, promo: 100,
                                paid_old: 100, paid_new: 100}
    assert book.entries[-1].draws == ((first, 100), (expiring_soon, 50))


def test_a_lot_not_yet_in_effect_is_in_the_balance_but_not_spendable():
    book = Book()
    paid = book.grant(100, EntryType.PURCHASE)
    later = book.grant(500, terms=LotTerms(effective_at_ms=NOW + DAY_MS))
    assert book.account.balance_cents == 600
    assert book.account.available_cents(NOW) == 100
    with pytest.raises(InsufficientCredits):
        book.spend(101, "too-early")
    book.spend(150, "after", now_ms=NOW + DAY_MS)  # promotional first, once in effect
    assert book.remaining() == {later: 350, paid: 100}


def test_expiry_takes_the_remainder_at_the_instant_and_is_idempotent():
    book = Book()
    soon = book.grant(300, terms=LotTerms(expires_at_ms=NOW + DAY_MS))
    kept = book.grant(50, EntryType.PURCHASE)
    assert book.expiry_deadlines() == [NOW + DAY_MS]  # armed in the commit that made the lot
    book.spend(100, "e1")
    # One millisecond before, nothing expires; at the instant the lot is no longer spendable.
    assert book.run(ExpireLots(USER), NOW + DAY_MS - 1) is None
    assert book.account.available_cents(NOW + DAY_MS) == 50
    expiry = book.run(ExpireLots(USER), NOW + DAY_MS)
    assert (expiry.entry_type, expiry.amount, expiry.draws) == (EntryType.EXPIRY, -200,
                                                                ((soon, 200),))
    assert expiry.metadata == {"paid_cents": 0, "promotional_cents": 200}
    assert book.remaining() == {kept: 50}
    assert book.run(ExpireLots(USER), NOW + DAY_MS + 5) is None  # a repeat expires nothing
    assert sum(entry.entry_type is EntryType.EXPIRY for entry in book.entries) == 1
    assert book.expiry_deadlines()[-1] is None


def test_a_hold_placed_before_an_expiry_keeps_its_credits_until_it_ends():
    book = Book()
    expiring = book.grant(100, terms=LotTerms(expires_at_ms=NOW + 60_000))
    paid = book.grant(100, EntryType.PURCHASE)
    held = book.run(Reserve(USER, "r1", 80, 3600, b"f"))
    assert held.reservation.lots == ((expiring, 80),)
    # The lot expires while the hold is open: only the 20 nobody was promised go.
    book.run(ExpireLots(USER), NOW + 60_000)
    assert book.entries[-1].amount == -20
    assert book.remaining() == {expiring: 80, paid: 100}
    assert book.account.available_cents(NOW + 60_000) == 100
    # The commit (usage from before the expiry) is paid by the lot it was promised from.
    usage = ReportUsage(USER, "r1", 50_000_000, b"g", NOW + 30_000)
    book.run(CommitReservation("r1", usage), NOW + 70_000, reservation=held.reservation)
    assert book.entries[-1].draws == ((expiring, 50),)
    # What the commit did not use now expires (the deadline is due at once).
    assert book.expiry_deadlines()[-1] == NOW + 60_000
    book.run(ExpireLots(USER), NOW + 70_001)
    assert book.entries[-1].amount == -30
    assert book.remaining() == {paid: 100}


def test_a_commit_above_its_promise_draws_each_lot_once():
    book = Book()
    lot = book.grant(100)
    held = book.run(Reserve(USER, "r1", 30, 3600, b"f"))
    usage = ReportUsage(USER, "r1", 70_000_000, b"g", NOW)
    book.run(CommitReservation("r1", usage), reservation=held.reservation)
    assert book.entries[-1].draws == ((lot, 70),)


def test_a_released_hold_over_an_expired_lot_lets_the_rest_expire():
    book = Book()
    expiring = book.grant(100, terms=LotTerms(expires_at_ms=NOW + 60_000))
    held = book.run(Reserve(USER, "r1", 100, 3600, b"f"))
    assert book.run(ExpireLots(USER), NOW + 60_000) is None  # all of it is promised
    assert book.remaining() == {expiring: 100}
    book.run(ReleaseReservation(USER, "r1"), NOW + 61_000, reservation=held.reservation)
    book.run(ExpireLots(USER), NOW + 61_000)
    assert (book.account.balance_cents, book.account.lots) == (0, ())


def test_a_capped_rollover_keeps_the_cap_one_more_period_then_expires():
    start, end = NOW, NOW + 30 * DAY_MS
    book = Book()
    grant = book.grant(1_000, EntryType.SUBSCRIPTION_GRANT, grant_terms(300, start, end))
    book.spend(400, "e1")
    book.run(ExpireLots(USER), end)
    assert book.entries[-1].amount == -300  # 600 left, 300 roll over
    (lot,) = book.account.lots
    assert (lot.lot_id, lot.remaining_cents, lot.expires_at_ms) == (grant, 300,
                                                                    end + 30 * DAY_MS)
    assert lot.rollover_cents == 0  # only once
    book.run(ExpireLots(USER), end + 30 * DAY_MS)
    assert book.account.balance_cents == 0


@pytest.mark.parametrize(("rollover", "expires"), [("none", NOW + 10), ("all", None),
                                                   (0, NOW + 10)])
def test_grant_terms_follow_the_plan_rollover(rollover, expires):
    terms = grant_terms(rollover, NOW, NOW + 10)
    assert (terms.category, terms.expires_at_ms) == (LotCategory.PROMOTIONAL, expires)


def test_a_refund_takes_back_from_the_refunded_purchase_first_and_may_owe():
    book = Book()
    purchase = book.grant(500, EntryType.PURCHASE, replace_paid(5_00))
    bonus = book.grant(300, terms=LotTerms(priority=0))
    book.spend(100, "e1")  # from the bonus (priority 0)
    book.run(TakeBackCredits(USER, "ch_1", 500, lot_id=purchase))
    assert book.entries[-1].draws == ((purchase, 500),)
    assert book.remaining() == {bonus: 200}
    book.spend(200, "e2")
    book.run(TakeBackCredits(USER, "ch_2", 50, lot_id=purchase))
    assert (book.account.balance_cents, book.account.debt_cents) == (-50, 50)
    # A new lot pays the debt off first.
    topped = book.grant(80, EntryType.PURCHASE)
    assert book.remaining() == {topped: 30}
    assert book.entries[-1].draws == ((topped, 50),)


def replace_paid(usd_cents: int) -> LotTerms:
    return LotTerms(LotCategory.PAID, paid_usd_cents=usd_cents)


def test_a_reversal_gives_the_cost_back_to_its_lots_once():
    book = Book()
    bonus = book.grant(100, terms=LotTerms(priority=0))
    paid = book.grant(100, EntryType.PURCHASE)
    book.spend(150, "e1")
    usage = book.entries[-1]
    command = ReverseUsage(USER, "e1", usage, reversal_fingerprint(USER, "e1"))
    reply = book.run(command)
    # 50 go back to the paid lot; the bonus lot was emptied and had left the account, so its
    # 100 come back as a new lot opened by the reversal.
    reversal = book.tid
    assert (reply.amount_cents, book.remaining()) == (150, {paid: 100, reversal: 100})
    assert book.entries[-1].draws == ((paid, -50),)
    assert bonus not in book.remaining()
    assert {lot.lot_id: lot.source for lot in book.account.lots}[reversal] == "reversal"
    first = book.records[-1]
    with pytest.raises(DuplicateEvent):
        book.run(command, prior=first)


def test_void_takes_what_is_left_and_refuses_a_second_void_or_an_unknown_lot():
    book = Book()
    lot = book.grant(100)
    book.spend(30, "e1")
    reply = book.run(VoidLot(USER, lot, None, b"v"))
    assert (reply.entry_type, reply.amount_cents, book.account.balance_cents) == (
        EntryType.VOID, -70, 0)
    with pytest.raises(NotFound):
        book.run(VoidLot(USER, lot, None, b"v"))  # voided and emptied: no longer on the account
    other = book.grant(10)
    book.run(Reserve(USER, "r1", 10, 60, b"f"))
    with pytest.raises(Conflict):
        book.run(VoidLot(USER, other, None, b"v"))  # all of it is promised to a hold
    with pytest.raises(NotFound):
        book.run(VoidLot(USER, 999_999, None, b"v"))


def test_a_manual_debit_burns_in_order_within_what_may_be_spent():
    book = Book()
    book.grant(100)
    with pytest.raises(InsufficientCredits):
        book.run(DebitCredits(USER, 101, None, b"d"))
    reply = book.run(DebitCredits(USER, 60, "k1", b"d"))
    assert isinstance(reply, CreditResult) and reply.amount_cents == -60
    assert book.account.balance_cents == 40


def test_admin_terms_are_checked_against_the_clock():
    book = Book()
    with pytest.raises(InvalidInput, match="future"):
        book.grant(10, terms=LotTerms(expires_at_ms=NOW))
    with pytest.raises(InvalidInput, match="priority"):
        book.grant(10, terms=LotTerms(priority=101))
    with pytest.raises(InvalidInput, match="after effective_at"):
        book.grant(10, terms=LotTerms(effective_at_ms=NOW + 10, expires_at_ms=NOW + 5))
    assert book.account.balance_cents == 0


def test_the_summary_counts_lots_in_effect_by_category_and_the_next_expiry():
    book = Book()
    book.grant(100, EntryType.PURCHASE)
    book.grant(40, terms=LotTerms(expires_at_ms=NOW + DAY_MS))
    book.grant(2, terms=LotTerms(LotCategory.PAID, expires_at_ms=NOW + DAY_MS))
    book.grant(7, terms=LotTerms(expires_at_ms=NOW + 2 * DAY_MS))
    summary = summarize(book.account.lots, NOW)
    assert summary == (102, 47, NOW + DAY_MS, 42)


def test_an_account_breaking_the_lot_invariant_is_refused():
    broken = Account(user_id=USER, created_at_ms=1, updated_at_ms=1, balance_cents=5)
    with pytest.raises(InvariantViolation, match="invariant 5"):
        broken.check_invariants()


def test_a_format_2_account_opens_with_its_balance_as_one_paid_lot():
    """Built the way the previous release wrote it: format 2, the v2 field list."""
    user = uuid.UUID(int=9)
    subscription = ["sub_1", "pro", "active", "stripe", 6_000, 1, 2, None, None]
    fields = [user.bytes, 1, 2, 1_234, 5, 0, 1_000, 300, 66, "pro", [False, 500, 2_500], None,
              None, 0, "active", 4, 0, False, 0, None, subscription]
    assert len(fields) == len(codec.ACCOUNT_FIELDS_V2)
    account = codec.decode_account(cbor2.dumps([codec.ACCOUNT_FORMAT_V2, *fields]))
    (lot,) = account.lots
    assert (lot.category, lot.remaining_cents, lot.expires_at_ms) == (LotCategory.PAID, 1_234,
                                                                       None)
    assert account.subscription.grant_rollover == "none"
    assert codec.decode_account(codec.encode_account(account)) == account
    owing = list(fields)
    owing[3] = -40
    assert codec.decode_account(cbor2.dumps([2, *owing])).debt_cents == 40


def test_lot_defaults_by_source_and_promotional_forever_for_a_type_not_in_the_table():
    assert default_terms(EntryType.PURCHASE) == PAID_FOREVER
    assert default_terms(EntryType.AUTO_REFILL).category is LotCategory.PAID
    assert default_terms(EntryType.BONUS) == PROMOTIONAL_FOREVER
    missing = [kind for kind in EntryType if kind not in LOT_DEFAULTS]
    assert missing and {default_terms(kind) for kind in missing} == {PROMOTIONAL_FOREVER}


def test_verify_reports_lots_out_of_burn_order_and_a_lot_the_ledger_disagrees_with():
    book = Book()
    book.grant(100, EntryType.PURCHASE)
    book.grant(50, terms=LotTerms(priority=0))
    shuffled = replace(book.account, lots=book.account.lots[::-1])
    assert any("out of burn order" in problem
               for problem in audit_account(shuffled, book.entries))
    (first, second) = book.account.lots
    inflated = replace(book.account, lots=(first, replace(second, original_cents=101)),
                       balance_cents=151)
    problems = audit_account(inflated, book.entries)
    assert any("but its entry opened 100" in problem for problem in problems)


def test_configured_defaults_sit_between_the_table_and_the_request():
    defaults = LotDefaults.from_config({"purchase": {"category": "paid", "priority": 30,
                                                     "expires_after_days": 365}})
    bought = defaults.terms(EntryType.PURCHASE, NOW, LotRequest(paid_usd_cents=500))
    assert (bought.category, bought.priority, bought.expires_at_ms, bought.paid_usd_cents) == (
        LotCategory.PAID, 30, NOW + 365 * DAY_MS, 500)
    assert defaults.terms(EntryType.BONUS, NOW) == PROMOTIONAL_FOREVER  # not configured
    asked = defaults.terms(EntryType.PURCHASE, NOW, LotRequest(priority=1, expires_at_ms=None))
    assert (asked.priority, asked.expires_at_ms) == (1, NOW + 365 * DAY_MS)
    for table, message in (({"reversal": {"category": "paid"}}, "not configurable"),
                           ({"nonsense": {"category": "paid"}}, "not an entry type"),
                           ({"bonus": {"category": "paid", "priority": 101}}, "lot_defaults")):
        with pytest.raises(InvalidInput, match=message):
            LotDefaults.from_config(table)


def test_an_expiry_or_a_manual_debit_below_the_trigger_raises_one_refill():
    book = Book()
    book.account = replace(book.account, stripe_customer_id="cus_1",
                           auto_refill=AutoRefillSettings(True, 500, 2_500))
    book.grant(400, EntryType.PURCHASE)
    book.grant(300, terms=LotTerms(expires_at_ms=NOW + DAY_MS))
    book.run(DebitCredits(USER, 100, None, b"d"))  # 600 left: above the trigger
    assert not any(isinstance(record, RefillIntent) for record in book.records)
    book.run(ExpireLots(USER), NOW + DAY_MS)  # 400 left: below it
    assert [r.amount_cents for r in book.records if isinstance(r, RefillIntent)] == [2_500]
    assert book.account.refill_pending


def notices(book: Book) -> list[Deadline]:
    return [r for r in book.records
            if isinstance(r, Deadline) and r.kind is DeadlineKind.LOT_EXPIRY_NOTICE]


def expiring_events(book: Book) -> list[Notification]:
    return [r for r in book.records
            if isinstance(r, Notification) and r.event_type is EventType.CREDITS_EXPIRING]


def test_a_lot_with_an_expiry_is_announced_once_before_it_expires():
    book = Book()
    never = book.grant(100)
    lot = book.grant(300, terms=LotTerms(expires_at_ms=NOW + 10 * DAY_MS))
    assert [(n.key, n.due_ms) for n in notices(book)] == [
        (notice_key(USER, lot), NOW + 10 * DAY_MS - EXPIRING_NOTICE_MS)]  # none for `never`
    assert never != lot
    due = NOW + 10 * DAY_MS - EXPIRING_NOTICE_MS
    book.spend(50, "before-the-notice", now_ms=due - 1)
    book.run(NoticeExpiringLot(USER, lot), now_ms=due)
    (event,) = expiring_events(book)
    assert (event.event_id, event.data["remaining_cents"], event.data["expires_at_ms"]) == (
        f"evt_expiring_{transaction_id_str(lot)}_{NOW + 10 * DAY_MS}", 250, NOW + 10 * DAY_MS)
    assert notices(book)[-1].due_ms is None  # the timer is dropped in the same commit
    book.run(NoticeExpiringLot(USER, lot), now_ms=due + 1)  # a repeat announces nothing new
    assert len(expiring_events(book)) == 2 and expiring_events(book)[1].event_id == event.event_id


def test_a_lot_expiring_sooner_than_the_notice_is_announced_at_once_and_a_spent_one_never():
    book = Book()
    soon = book.grant(100, terms=LotTerms(expires_at_ms=NOW + DAY_MS))
    assert notices(book)[-1].due_ms == NOW
    spent = book.grant(40, terms=LotTerms(expires_at_ms=NOW + 2 * DAY_MS, priority=0))
    book.spend(40, "all-of-it")
    book.run(NoticeExpiringLot(USER, spent), now_ms=NOW + 1)
    assert expiring_events(book) == []
    book.run(NoticeExpiringLot(USER, soon), now_ms=NOW + 1)
    assert [event.data["lot_id"] for event in expiring_events(book)] == [transaction_id_str(soon)]
