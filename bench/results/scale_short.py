"""The scale figures of issue 19 in one short run (the full `python -m bench scale` takes longer
than the stop had left): 1,000,000 accounts with two entries each, start-up clean and after a
crash at the checkpoint's write bound, and throughput at 1,000 and 1,000,000 accounts.
Run from the repository root: `.venv/bin/python bench/results/scale_short.py`."""
import json
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engine import debit_run  # noqa: E402
from bench.scale import generate, leave_crash_tail, startup_probe  # noqa: E402

ACCOUNTS = 1_000_000
with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
    root = Path(tmp)
    generate(root / "large", ACCOUNTS, 2 * ACCOUNTS)  # 2 credits each: two probes debit 777
    clean_s, first_ms = startup_probe(root / "large")
    leave_crash_tail(root / "large", ACCOUNTS, 0)
    crash_s, _ = startup_probe(root / "large")
    print(f"start-up {clean_s:.3f} s, after a crash at the write bound {crash_s:.3f} s",
          flush=True)
    small = trio.run(debit_run, root / "t1k", 1_000, 256, 60_000, 1)
    print(f"1,000 accounts: {small['debits_per_s']:.0f}/s", flush=True)
    large = trio.run(debit_run, root / "t1m", ACCOUNTS, 256, 60_000, 1)
    print(f"1,000,000 accounts: {large['debits_per_s']:.0f}/s", flush=True)
result = {"accounts": ACCOUNTS, "startup_s": clean_s, "first_debit_s": first_ms,
          "startup_s_after_crash_at_max_lag": crash_s,
          "debits_per_s_1000_accounts": small["debits_per_s"],
          "debits_per_s_1000000_accounts": large["debits_per_s"],
          "fall": 1 - large["debits_per_s"] / small["debits_per_s"]}
Path(__file__).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
print(result)
