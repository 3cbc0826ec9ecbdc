"""`python -m bench reservations`: reserve+commit cycles against plain debits, in-process.

Goal (issue 8): a reserve+commit cycle costs at most 2x one plain `/v1/usage` debit. Both are
measured in the same run, on the same engine settings, so the ratio is what counts.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from bench.common import SEED, Options, write_result
from engine.ids import UserId
from engine.metering import UsageRequest
from engine.usage import LlmTokens

ACCOUNTS = 1_000
PRODUCERS = (16, 256)
RUN_TIME_MAX_S = 120
METRIC = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)


async def cycle_run(
    data_dir: Path, producers: int, operations: int, seed: int, reserve: bool
) -> float:
    """Operations per second: plain debits, or reserve+commit cycles when `reserve`."""
    chooser = random.Random(seed)
    users = [UserId(uuid.UUID(int=chooser.getrandbits(128))) for _ in range(ACCOUNTS)]
    async with open_billing(data_dir) as billing:
        for user in users:
            await billing.open_account(user)
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(billing.add_credits, user, 10**9)
        done = 0

        async def produce(index: int) -> None:
            nonlocal done
            pick = random.Random(seed * 1000 + index)
            for n in range(operations // producers):
                user = users[pick.randrange(ACCOUNTS)]
                key = f"p{index}-{n}"
                if reserve:
                    await billing.reserve(user, key, amount_cents=5)
                    await billing.commit_reservation(key, metric=METRIC)
                else:
                    await billing.report_usage(
                        UsageRequest(event_id=key, user_id=user, metric=METRIC)
                    )
                done += 1

        started = time.perf_counter()
        with trio.move_on_after(RUN_TIME_MAX_S):
            async with trio.open_nursery() as nursery:
                for index in range(producers):
                    nursery.start_soon(produce, index)
        return done / (time.perf_counter() - started)


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    operations = 4_000 if options.quick else 40_000
    figures: dict[str, list[float]] = {}
    for run_index in range(runs):
        seed = SEED + run_index
        for producers in PRODUCERS:
            with tempfile.TemporaryDirectory() as tmp:
                debits = trio.run(cycle_run, Path(tmp) / "d", producers, operations, seed,
                                  False)
                cycles = trio.run(cycle_run, Path(tmp) / "r", producers, operations, seed, True)
            figures.setdefault(f"inprocess_debits_per_s_p{producers}", []).append(debits)
            figures.setdefault(f"inprocess_cycles_per_s_p{producers}", []).append(cycles)
            figures.setdefault(f"inprocess_cycle_cost_ratio_p{producers}", []).append(
                debits / cycles
            )
            print(f"run {run_index + 1}/{runs}, {producers} producers: debits {debits:.0f}/s, "
                  f"reserve+commit {cycles:.0f}/s, cycle = {debits / cycles:.2f} debits",
                  flush=True)
    return write_result(
        options,
        "reservations",
        {"accounts": ACCOUNTS, "producers": list(PRODUCERS), "operations_per_run": operations,
         "runs": runs, "fsync": True, "seed": SEED, "hold_cents": 5,
         "metric": "llm_tokens claude-3-haiku 1200 in / 300 out"},
        figures,
    )
