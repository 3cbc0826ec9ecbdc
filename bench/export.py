"""`python -m bench export`: Lago export throughput and lag, and debit latency while Lago is
slow. The fake Lago of the test suite runs in its own process on 127.0.0.1 as the sink.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from actors.runtime import ExporterFactory, open_billing
from bench.common import SEED, Options, percentile, write_result
from engine.ids import UserId
from engine.metering import UsageRequest
from engine.usage import LlmTokens
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "lago-test-key"
ACCOUNTS = 100
PRODUCERS = 64
DRAIN_TIMEOUT_S = 300
SAMPLE_INTERVAL_S = 0.25
METRIC = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)


class FakeLagoProcess:
    def __init__(self, mode: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_lago", mode], cwd=ROOT,
            stdout=subprocess.PIPE, text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


def to(lago: FakeLagoProcess) -> ExporterFactory:
    return lago_exporter(LagoClient(lago.url, API_KEY))


def users_for(seed: int) -> list[UserId]:
    return [UserId(uuid.UUID(int=seed * 10_000 + index + 1)) for index in range(ACCOUNTS)]


async def seed_accounts(billing: Any, users: list[UserId]) -> None:
    for user in users:
        await billing.open_account(user)
        await billing.add_credits(user, 10**9)


async def drain_rate(data_dir: Path, events: int, seed: int) -> float:
    """Fill the outbox while Lago refuses, then time the drain: events exported per second."""
    down = FakeLagoProcess("error")
    users = users_for(seed)
    try:
        async with open_billing(data_dir, exporter=to(down)) as billing:
            await seed_accounts(billing, users)
            for start in range(0, events // 2, 1000):
                await billing.report_usage_many([
                    UsageRequest(event_id=f"d-{start + i}", user_id=users[i % ACCOUNTS],
                                 metric=METRIC)
                    for i in range(min(1000, events // 2 - start))
                ])
    finally:
        down.close()
    sink = FakeLagoProcess("ok")
    try:
        async with open_billing(data_dir, exporter=to(sink)) as billing:
            backlog = billing.export_backlog()
            started = time.perf_counter()
            with trio.fail_after(DRAIN_TIMEOUT_S):
                while billing.export_backlog():
                    await trio.sleep(0.01)
            return backlog / (time.perf_counter() - started)
    finally:
        sink.close()


async def sustained(data_dir: Path, debits: int, seed: int, mode: str) -> dict[str, Any]:
    """Debit at full speed with export on; sample the export lag; time every debit."""
    sink = FakeLagoProcess(mode)
    users = users_for(seed)
    latencies: list[float] = []
    lags: list[tuple[float, float]] = []
    try:
        async with open_billing(data_dir, exporter=to(sink)) as billing:
            await seed_accounts(billing, users)
            started = time.perf_counter()
            producing = True

            async def produce(index: int) -> None:
                for n in range(debits // PRODUCERS):
                    request = UsageRequest(event_id=f"s-{index}-{n}",
                                           user_id=users[(index + n) % ACCOUNTS], metric=METRIC)
                    begun = time.perf_counter()
                    await billing.report_usage(request)
                    latencies.append(time.perf_counter() - begun)

            async def sample() -> None:
                while producing or billing.export_backlog():
                    lags.append((time.perf_counter() - started, billing.export_lag_s()))
                    await trio.sleep(SAMPLE_INTERVAL_S)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                async with trio.open_nursery() as producers:
                    for index in range(PRODUCERS):
                        producers.start_soon(produce, index)
                elapsed = time.perf_counter() - started
                producing = False
    finally:
        sink.close()
    latencies.sort()
    return {
        "debits_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_lag_s": max((lag for _, lag in lags), default=0.0),
        "lag_series": lags,
    }


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    events = 20_000 if options.quick else 100_000
    debits = 10_000 if options.quick else 60_000
    figures: dict[str, list[float]] = {}
    series: list[list[tuple[float, float]]] = []
    for run_index in range(runs):
        seed = SEED + run_index
        with tempfile.TemporaryDirectory() as tmp:
            rate = trio.run(drain_rate, Path(tmp) / "drain", events, seed)
            fast = trio.run(sustained, Path(tmp) / "fast", debits, seed, "ok")
            slow = trio.run(sustained, Path(tmp) / "slow", debits, seed, "slow")
        figures.setdefault("events_per_s", []).append(rate)
        figures.setdefault("max_lag_s", []).append(fast["max_lag_s"])
        figures.setdefault("debits_per_s_with_export", []).append(fast["debits_per_s"])
        figures.setdefault("p50_ms_lago_ok", []).append(fast["p50_ms"])
        figures.setdefault("p99_ms_lago_ok", []).append(fast["p99_ms"])
        figures.setdefault("p50_ms_lago_slow", []).append(slow["p50_ms"])
        figures.setdefault("p99_ms_lago_slow", []).append(slow["p99_ms"])
        series.append(fast["lag_series"])
        print(f"run {run_index + 1}/{runs}: export {rate:.0f} events/s, max lag "
              f"{fast['max_lag_s']:.2f} s at {fast['debits_per_s']:.0f} debits/s, p99 "
              f"{fast['p99_ms']:.2f} ms (Lago ok) vs {slow['p99_ms']:.2f} ms (Lago slow)",
              flush=True)
    return write_result(
        options,
        "export",
        {"events_drained": events, "sustained_debits": debits, "producers": PRODUCERS,
         "accounts": ACCOUNTS, "runs": runs, "seed": SEED, "lago": "tests/fake_lago.py in "
         "its own process; 'slow' answers after 0.2 s"},
        figures,
        {"lag_series_s": series},
    )
