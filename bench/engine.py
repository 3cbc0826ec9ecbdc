"""`python -m bench engine`: durable debits in-process, next to trio's own round-trip ceiling.

Every debit goes through the facade exactly as the HTTP handler calls it: price, decide in the
account's actor, group commit with fsync, reply after the commit.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from actors.runtime import open_billing
from bench.common import SEED, Options, device_write_bytes, percentile, write_result
from engine.ids import UserId
from engine.metering import UsageRequest
from engine.usage import LlmTokens

ACCOUNTS = 10_000
PRODUCERS = 256
LATENCY_PRODUCERS = 64
ACCOUNT_BALANCE_CENTS = 10**9
RUN_TIME_MAX_S = 120
# How often the run samples the age of the oldest write not yet checkpointed.
LAG_SAMPLE_S = 0.05


async def trio_round_trip_rate(producers: int, messages: int) -> float:
    """Producers send a bare message to an actor task and await its reply, no work at all:
    a memory channel in, a trio.Event back, as an actor-per-task design would do."""
    send, receive = trio.open_memory_channel[trio.Event](producers)

    async def actor() -> None:
        async for reply in receive:
            reply.set()

    async def producer(count: int) -> None:
        for _ in range(count):
            reply = trio.Event()
            await send.send(reply)
            await reply.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        started = time.perf_counter()
        async with trio.open_nursery() as producing:
            for _ in range(producers):
                producing.start_soon(producer, messages // producers)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return (messages // producers) * producers / elapsed


async def debit_run(
    data_dir: Path, accounts: int, producers: int, debits: int, seed: int, *,
    before_debits: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Debits from `producers` tasks over funded accounts; `before_debits` runs after set-up."""
    users = [UserId(uuid.UUID(int=random.Random(seed + i).getrandbits(128))) for i in
             range(accounts)]
    metric = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)
    async with open_billing(data_dir) as billing:
        for start in range(0, accounts, 1000):
            chunk = users[start:start + 1000]
            async with trio.open_nursery() as nursery:
                for user in chunk:
                    nursery.start_soon(billing.open_account, user)
            async with trio.open_nursery() as nursery:
                for user in chunk:
                    nursery.start_soon(_fund, billing, user)
        if before_debits is not None:
            await before_debits()
        latencies: list[float] = []
        per_producer = debits // producers
        commits_before = _commit_count(billing)

        async def produce(index: int) -> None:
            chooser = random.Random(seed * 1000 + index)
            for n in range(per_producer):
                user = users[chooser.randrange(accounts)]
                request = UsageRequest(event_id=f"p{index}-{n}", user_id=user, metric=metric)
                started = time.perf_counter()
                await billing.report_usage(request)
                latencies.append(time.perf_counter() - started)

        written_before = device_write_bytes()
        # CPU by thread: trio's (producers, pricing, deciding, scheduling, metrics) and the
        # journal's workers (commit: encode + log append; checkpoint: log into LMDB).
        trio_cpu_before = time.thread_time()
        commit_cpu_before, checkpoint_cpu_before = billing.journal_cpu_s
        lags: list[float] = []

        async def sample_lag(stop: trio.Event) -> None:
            while not stop.is_set():
                lags.append(billing.checkpoint_lag_s)
                with trio.move_on_after(LAG_SAMPLE_S):
                    await stop.wait()

        started = time.perf_counter()
        with trio.move_on_after(RUN_TIME_MAX_S):
            async with trio.open_nursery() as sampling:
                stop = trio.Event()
                sampling.start_soon(sample_lag, stop)
                async with trio.open_nursery() as nursery:
                    for index in range(producers):
                        nursery.start_soon(produce, index)
                stop.set()
        elapsed = time.perf_counter() - started
        trio_cpu_s = time.thread_time() - trio_cpu_before
        commits = _commit_count(billing) - commits_before
        checkpoints = billing.checkpoints
    # The shutdown checkpoint counts too: those writes were owed by the debits.
    written = device_write_bytes() - written_before
    commit_cpu_s, checkpoint_cpu_s = billing.journal_cpu_s
    done = len(latencies) or 1
    latencies.sort()
    return {
        "trio_thread_cpu_us_per_debit": trio_cpu_s / done * 1e6,
        "commit_cpu_us_per_debit": (commit_cpu_s - commit_cpu_before) / done * 1e6,
        "checkpoint_cpu_us_per_debit": (checkpoint_cpu_s - checkpoint_cpu_before) / done * 1e6,
        "device_bytes_per_debit": written / len(latencies) if latencies else 0.0,
        "checkpoints": checkpoints,
        "max_checkpoint_lag_s": max(lags, default=0.0),
        "debits_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "debits_per_commit": len(latencies) / commits if commits else 0.0,
    }


