"""`python -m bench instructions`: CPU instructions per debit by thread, and what each layer of
the trio thread costs, counted by valgrind's callgrind (exact and independent of machine load,
unlike wall time on a shared 2-core machine).

A child process runs `bench.engine.debit_run` (256 producers over 1,000 accounts) twice under
callgrind, with 0 and with DEBITS debits; the difference divided by DEBITS is the cost of one
debit, per thread (trio's, and the journal's worker, which commits and checkpoints). Periodic
checkpoints are off and the shutdown one does them all, so every run does the same work. Each
variant replaces one layer by a constant answer; the instructions it saves are that layer's
cost. Skipped with a message when valgrind is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import Options, write_result

ROOT = Path(__file__).resolve().parents[1]
DEBITS = 3072
ACCOUNTS = 1000
PRODUCERS = 256
ROUNDS = 3
# Layer name → the statements of the child that remove it (empty: the full debit).
VARIANTS: dict[str, str] = {
    "full debit": "",
    "idempotency read (event id lookup)":
        "LmdbStore.get_outcome = lambda self, scope, key: None",
    "commit metrics (per-batch counters)":
        "EngineMetrics.observe_commit = lambda self, batch, seconds: None",
    "request fingerprint (msgpack + blake2b)":
        "metering.usage_fingerprint = lambda user, metric, override: bytes(16)",
    "pricing (price table lookup)":
        "metering.price_micros = lambda pricing, metric: 1_234_567",
    "checkpoint (log into LMDB)": "LmdbStore.checkpoint = lambda self: 0",
}
CHILD_SCRIPT = """
import sys, tempfile, trio
from pathlib import Path
from actors.metrics import EngineMetrics
from bench.engine import debit_run
from engine import metering
from storage.lmdb_store import LmdbStore
LmdbStore.checkpoint_due = lambda self: False
{variant}
debits, accounts, producers = (int(value) for value in sys.argv[1:4])
with tempfile.TemporaryDirectory() as tmp:
    trio.run(debit_run, Path(tmp) / "data", accounts, producers, debits, 1)
"""
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def _instructions_by_thread(valgrind: str, variant: str, debits: int, prefix: Path
                            ) -> list[int]:
    """Instructions of each thread (trio's first) of one child run."""
    subprocess.run(
        [valgrind, "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={prefix}", sys.executable, "-c",
         CHILD_SCRIPT.format(variant=variant), str(debits), str(ACCOUNTS), str(PRODUCERS)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    counts: list[int] = []
    for path in sorted(prefix.parent.glob(f"{prefix.name}-*")):
        found = _TOTALS.search(path.read_text(errors="replace"))
        counts.append(int(found.group(1)) if found else 0)
        path.unlink()
    return counts


def _per_debit(valgrind: str, variant: str, prefix: Path) -> dict[str, float]:
    idle = _instructions_by_thread(valgrind, variant, 0, prefix.with_name(prefix.name + "-idle"))
    busy = _instructions_by_thread(valgrind, variant, DEBITS,
                                   prefix.with_name(prefix.name + "-busy"))
    trio_thread = (busy[0] - idle[0]) / DEBITS
    workers = (sum(busy[1:]) - sum(idle[1:])) / DEBITS
    return {"trio_thread": trio_thread, "journal_worker": workers,
            "total": trio_thread + workers}


def _median_per_debit(valgrind: str, variant: str, prefix: Path, rounds: int
                      ) -> dict[str, float]:
    """Counts are exact, but how the producers' wake-ups fall into trio's scheduler batches
    varies a little from run to run (about ±2 %): the median of `rounds` runs."""
    runs = [_per_debit(valgrind, variant, prefix.with_name(f"{prefix.name}-{round_index}"))
            for round_index in range(rounds)]
    return {thread: statistics.median(run[thread] for run in runs) for thread in runs[0]}


def run(options: Options) -> Path | None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("instructions: valgrind is not installed; skipped")
        return None
    names = ["full debit"] if options.quick else list(VARIANTS)
    rounds = 1 if options.quick else ROUNDS
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        counted = dict(zip(names, pool.map(
            lambda index: _median_per_debit(valgrind, VARIANTS[names[index]],
                                            Path(tmp) / f"variant{index}", rounds),
            range(len(names))), strict=True))
    full = counted["full debit"]
    layers: dict[str, Any] = {
        name: {"instructions_per_debit_saved": {
            thread: full[thread] - figures[thread] for thread in full}}
        for name, figures in counted.items() if name != "full debit"
    }
    for name, figures in counted.items():
        print(f"{name}: trio thread {figures['trio_thread']:,.0f}, journal worker "
              f"{figures['journal_worker']:,.0f} instructions per debit", flush=True)
    return write_result(
        options,
        "instructions",
        {"debits": DEBITS, "accounts": ACCOUNTS, "producers": PRODUCERS, "rounds": rounds,
         "tool": "valgrind --tool=callgrind --separate-threads=yes",
         "method": "per debit = (run with DEBITS debits - run with 0) / DEBITS; a layer's "
                   "cost = full debit - the variant without it"},
        {"instructions_per_debit": [full["total"]],
         "trio_thread_instructions_per_debit": [full["trio_thread"]],
         "journal_worker_instructions_per_debit": [full["journal_worker"]]},
        {"by_thread": counted, "layers": layers},
    )
