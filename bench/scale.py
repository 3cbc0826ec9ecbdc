"""`python -m bench scale`: memory per active account, start-up time and first-debit latency on
a large data directory (generated here), and debit throughput as the account count grows."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from bench.common import SEED, Options, write_result
from bench.engine import debit_run
from engine.account import Account
from engine.ids import TransactionId, UserId
from engine.ledger import EntryType, LedgerEntry
from storage.lmdb_store import CHECKPOINT_WRITES_MAX, LmdbStore
from storage.store import CommitBatch

ROOT = Path(__file__).resolve().parents[1]
ACTIVE_ACCOUNTS = 100_000
LARGE_ACCOUNTS = 1_000_000
LARGE_ENTRIES = 10_000_000
GENERATE_BATCH_ACCOUNTS = 20_000
THROUGHPUT_ACCOUNTS = (1_000, 10_000, 100_000, 1_000_000)
THROUGHPUT_DEBITS = 60_000
PRODUCERS = 256
MAP_SIZE_LARGE_BYTES = 16 << 30


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def user(index: int) -> UserId:
    return UserId(uuid.UUID(int=index + 1))


def generate(path: Path, accounts: int, entries: int) -> None:
    """A data directory with `accounts` accounts sharing `entries` ledger entries, written
    straight through the store in large unsynced batches (this is set-up, not the test)."""
    store = LmdbStore(path, MAP_SIZE_LARGE_BYTES, sync=False)
    per_account = max(entries // accounts, 1)
    transaction_id = 1 << 80
    try:
        for start in range(0, accounts, GENERATE_BATCH_ACCOUNTS):
            batch_accounts = []
            records = []
            for index in range(start, min(start + GENERATE_BATCH_ACCOUNTS, accounts)):
                owner = user(index)
                for step in range(per_account):
                    transaction_id += 1
                    records.append(LedgerEntry(
                        transaction_id=TransactionId(transaction_id), user_id=owner,
                        entry_type=EntryType.BONUS, amount=1, balance_after=step + 1,
                        created_at_ms=1_700_000_000_000,
                    ))
                batch_accounts.append(Account(
                    user_id=owner, created_at_ms=1, updated_at_ms=1, balance_cents=per_account,
                    seq=per_account,
                ))
            store.commit(CommitBatch(batch_accounts, records))
            while store.needs_growth():
                store.grow()
            store.checkpoint()
    finally:
        store.close()


def leave_crash_tail(path: Path, accounts: int, seed: int) -> int:
    """Commit debits' worth of writes to the log and stop without a checkpoint, as a
    SIGKILL at the checkpoint's write bound would: the next start replays all of them."""
    store = LmdbStore(path, MAP_SIZE_LARGE_BYTES)
    transaction_id = (1 << 100) + seed * 10**7
    debits = 0
    try:
        while store.log_report()[2] < CHECKPOINT_WRITES_MAX:
            records = []
            touched = []
            for _ in range(256):
                transaction_id += 1
                debits += 1
                owner = user((transaction_id * 7919) % accounts)
                records.append(LedgerEntry(
                    transaction_id=TransactionId(transaction_id), user_id=owner,
                    entry_type=EntryType.USAGE, amount=-1, balance_after=0,
                    created_at_ms=1_700_000_000_000))
                touched.append(Account(user_id=owner, created_at_ms=1, updated_at_ms=2,
                                       balance_cents=10**6, seq=debits))
            store.commit(CommitBatch(touched, records))
    finally:
        store.close()  # no checkpoint: the writes stay in the log only
    return debits


async def memory_per_active_account(data_dir: Path) -> float:
    """RSS growth per account while 100,000 accounts are held by actors at once."""
    async with open_billing(data_dir) as billing:
        users = [user(index) for index in range(ACTIVE_ACCOUNTS)]
        for start in range(0, ACTIVE_ACCOUNTS, 5_000):
            async with trio.open_nursery() as nursery:
                for owner in users[start:start + 5_000]:
                    nursery.start_soon(billing.open_account, owner)
        billing.system._evict(ACTIVE_ACCOUNTS, ignore_age=True)
        gc.collect()
        before = rss_bytes()
        for owner in users:
            await billing.get_account(owner)
        gc.collect()
        assert billing.system.active_actors == ACTIVE_ACCOUNTS
        return (rss_bytes() - before) / ACTIVE_ACCOUNTS


def startup_probe(data_dir: Path) -> tuple[float, float]:
    """Start-up and first debit, timed in a fresh process (cold interpreter, cold engine)."""
    probe = (
        "import sys, time, uuid, trio\n"
        "started = time.perf_counter()\n"
        "from actors.runtime import open_billing\n"
        "from engine.metering import UsageRequest\n"
        "async def main():\n"
        "    async with open_billing(__import__('pathlib').Path(sys.argv[1]),"
        " map_size_bytes=16 << 30) as billing:\n"
        "        ready = time.perf_counter()\n"
        "        await billing.report_usage(UsageRequest(event_id=uuid.uuid4().hex, "
        "user_id=uuid.UUID(int=777), cost_cents=1))\n"
        "        print(ready - started, time.perf_counter() - ready)\n"
        "trio.run(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(data_dir)], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"start-up probe failed: {result.stderr[-3000:]}")
    output = result.stdout.split()
    return float(output[0]), float(output[1])


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    large_accounts = LARGE_ACCOUNTS // 20 if options.quick else LARGE_ACCOUNTS
    large_entries = LARGE_ENTRIES // 20 if options.quick else LARGE_ENTRIES
    sizes = THROUGHPUT_ACCOUNTS[:2] if options.quick else THROUGHPUT_ACCOUNTS
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        generate(root / "large", large_accounts, large_entries)
        print(f"generated {large_accounts} accounts / {large_entries} entries in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        for run_index in range(runs):
            startup_s, first_debit_s = startup_probe(root / "large")
            figures.setdefault("startup_s_1m_accounts", []).append(startup_s)
            leave_crash_tail(root / "large", large_accounts, run_index)
            crash_startup_s, _ = startup_probe(root / "large")
            figures.setdefault("startup_s_1m_accounts_after_crash_at_max_lag", []).append(
                crash_startup_s)
            figures.setdefault("first_debit_ms_1m_accounts", []).append(first_debit_s * 1000)
            figures.setdefault("bytes_per_active_account", []).append(
                trio.run(memory_per_active_account, root / f"mem{run_index}"))
            for accounts in sizes:
                result = trio.run(debit_run, root / f"t{run_index}-{accounts}", accounts,
                                  PRODUCERS, THROUGHPUT_DEBITS // (2 if options.quick else 1),
                                  SEED + run_index)
                figures.setdefault(f"debits_per_s_{accounts}_accounts", []).append(
                    result["debits_per_s"])
            print(f"run {run_index + 1}/{runs}: start-up {startup_s:.3f} s "
                  f"({crash_startup_s:.3f} s replaying {CHECKPOINT_WRITES_MAX:,} writes), "
                  f"first debit "
                  f"{first_debit_s * 1000:.1f} ms, "
                  f"{figures['bytes_per_active_account'][-1]:.0f} B/active account", flush=True)
    return write_result(
        options,
        "scale",
        {"active_accounts": ACTIVE_ACCOUNTS, "large_accounts": large_accounts,
         "large_entries": large_entries, "throughput_accounts": list(sizes),
         "producers": PRODUCERS, "runs": runs, "seed": SEED,
         "note": "startup_s_1m_accounts is measured on the generated directory of "
                 "large_accounts accounts (1,000,000 in a full run)"},
        figures,
    )


