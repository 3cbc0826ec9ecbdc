"""A data directory written by the release before credit lots (tests/fixtures/make_format2_data.py
says how) opens with each balance as one paid lot without expiry, or as debt."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import MIGRATED_LOT_ID, LotCategory
from engine.metering import UsageRequest

FIXTURE = Path(__file__).parent / "fixtures" / "format2-data.tar.gz"
ALICE = UserId(uuid.UUID(int=0xA11CE))
BOB = UserId(uuid.UUID(int=0xB0B))
THEN_MS = 1_780_000_000_000  # the clock the fixture was made with


def unpack(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(data_dir, filter="data")
    return data_dir


def test_a_format_2_directory_opens_with_lots_and_keeps_working(tmp_path):
    data_dir = unpack(tmp_path)

    async def main() -> None:
        async with open_billing(data_dir, wall_clock_ms=lambda: THEN_MS + 60_000) as billing:
            assert (await billing.verify()).ok
            alice = await billing.get_account(ALICE)
            (lot,) = alice.lots
            assert (lot.lot_id, lot.category, lot.remaining_cents, lot.expires_at_ms) == (
                MIGRATED_LOT_ID, LotCategory.PAID, 750, None)
            assert (alice.balance_cents, alice.held_cents, alice.debt_cents) == (750, 100, 0)
            bob = await billing.get_account(BOB)
            assert (bob.balance_cents, bob.lots, bob.debt_cents) == (-30, (), 30)
            # The old hold commits from the migrated lot; the old usage reverses once.
            committed = await billing.commit_reservation("old-hold", cost_cents=40)
            assert committed.usage.balance_cents == 710
            reversed_ = await billing.lots.reverse_usage("old-usage-1")
            assert (reversed_.entry_type, reversed_.amount_cents) == (EntryType.REVERSAL, 250)
            # A new lot pays Bob's debt off first.
            await billing.add_credits(BOB, 100)
            bob = await billing.get_account(BOB)
            assert (bob.debt_cents, [lot.remaining_cents for lot in bob.lots]) == (0, [70])
            await billing.report_usage(UsageRequest(event_id="new-usage", user_id=ALICE,
                                                    cost_cents=5))
            assert (await billing.verify()).ok

        # And once more after a restart, from the new formats.
        async with open_billing(data_dir, wall_clock_ms=lambda: THEN_MS + 120_000) as billing:
            report = await billing.verify()
            assert report.ok, report.violations
            assert (await billing.get_account(ALICE)).balance_cents == 955

    trio.run(main)
