"""`python -m bench baseline`: the same durable debit in PostgreSQL, next to the engine.

The debit is what the engine does, in one transaction with `synchronous_commit = on`: insert
the idempotency row (a repeated event id is refused by its primary key), decrement the balance
only if it covers the cost, append a ledger row with the balance after. pgbench drives it
(C client, prepared statements) so that PostgreSQL is not held back by a Python driver.
The engine runs the same number of concurrent producers in the same run. Skipped, with a
message, when no PostgreSQL server binary is installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.common import SEED, Options, write_result
from bench.engine import debit_run

ACCOUNTS = 10_000
CLIENTS = (1, 16, 64)
DURATION_S = 10
QUICK_DURATION_S = 3
PG_PORT = 55432
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/local/bin",
               "/usr/bin")
START_TIMEOUT_S = 60

SCHEMA = """
CREATE TABLE accounts (user_id bigint PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE usage_events (event_id text PRIMARY KEY, user_id bigint NOT NULL,
                           cost bigint NOT NULL);
CREATE TABLE ledger (id bigserial PRIMARY KEY, user_id bigint NOT NULL, amount bigint NOT NULL,
                     balance_after bigint NOT NULL, event_id text NOT NULL);
CREATE INDEX ledger_by_user ON ledger (user_id, id);
INSERT INTO accounts SELECT g, 1000000000 FROM generate_series(1, {accounts}) g;
"""

# One durable debit of 3 credits for a random account (or the hot one).
DEBIT_SCRIPT = """
\\set uid random(1, {accounts})
\\set salt random(1, 1000000000000)
BEGIN;
INSERT INTO usage_events (event_id, user_id, cost)
  VALUES (:client_id || '-' || :salt, :uid, 3);
UPDATE accounts SET balance = balance - 3 WHERE user_id = :uid AND balance >= 3;
INSERT INTO ledger (user_id, amount, balance_after, event_id)
  SELECT :uid, -3, balance, :client_id || '-' || :salt FROM accounts WHERE user_id = :uid;
COMMIT;
"""


def find_binary(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, run as the `postgres` user when we are
    root (the server refuses to run as root), with fsync and synchronous commit on."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pg"
        self.data.mkdir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        self._run([find_binary("initdb") or "initdb", "-D", str(self.data), "-A", "trust",
                   "-U", "bench", "--no-sync"])
        self._run([find_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-w",
                   "-t", str(START_TIMEOUT_S), "-l", str(self.data / "log"), "-o",
                   f"-p {PG_PORT} -k {self.data} -c listen_addresses=127.0.0.1 "
                   "-c fsync=on -c synchronous_commit=on -c max_connections=200 "
                   "-c shared_buffers=256MB", "start"])

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)

    def psql(self, sql: str) -> None:
        self._run(["psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "bench",
                   "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])

    def pgbench(self, script: Path, clients: int, duration_s: int) -> dict[str, float]:
        result = self._run([
            "pgbench", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "bench", "-n",
            "-M", "prepared", "-f", str(script), "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(duration_s), "postgres",
        ])
        tps = re.search(r"tps = ([0-9.]+)", result.stdout)
        latency = re.search(r"latency average = ([0-9.]+) ms", result.stdout)
        assert tps and latency, result.stdout
        return {"per_s": float(tps.group(1)), "latency_avg_ms": float(latency.group(1))}

    def stop(self) -> None:
        self._run([find_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "fast",
                   "-w", "stop"])


def run(options: Options) -> Path | None:
    if find_binary("postgres") is None or shutil.which("pgbench") is None:
        print("baseline: skipped, no PostgreSQL server binary (postgres, pgbench) installed")
        return None
    runs = 1 if options.quick else 3
    duration_s = QUICK_DURATION_S if options.quick else DURATION_S
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        postgres = Postgres(root)
        try:
            postgres.psql(SCHEMA.format(accounts=ACCOUNTS))
            many = root / "many.sql"
            many.write_text(DEBIT_SCRIPT.format(accounts=ACCOUNTS))
            hot = root / "hot.sql"
            hot.write_text(DEBIT_SCRIPT.format(accounts=1))
            os.chmod(many, 0o644)
            os.chmod(hot, 0o644)
            for run_index in range(runs):
                for clients in CLIENTS:
                    result = postgres.pgbench(many, clients, duration_s)
                    figures.setdefault(f"postgres_debits_per_s_c{clients}", []).append(
                        result["per_s"])
                hot_result = postgres.pgbench(hot, 16, duration_s)
                figures.setdefault("postgres_hot_row_debits_per_s_c16", []).append(
                    hot_result["per_s"])
                for clients in CLIENTS:
                    engine = trio.run(debit_run, root / f"e{run_index}-{clients}", ACCOUNTS,
                                      clients, max(2_000, 3_000 * clients), SEED + run_index)
                    figures.setdefault(f"engine_debits_per_s_c{clients}", []).append(
                        engine["debits_per_s"])
                engine_hot = trio.run(debit_run, root / f"h{run_index}", 1, 16, 48_000,
                                      SEED + run_index)
                figures.setdefault("engine_hot_account_debits_per_s_c16", []).append(
                    engine_hot["debits_per_s"])
                line = ", ".join(f"{name} {values[-1]:.0f}" for name, values in figures.items())
                print(f"run {run_index + 1}/{runs}: {line}", flush=True)
        finally:
            postgres.stop()
    for clients in CLIENTS:
        figures[f"engine_vs_postgres_c{clients}"] = [
            engine / pg for engine, pg in zip(figures[f"engine_debits_per_s_c{clients}"],
                                              figures[f"postgres_debits_per_s_c{clients}"],
                                              strict=True)
        ]
    figures["engine_vs_postgres_hot_row_c16"] = [
        engine / pg for engine, pg in zip(figures["engine_hot_account_debits_per_s_c16"],
                                          figures["postgres_hot_row_debits_per_s_c16"],
                                          strict=True)
    ]
    return write_result(
        options,
        "baseline",
        {"accounts": ACCOUNTS, "clients": list(CLIENTS), "duration_s": duration_s,
         "runs": runs, "postgres": "fsync=on, synchronous_commit=on, shared_buffers=256MB, "
         "pgbench -M prepared over 127.0.0.1", "seed": SEED},
        figures,
    )
