"""SIGKILL a real engine process mid-stream: every acknowledged debit survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.runtime import open_billing
from engine.errors import DuplicateEvent
from engine.metering import UsageRequest
from storage.lmdb_store import LmdbStore
from storage.verify import verify_store
from tests.conftest import new_user

ROOT = Path(__file__).resolve().parents[1]
CHILD_WAIT_S = 60


def run_until_acks(data_dir: Path, user: str, acks_before_kill: int, *options: str
                   ) -> list[tuple[str, int]]:
    """Start the child, read acknowledgements, SIGKILL it after `acks_before_kill` of them."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", str(data_dir), user, "200000", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[str, int]] = []
    deadline = time.monotonic() + CHILD_WAIT_S
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ACK "):
                _, event_id, balance, _ = line.split()
                acked.append((event_id, int(balance)))
                if len(acked) >= acks_before_kill:
                    break
            assert time.monotonic() < deadline, "child too slow"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=CHILD_WAIT_S)
    assert child.returncode == -signal.SIGKILL
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("acks_before_kill", [1, 300, 3000])
async def test_sigkill_loses_no_acknowledged_debit(tmp_path, acks_before_kill):
    data_dir = tmp_path / "data"
    user = new_user()
    acked = run_until_acks(data_dir, str(user), acks_before_kill)
    assert len(acked) >= acks_before_kill

    store = LmdbStore(data_dir)
    try:
        for event_id, _ in acked:
            outcome = store.get_outcome("usage", event_id)
            assert outcome is not None, f"acknowledged {event_id} lost"
        report = verify_store(store)
        assert report.ok, report.violations
        account = store.get_account(user)
        assert account is not None
        # The balance reflects at least every acknowledged debit (more may have committed
        # without their acknowledgement reaching us before the kill).
        assert account.balance_cents <= min(balance for _, balance in acked)
        assert account.seq - 1 >= len(acked)
    finally:
        store.close()

    async with open_billing(data_dir) as billing:
        event_id, balance = acked[-1]
        with pytest.raises(DuplicateEvent) as duplicate:
            await billing.report_usage(
                UsageRequest(event_id=event_id, user_id=user, cost_micros=1_500_000)
            )
        assert duplicate.value.original["balance_cents"] == balance


@pytest.mark.slow
async def test_repeated_sigkills_during_appends_and_checkpoints_lose_and_double_nothing(
        tmp_path):
    """Five kills of one data directory, 16 accounts, a checkpoint every 10 ms: each kill
    lands in an append, a checkpoint or between; every restart replays the log."""
    data_dir = tmp_path / "data"
    user = new_user()
    acked: list[tuple[str, int]] = []
    for round_index, acks_before_kill in enumerate((40, 700, 150, 1500, 400)):
        acked += run_until_acks(data_dir, str(user), acks_before_kill, f"r{round_index}",
                                "16", "0.01")
    store = LmdbStore(data_dir)
    try:
        report = verify_store(store)
        assert report.ok, report.violations
        for event_id, _ in acked:
            assert store.get_outcome("usage", event_id) is not None, f"{event_id} lost"
        # Each usage event has exactly one ledger entry, and no entry lacks its event.
        debits = [entry for account in store.iter_accounts()
                  for entry in store.iter_user_entries(account.user_id)
                  if entry.entry_type.value == "usage"]
        events = [outcome for outcome in store.iter_outcomes() if outcome.scope == "usage"]
        assert len(debits) == len({entry.source_key for entry in debits}) == len(events)
        assert store.log_report()[2] == 0  # start-up replayed the log into the indexes
    finally:
        store.close()


@pytest.mark.slow
def test_a_full_disk_stops_the_engine_before_any_unlogged_acknowledgement(tmp_path):
    """The log append fails for real (the file size limit, as a full disk): the debit that
    met it is refused, the engine takes no more writes, and after a restart every
    acknowledged debit is there and the refused one is not."""
    data_dir = tmp_path / "data"
    user = new_user()
    child = subprocess.run(
        [sys.executable, "-m", "tests.disk_full_child", str(data_dir), str(user), "400000"],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_WAIT_S, check=False)
    lines = child.stdout.splitlines()
    acked = [line.split()[1] for line in lines if line.startswith("ACK ")]
    stopped = [line.split() for line in lines if line.startswith("STOPPED ")]
    assert acked, child.stderr
    assert stopped == [["STOPPED", f"full-{len(acked)}", "False"]], child.stdout[-500:]
    assert lines[-1] == "REFUSED"
    store = LmdbStore(data_dir)
    try:
        assert all(store.get_outcome("usage", event_id) is not None for event_id in acked)
        assert store.get_outcome("usage", f"full-{len(acked)}") is None
        assert store.get_account(user).balance_cents == 10**9 - len(acked)
        assert verify_store(store).ok
    finally:
        store.close()
