"""`python -m bench controls`: what spend caps cost a debit, in instructions (callgrind): the
lots script (bench/lots.py, one lot per account) with no caps and with three hard caps that
apply to every debit. Goal of issue 16: within 10 %."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.common import Options, write_result
from bench.lots import ACCOUNTS, CAPS, DEBITS, PRODUCERS, instructions

CAPS_COMPARED = (0, len(CAPS))
RATIO_GOAL = 1.10


def run(options: Options) -> Path | None:
    if shutil.which("valgrind") is None:
        print("controls: valgrind is not installed; skipped")
        return None
    debits = DEBITS // 4 if options.quick else DEBITS
    per_debit: list[float] = []
    for caps in CAPS_COMPARED:
        without = instructions(1, 0, caps)
        per_debit.append((instructions(1, debits, caps) - without) / debits)
        print(f"controls: {caps} caps: {per_debit[-1]:,.0f} instructions/debit", flush=True)
    ratio = per_debit[-1] / per_debit[0]
    print(f"controls: {ratio:.3f}x with {CAPS_COMPARED[-1]} caps (goal <= {RATIO_GOAL})")
    figures = {f"instructions_per_debit_{caps}_caps": [count]
               for caps, count in zip(CAPS_COMPARED, per_debit, strict=True)}
    figures["ratio_caps_to_none"] = [ratio]
    return write_result(
        options, "controls",
        {"accounts": ACCOUNTS, "debits": debits, "producers": PRODUCERS,
         "caps_compared": list(CAPS_COMPARED), "tool": "valgrind --tool=callgrind",
         "metric": "llm_tokens claude-3-haiku 1200 in / 300 out"},
        figures,
    )
