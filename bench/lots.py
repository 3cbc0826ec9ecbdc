"""`python -m bench lots`: what credit lots cost a debit, in instructions (callgrind), with one
lot per account and with `LOTS_COMPARED` lots. Instruction counts do not drift with the other
work on a shared machine the way wall time does.

Each measurement runs the same in-process script (`python -m bench.lots ...`: open accounts,
fund each with its lots, then debit) under `valgrind --tool=callgrind` twice, with and without
the debits, so that start-up and funding cancel out: instructions per debit = (with - without)
/ debits.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from bench.common import SEED, Options, write_result
from engine.caps import CapSetting
from engine.ids import UserId
from engine.ledger import EntryType
from engine.lots import LotCategory, LotRequest
from engine.metering import UsageRequest
from engine.usage import LlmTokens

ACCOUNTS = 200
DEBITS = 2_000
PRODUCERS = 16
LOTS_COMPARED = (1, 5)
BALANCE_CENTS = 10**9
DAY_MS = 24 * 3600 * 1000
VALGRIND_TIMEOUT_S = 1800
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
# Spend caps for the controls variant: hard, on the account, none reached during the run, so
# each debit checks and counts all of them.
CAPS = tuple(CapSetting(period, BALANCE_CENTS) for period in ("day", "week", "month"))


def lot_request(index: int, now_ms: int) -> LotRequest:
    """The `index`-th lot of an account: mixed priorities, categories and expiries (all far
    enough ahead that none expires during the run)."""
    return LotRequest(LotCategory.PROMOTIONAL if index % 2 else LotCategory.PAID,
                      priority=40 + index, expires_at_ms=now_ms + (30 + index) * DAY_MS)


async def debit(data_dir: Path, lots_per_account: int, debits: int,
                caps_per_account: int = 0) -> None:
    users = [UserId(uuid.UUID(int=random.Random(SEED + i).getrandbits(128)))
             for i in range(ACCOUNTS)]
    metric = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)
    async with open_billing(data_dir) as billing:
        now_ms = billing.wall_clock_ms()
        for user in users:
            await billing.open_account(user)
            for index in range(lots_per_account):
                await billing.add_credits(user, BALANCE_CENTS // lots_per_account,
                                          entry_type=EntryType.BONUS,
                                          lot=lot_request(index, now_ms))
            if caps_per_account:
                await billing.controls.set(user, CAPS[:caps_per_account])

        async def produce(index: int) -> None:
            chooser = random.Random(SEED * 1000 + index)
            for n in range(debits // PRODUCERS):
                user = users[chooser.randrange(ACCOUNTS)]
                await billing.report_usage(UsageRequest(event_id=f"p{index}-{n}",
                                                        user_id=user, metric=metric))

        async with trio.open_nursery() as nursery:
            for index in range(PRODUCERS):
                nursery.start_soon(produce, index)


def instructions(lots_per_account: int, debits: int, caps_per_account: int = 0) -> int:
    """Instructions callgrind counts for one run of the script."""
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   sys.executable, "-m", "bench.lots", "--lots-per-account",
                   str(lots_per_account), "--debits", str(debits), "--data-dir",
                   str(Path(tmp) / "data"), "--caps-per-account", str(caps_per_account)]
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              timeout=VALGRIND_TIMEOUT_S)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind said no count: {done.stderr[-2000:]}")
    return int(found.group(1))


def run(options: Options) -> Path | None:
    if shutil.which("valgrind") is None:
        print("lots: valgrind is not installed; skipped")
        return None
    debits = DEBITS // 4 if options.quick else DEBITS
    per_debit: list[float] = []
    for lots in LOTS_COMPARED:
        without = instructions(lots, 0)
        per_debit.append((instructions(lots, debits) - without) / debits)
        print(f"lots: {lots} per account: {per_debit[-1]:,.0f} instructions/debit", flush=True)
    figures = {f"instructions_per_debit_{lots}_lots": [count]
               for lots, count in zip(LOTS_COMPARED, per_debit, strict=True)}
    figures["ratio_last_to_first"] = [per_debit[-1] / per_debit[0]]
    return write_result(
        options, "lots",
        {"accounts": ACCOUNTS, "debits": debits, "producers": PRODUCERS,
         "lots_compared": list(LOTS_COMPARED), "tool": "valgrind --tool=callgrind",
         "metric": "llm_tokens claude-3-haiku 1200 in / 300 out"},
        figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lots",
                                     description="the script callgrind runs")
    parser.add_argument("--lots-per-account", type=int, required=True)
    parser.add_argument("--debits", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--caps-per-account", type=int, default=0,
                        help=f"hard spend caps that apply to every debit (at most {len(CAPS)})")
    arguments = parser.parse_args()
    trio.run(debit, arguments.data_dir, arguments.lots_per_account, arguments.debits,
             arguments.caps_per_account)


if __name__ == "__main__":
    main()
