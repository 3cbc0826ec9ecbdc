"""`python -m bench http` and `python -m bench batch`: the engine behind real server processes.

Two servers on fresh data directories, side by side in the same run: `serve --workers 1` (the
engine and HTTP in one process) and `serve --workers N` (N = the number of cores: N HTTP
worker processes in front of one engine process), each driven by the load generator of
`bench.loadgen` from a separate process, one load at a time. `http` measures `POST /v1/usage`
on both at 1, 16 and 64 connections (`usage_*_workers1`, `usage_*_workersN` and their ratio
`workers_speedup_c*`), next to the bare `GET /health` of the one-process server, and
reserve+commit cycles at 16 (goal, issue 8: a cycle costs at most 2 debits). `batch` measures
`POST /v1/usage/batch` with 1000 events a request, in JSON and in msgpack, on both. Ratios are
taken within one run. The unsuffixed keys (`usage_rps_c64`, ...) are the one-process server's,
as in earlier results.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.common import SEED, Options, summary, terminate, write_result
from bench.loadgen import Generator, Load, Outcome

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SERVICE_KEY = "bench-service-key-0123456789"
ADMIN_KEY = "bench-admin-key-0123456789"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
CONNECTIONS = (1, 16, 64)
CYCLE_CONNECTIONS = 16
BATCH_CONNECTIONS = 4
BATCH_EVENTS = 1000
CYCLE_COST_GOAL = 2.0
WORKERS_N = os.cpu_count() or 2
SPEEDUP_GOAL_C64 = 1.7


class BenchServer:
    """`zbilling serve --dev --workers N` on a free port; stopped by the PID it started, never
    by name (its children stop with it)."""

    def __init__(self, work_dir: Path, workers: int = 1) -> None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = int(probe.getsockname()[1])
        work_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.log_path = work_dir / "server.log"
        self._log = self.log_path.open("w")  # a file, not a pipe: a full pipe would stall it
        environment = {**os.environ, "SERVICE_API_KEY": SERVICE_KEY, "ADMIN_API_KEY": ADMIN_KEY}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "serve",
             "--listen", f"{HOST}:{self.port}", "--data-dir", str(work_dir / "data"), "--dev",
             "--workers", str(workers)],
            cwd=ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            if "z-billing ready" in self.log_path.read_text() or self.workers == 1:
                try:
                    if httpx.get(f"http://{HOST}:{self.port}/ready",
                                 timeout=1).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def cpu_s(self) -> float:
        """User+system CPU seconds of the server's processes so far (Linux /proc; else NaN).
        A process restarted meanwhile would lose its share: none is, in a benchmark."""
        total = 0.0
        pending = [self.process.pid]
        try:
            while pending:
                pid = pending.pop()
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                # trio starts the children from a worker thread: look at every thread's.
                pending.extend(int(child) for path in Path(f"/proc/{pid}/task").glob("*/children")
                               for child in path.read_text().split())
        except OSError:
            return float("nan")
        return total

    def stop(self) -> int:
        terminate(self.process, STOP_TIMEOUT_S)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        code = self.stop()
        if code != 0 and kind is None:
            print(f"warning: server exited with {code}; log tail:\n"
                  f"{self.log_path.read_text()[-2000:]}", flush=True)


class Session:
    """A seeded server and a generator, and the per-load bookkeeping of errors and CPU use."""

    def __init__(self, server: BenchServer, generator: Generator, accounts: int) -> None:
        self.server = server
        self.generator = generator
        chooser = random.Random(SEED)
        self.users = tuple(str(uuid.UUID(int=chooser.getrandbits(128), version=4))
                           for _ in range(accounts))
        self.errors: dict[str, list[int]] = {}
        self.timed_out: dict[str, list[bool]] = {}
        self.generator_cpu: dict[str, list[float]] = {}
        self.server_cpu: dict[str, list[float]] = {}
        self._loads = 0
        seeded = self.load("seed", "seed", 16, accounts, START_TIMEOUT_S * 2, record=False)
        if seeded.errors or seeded.completed != accounts:
            raise RuntimeError(f"seeding failed: {seeded.statuses}")

    def load(self, name: str, kind: str, connections: int, requests: int, time_limit_s: float,
             *, record: bool = True) -> Outcome:
        self._loads += 1  # every load gets its own id prefix: ids never repeat on the server
        spec = Load(kind=kind, host=HOST, port=self.server.port, connections=connections,
                    requests=requests, time_limit_s=time_limit_s, prefix=f"l{self._loads}",
                    users=self.users, seed=SEED + self._loads, service_key=SERVICE_KEY,
                    admin_key=ADMIN_KEY, batch_events=BATCH_EVENTS)
        cpu_before = self.server.cpu_s()
        outcome = self.generator.run(spec)
        server_cpu = (self.server.cpu_s() - cpu_before) / outcome.wall_s
        if record:
            self.errors.setdefault(name, []).append(outcome.errors)
            self.timed_out.setdefault(name, []).append(outcome.timed_out)
            self.generator_cpu.setdefault(name, []).append(outcome.generator_cpu_fraction)
            self.server_cpu.setdefault(name, []).append(server_cpu)
        if outcome.errors or outcome.timed_out:
            print(f"warning: {name}: {outcome.errors} errors, statuses {outcome.statuses}, "
                  f"timed out: {outcome.timed_out}", flush=True)
        return outcome

    def bookkeeping(self) -> dict[str, Any]:
        return {
            "errors_total": sum(sum(runs) for runs in self.errors.values()),
            "errors": self.errors,
            "timed_out": self.timed_out,
            # Share of one core; a generator near 1.0 would be the bottleneck, not the server.
            "generator_cpu_fraction": self.generator_cpu,
            "generator_cpu_fraction_max": max(max(runs) for runs in self.generator_cpu.values()),
            "server_cpu_fraction": self.server_cpu,
        }


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [top / bottom if bottom else float("inf")
            for top, bottom in zip(numerators, denominators, strict=True)]


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    accounts = 200 if options.quick else 1_000
    requests = 3_000 if options.quick else 30_000
    time_limit_s = 2.0 if options.quick else 10.0
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp, \
            BenchServer(Path(tmp) / "workers1") as one, \
            BenchServer(Path(tmp) / "workersN", WORKERS_N) as many, \
            Generator() as generator:
        sessions = {"1": Session(one, generator, accounts),
                    "N": Session(many, generator, accounts)}
        for kind in ("usage", "bare", "cycle"):  # warm-up, not recorded
            sessions["1"].load(kind, kind, 16, 500, time_limit_s, record=False)
        sessions["N"].load("usage", "usage", 16, 500, time_limit_s, record=False)
        for run_index in range(runs):
            for connections in CONNECTIONS:
                # The two servers one after the other, at each load: drift hits both alike.
                for tag, session in sessions.items():
                    outcome = session.load(f"usage_c{connections}_workers{tag}", "usage",
                                           connections, requests, time_limit_s)
                    add(f"usage_rps_c{connections}_workers{tag}", outcome.per_s)
                    add(f"usage_p50_ms_c{connections}_workers{tag}", outcome.p50_ms)
                    add(f"usage_p99_ms_c{connections}_workers{tag}", outcome.p99_ms)
                bare = sessions["1"].load(f"bare_c{connections}", "bare", connections,
                                          requests, time_limit_s)
                add(f"bare_rps_c{connections}", bare.per_s)
                add(f"bare_p50_ms_c{connections}", bare.p50_ms)
                add(f"bare_p99_ms_c{connections}", bare.p99_ms)
            cycles = sessions["1"].load(f"reservation_cycles_c{CYCLE_CONNECTIONS}", "cycle",
                                        CYCLE_CONNECTIONS, requests, time_limit_s)
            add(f"reservation_cycles_per_s_c{CYCLE_CONNECTIONS}", cycles.per_s)
            add(f"reservation_cycle_p99_ms_c{CYCLE_CONNECTIONS}", cycles.p99_ms)
            print(f"run {run_index + 1}/{runs}: "
                  + ", ".join(f"usage c{c} {figures[f'usage_rps_c{c}_workers1'][-1]:.0f}/s "
                              f"(workers {WORKERS_N}: "
                              f"{figures[f'usage_rps_c{c}_workersN'][-1]:.0f}/s, bare "
                              f"{figures[f'bare_rps_c{c}'][-1]:.0f}/s)"
                              for c in CONNECTIONS)
                  + f", cycles c16 {cycles.per_s:.0f}/s", flush=True)
        bookkeeping = {tag: session.bookkeeping() for tag, session in sessions.items()}

    for connections in CONNECTIONS:  # the one-process server under the keys of earlier runs
        for measure in ("rps", "p50_ms", "p99_ms"):
            figures[f"usage_{measure}_c{connections}"] = \
                figures[f"usage_{measure}_c{connections}_workers1"]
    c16 = f"c{CYCLE_CONNECTIONS}"
    ratios = {
        **{f"workers_speedup_c{c}": _ratios(figures[f"usage_rps_c{c}_workersN"],
                                             figures[f"usage_rps_c{c}_workers1"])
           for c in CONNECTIONS},
        "usage_vs_bare_rps_c16": _ratios(figures["usage_rps_c16"], figures["bare_rps_c16"]),
        "usage_vs_bare_p99_c16": _ratios(figures["usage_p99_ms_c16"],
                                         figures["bare_p99_ms_c16"]),
        "cycle_cost_vs_usage_c16": _ratios(figures["usage_rps_c16"],
                                           figures[f"reservation_cycles_per_s_{c16}"]),
    }
    cycle_cost = summary(ratios["cycle_cost_vs_usage_c16"])["median"]
    speedup = summary(ratios["workers_speedup_c64"])["median"]
    errors = bookkeeping["1"]["errors_total"] + bookkeeping["N"]["errors_total"]
    return write_result(
        options,
        "http",
        {"accounts": accounts, "connections": list(CONNECTIONS),
         "cycle_connections": CYCLE_CONNECTIONS, "requests_per_load": requests,
         "time_limit_s_per_load": time_limit_s, "runs": runs, "seed": SEED,
         "workers_N": WORKERS_N,
         "server": "`serve --dev --workers 1` and `serve --dev --workers N`, fresh data dirs",
         "generator": "1 process, asyncio keep-alive connections, 1 request in flight each",
         "usage_metric": "llm_tokens claude-3-haiku 1200 in / 300 out", "hold_cents": 5,
         "bare_route": "GET /health"},
        figures,
        {**{name: summary(values) for name, values in ratios.items()},
         "goals": {"cycle_cost_vs_usage_c16": {"at_most": CYCLE_COST_GOAL, "median": cycle_cost,
                                               "met": cycle_cost <= CYCLE_COST_GOAL},
                   "workers_speedup_c64": {"at_least": SPEEDUP_GOAL_C64, "median": speedup,
                                           "errors": errors,
                                           "met": speedup >= SPEEDUP_GOAL_C64 and not errors}},
         "workers1": bookkeeping["1"], "workersN": bookkeeping["N"]},
    )


def run_batch(options: Options) -> Path:
    runs = 1 if options.quick else 3
    accounts = 200 if options.quick else 1_000
    batches = 12 if options.quick else 60
    time_limit_s = 10.0 if options.quick else 30.0
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            BenchServer(Path(tmp) / "workers1") as one, \
            BenchServer(Path(tmp) / "workersN", WORKERS_N) as many, \
            Generator() as generator:
        # The one-process server's keys carry no suffix, as in earlier results.
        sessions = {"": Session(one, generator, accounts),
                    "_workersN": Session(many, generator, accounts)}
        for session in sessions.values():
            for encoding in ("json", "msgpack"):  # warm-up, not recorded
                session.load(encoding, f"batch_{encoding}", BATCH_CONNECTIONS,
                             BATCH_CONNECTIONS, time_limit_s, record=False)
        for run_index in range(runs):
            for encoding in ("json", "msgpack"):
                for tag, session in sessions.items():
                    outcome = session.load(f"batch_{encoding}{tag}", f"batch_{encoding}",
                                           BATCH_CONNECTIONS, batches, time_limit_s)
                    figures.setdefault(f"events_per_s_{encoding}{tag}", []).append(
                        outcome.per_s * BATCH_EVENTS)
                    figures.setdefault(f"batch_p50_ms_{encoding}{tag}", []).append(
                        outcome.p50_ms)
                    figures.setdefault(f"batch_p99_ms_{encoding}{tag}", []).append(
                        outcome.p99_ms)
            print(f"run {run_index + 1}/{runs}: events/s json "
                  f"{figures['events_per_s_json'][-1]:.0f} (workers {WORKERS_N}: "
                  f"{figures['events_per_s_json_workersN'][-1]:.0f}), msgpack "
                  f"{figures['events_per_s_msgpack'][-1]:.0f} (workers {WORKERS_N}: "
                  f"{figures['events_per_s_msgpack_workersN'][-1]:.0f})", flush=True)
        bookkeeping = {tag or "workers1": session.bookkeeping()
                       for tag, session in sessions.items()}
    return write_result(
        options,
        "batch",
        {"accounts": accounts, "connections": BATCH_CONNECTIONS,
         "events_per_request": BATCH_EVENTS, "requests_per_load": batches,
         "time_limit_s_per_load": time_limit_s, "runs": runs, "seed": SEED,
         "workers_N": WORKERS_N,
         "server": "`serve --dev --workers 1` (unsuffixed keys) and `--workers N` (_workersN)",
         "generator": "1 process, asyncio keep-alive connections, bodies built before the clock",
         "usage_metric": "llm_tokens claude-3-haiku 1200 in / 300 out"},
        figures,
        bookkeeping,
    )