async def _fund(billing: Any, user: UserId) -> None:
    await billing.add_credits(user, ACCOUNT_BALANCE_CENTS)


def _commit_count(billing: Any) -> int:
    return int(billing.commits)


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    debits = 20_000 if options.quick else 150_000
    accounts = 1_000 if options.quick else ACCOUNTS
    figures: dict[str, list[float]] = {
        "debits_per_s": [], "hot_account_debits_per_s": [], "p50_ms": [], "p99_ms": [],
        "p50_ms_256": [], "p99_ms_256": [], "trio_roundtrip_per_s": [],
        "debits_per_commit": [], "hot_account_debits_per_commit": [],
        "device_bytes_per_debit": [], "checkpoints_per_run": [], "max_checkpoint_lag_s": [],
        "trio_thread_cpu_us_per_debit": [], "commit_cpu_us_per_debit": [],
        "checkpoint_cpu_us_per_debit": [],
    }
    for run_index in range(runs):
        seed = SEED + run_index
        figures["trio_roundtrip_per_s"].append(
            trio.run(trio_round_trip_rate, PRODUCERS, debits)
        )
        with tempfile.TemporaryDirectory() as tmp:
            many = trio.run(debit_run, Path(tmp) / "many", accounts, PRODUCERS, debits, seed)
            hot = trio.run(debit_run, Path(tmp) / "hot", 1, PRODUCERS, debits, seed)
            latency = trio.run(
                debit_run, Path(tmp) / "latency", accounts, LATENCY_PRODUCERS, debits // 2, seed
            )
        figures["debits_per_s"].append(many["debits_per_s"])
        figures["p50_ms_256"].append(many["p50_ms"])
        figures["p99_ms_256"].append(many["p99_ms"])
        figures["debits_per_commit"].append(many["debits_per_commit"])
        figures["device_bytes_per_debit"].append(many["device_bytes_per_debit"])
        figures["checkpoints_per_run"].append(many["checkpoints"])
        figures["max_checkpoint_lag_s"].append(many["max_checkpoint_lag_s"])
        for thread in ("trio_thread", "commit", "checkpoint"):
            figures[f"{thread}_cpu_us_per_debit"].append(many[f"{thread}_cpu_us_per_debit"])
        figures["hot_account_debits_per_s"].append(hot["debits_per_s"])
        figures["hot_account_debits_per_commit"].append(hot["debits_per_commit"])
        figures["p50_ms"].append(latency["p50_ms"])
        figures["p99_ms"].append(latency["p99_ms"])
        print(f"run {run_index + 1}/{runs}: many {many['debits_per_s']:.0f}/s "
              f"({many['device_bytes_per_debit']:.0f} device bytes/debit), "
              f"CPU/debit trio {many['trio_thread_cpu_us_per_debit']:.1f} µs, commit "
              f"{many['commit_cpu_us_per_debit']:.1f} µs, checkpoint "
              f"{many['checkpoint_cpu_us_per_debit']:.1f} µs, checkpoint lag ≤ "
              f"{many['max_checkpoint_lag_s']:.2f} s; "
              f"hot {hot['debits_per_s']:.0f}/s, p99@64 {latency['p99_ms']:.2f} ms, "
              f"trio round trip {figures['trio_roundtrip_per_s'][-1]:.0f}/s", flush=True)
    ratio = [d / t for d, t in zip(figures["debits_per_s"], figures["trio_roundtrip_per_s"],
                                   strict=True)]
    return write_result(
        options,
        "engine",
        {
            "accounts": accounts, "producers": PRODUCERS, "latency_producers": LATENCY_PRODUCERS,
            "debits_per_run": debits, "runs": runs, "fsync": True, "seed": SEED,
            "metric": "llm_tokens claude-3-haiku 1200 in / 300 out",
            "p50_ms/p99_ms": f"at {LATENCY_PRODUCERS} producers; *_256 at {PRODUCERS}",
        },
        {**figures, "debits_per_trio_roundtrip": ratio},
    )
