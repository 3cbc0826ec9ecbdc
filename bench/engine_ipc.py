"""`python -m bench engine-ipc`: what the engine process alone sustains, fed over its socket.

The engine process is the one `serve --workers N` runs (api.supervisor's engine child), on a
fresh data directory. K load processes each keep IN_FLIGHT debits in flight over their own
connection through `RemoteFacade(Billing)` — exactly the calls an HTTP worker makes, without
HTTP in front. That rate is the ceiling a machine with many cores would reach: HTTP workers
add throughput until together they send this much.

Next to it, the same debits with as many in flight in one process (`bench.engine`'s run):
their ratio says what the socket costs and whether it, or the engine behind it, is the limit.
It also measures the wire format: encoding and decoding one `report_usage` call and its reply
in msgspec JSON (the format used), msgspec msgpack (which cannot carry the ledger's 128-bit
ids: measured with a 64-bit one), pickle, and cbor2 with msgspec.convert.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import msgspec
import trio

from actors.billing import Billing
from actors.engine_socket import SOCKET_NAME
from actors.remote import EngineLink, RemoteFacade
from actors.wire import OK, Codec, Framer, method_spec
from api.settings import Settings
from api.supervisor import ENGINE, Child
from bench.common import SEED, Options, percentile, summary, write_result
from bench.engine import debit_run
from engine.commands import UsageResult
from engine.ids import UserId
from engine.metering import UsageRequest
from engine.usage import LlmTokens

ACCOUNTS = 10_000
LOADERS = 2
IN_FLIGHT = 256  # per load process
FUNDS_CENTS = 10**9
RUN_TIME_MAX_S = 120
START_DELAY_S = 1.0  # load processes connect, then start together
GOAL_DEBITS_PER_S = 15_000
WIRE_ROUNDS = 50_000
METRIC = LlmTokens("anthropic", "claude-3-haiku", 1200, 300)


def _users(accounts: int) -> list[str]:
    chooser = random.Random(SEED)
    return [str(uuid.UUID(int=chooser.getrandbits(128), version=4)) for _ in range(accounts)]


async def _connected(path: Path, role: str, nursery: trio.Nursery) -> tuple[EngineLink, Any]:
    link = EngineLink(path, Codec(), role=role)
    nursery.start_soon(link.run)
    with trio.fail_after(30):
        await link.wait_connected()
    return link, RemoteFacade(link, Billing, "billing")


async def _seed(path: Path, users: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        _, billing = await _connected(path, "seed", nursery)
        limiter = trio.CapacityLimiter(256)

        async def fund(user: UserId) -> None:
            async with limiter:
                await billing.open_account(user)
                await billing.add_credits(user, FUNDS_CENTS)

        async with trio.open_nursery() as funding:
            for text in users:
                funding.start_soon(fund, UserId(uuid.UUID(text)))
        nursery.cancel_scope.cancel()


@dataclass(frozen=True)
class Load:
    """One load process's work: `debits` report_usage calls, IN_FLIGHT at a time."""

    path: str
    users: list[str]
    debits: int
    prefix: str  # event ids never repeat across loads
    seed: int
    start_at: float  # wall clock: the load processes start together


def load(spec: Load) -> dict[str, Any]:
    return trio.run(_load, spec)


async def _load(spec: Load) -> dict[str, Any]:
    users = [UserId(uuid.UUID(text)) for text in spec.users]
    debits, prefix, path = spec.debits, spec.prefix, Path(spec.path)
    latencies: list[float] = []
    errors = 0
    issued = 0
    async with trio.open_nursery() as nursery:
        _, billing = await _connected(path, "load", nursery)
        await trio.sleep(max(0.0, spec.start_at - time.time()))
        chooser = random.Random(spec.seed)

        async def producer() -> None:
            nonlocal issued, errors
            while issued < debits:
                number = issued
                issued += 1
                request = UsageRequest(event_id=f"{prefix}-{number}",
                                       user_id=users[chooser.randrange(len(users))],
                                       metric=METRIC)
                began = time.perf_counter()
                try:
                    await billing.report_usage(request)
                except Exception:  # counted: a benchmark reports errors, it does not stop
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)

        started, cpu_started = time.time(), time.process_time()
        with trio.move_on_after(RUN_TIME_MAX_S):
            async with trio.open_nursery() as producers:
                for _ in range(IN_FLIGHT):
                    producers.start_soon(producer)
        ended, cpu = time.time(), time.process_time() - cpu_started
        nursery.cancel_scope.cancel()
    latencies.sort()
    return {"completed": len(latencies), "errors": errors, "started": started, "ended": ended,
            "cpu_s": cpu, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _journal(families: list[Any]) -> tuple[float, float, float]:
    """(commands, commits, seconds spent committing) so far, from the engine's histograms."""
    values = {sample.name: sample.value for family in families for sample in family.samples
              if family.name in ("zbilling_journal_batch_commands",
                                 "zbilling_journal_commit_seconds")
              and not sample.labels.get("le")}
    return (values.get("zbilling_journal_batch_commands_sum", 0.0),
            values.get("zbilling_journal_batch_commands_count", 0.0),
            values.get("zbilling_journal_commit_seconds_sum", 0.0))


async def _measure(data_dir: Path, accounts: int, debits: int, runs: int,
                   pool: ProcessPoolExecutor) -> dict[str, list[float]]:
    settings = Settings(data_dir=data_dir)
    engine = Child(ENGINE, 0, settings, dict(os.environ))
    if not await engine.start():
        raise RuntimeError("the engine process did not start")
    assert engine.process is not None
    path = data_dir / SOCKET_NAME
    figures: dict[str, list[float]] = {}
    try:
        users = _users(accounts)
        await _seed(path, users)
        async with trio.open_nursery() as nursery:
            link, _ = await _connected(path, "probe", nursery)  # for the engine's metrics
            for run_index in range(-1, runs):  # run -1 warms the pool and the engine up
                count = debits // 10 if run_index < 0 else debits
                start_at = time.time() + START_DELAY_S
                journal_before = _journal(await link.engine_families())
                cpu_before = _cpu_s(engine.process.pid)
                futures = [pool.submit(load, Load(str(path), users, count // LOADERS,
                                                  f"r{run_index}-l{loader}", SEED + loader,
                                                  start_at))
                           for loader in range(LOADERS)]
                results = await trio.to_thread.run_sync(lambda f=futures: [x.result() for x in f])
                cpu = _cpu_s(engine.process.pid) - cpu_before
                commands, commits, committing = (
                    after - before for after, before in
                    zip(_journal(await link.engine_families()), journal_before, strict=True))
                if run_index < 0:
                    continue
                wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
                completed = sum(r["completed"] for r in results)
                for name, value in (
                    ("engine_ipc_debits_per_s", completed / wall),
                    ("p50_ms", max(r["p50_ms"] for r in results)),
                    ("p99_ms", max(r["p99_ms"] for r in results)),
                    ("errors", sum(r["errors"] for r in results)),
                    ("engine_cpu_fraction", cpu / wall),
                    ("engine_cpu_us_per_debit", cpu / completed * 1e6),
                    ("load_cpu_fraction_max", max(r["cpu_s"] for r in results) / wall),
                    ("debits_per_commit", commands / max(1.0, commits)),
                    # Share of the wall time a group commit was running (its thread).
                    ("commit_busy_fraction", committing / wall),
                    ("commit_ms_mean", committing / max(1.0, commits) * 1000),
                ):
                    figures.setdefault(name, []).append(value)
                print(f"run {run_index + 1}/{runs}: {completed / wall:.0f} debits/s over the "
                      f"socket, engine CPU {cpu / wall:.2f}", flush=True)
            nursery.cancel_scope.cancel()
    finally:
        await engine.stop(60)
    return figures


def wire_costs(rounds: int = WIRE_ROUNDS) -> dict[str, float]:
    """µs to encode and decode one report_usage call and its reply: each format with the same
    typed messages (msgpack with a 64-bit id: it cannot carry the real 128-bit ones), and the
    whole path of the engine socket's Codec (framing, envelope, arguments, result)."""
    user = UserId(uuid.UUID(int=random.Random(SEED).getrandbits(128)))
    request = UsageRequest("l1-123456", user, METRIC)
    big = UsageResult("l1-123456", user, (1 << 127) + 12345, 1, 675_000, 10**9, 0)
    small = msgspec.structs.replace(big, transaction_id=12345)
    spec = method_spec("billing.report_usage", Billing.report_usage)
    call = (1, [7], spec.path, {"request": request})
    call_type = tuple[int, list[int], str, spec.params]
    reply_type = tuple[int, int, UsageResult]
    codec = Codec()

    def typed(module: Any, reply: UsageResult) -> Any:
        encoder = module.Encoder()
        calls, replies = module.Decoder(call_type), module.Decoder(reply_type)

        def round_trip() -> None:
            calls.decode(encoder.encode(call))
            replies.decode(encoder.encode((1, OK, reply)))
        return round_trip

    def pickle_round() -> None:
        pickle.loads(pickle.dumps(call, 5))
        pickle.loads(pickle.dumps((1, OK, big), 5))

    def cbor_round() -> None:
        msgspec.convert(cbor2.loads(cbor2.dumps(msgspec.to_builtins(call))), call_type)
        msgspec.convert(cbor2.loads(cbor2.dumps(msgspec.to_builtins((1, OK, big)))),
                        reply_type)

    def codec_round() -> None:
        (payload,) = Framer().feed(bytes(codec.frame(call)))
        codec.decode_params(spec, codec.call_envelope.decode(payload)[3])
        (payload,) = Framer().feed(bytes(codec.frame((1, OK, big))))
        codec.decode_result(spec, codec.reply_envelope.decode(payload)[2])

    costs: dict[str, float] = {}
    for name, round_trip in (("json", typed(msgspec.json, big)),
                             ("msgpack_64bit_ids", typed(msgspec.msgpack, small)),
                             ("pickle", pickle_round), ("cbor2", cbor_round),
                             ("engine_socket_codec_json", codec_round)):
        started = time.perf_counter()
        for _ in range(rounds):
            round_trip()
        costs[f"wire_us_per_call_{name}"] = (time.perf_counter() - started) / rounds * 1e6
    return costs


def run(options: Options) -> Path:
    runs = 1 if options.quick else 3
    accounts = 1_000 if options.quick else ACCOUNTS
    debits = 20_000 if options.quick else 150_000
    wire = wire_costs(WIRE_ROUNDS // 10 if options.quick else WIRE_ROUNDS)
    # spawn: a fresh interpreter per load process, as a worker would be.
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            LOADERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        figures = trio.run(_measure, Path(tmp) / "data", accounts, debits, runs, pool)
        # The same debits in one process, as many in flight, right after: what the socket
        # costs, and whether it or the engine behind it is the limit.
        for run_index in range(runs):
            alone = trio.run(debit_run, Path(tmp) / f"in-process-{run_index}", accounts,
                             LOADERS * IN_FLIGHT, debits, SEED + run_index)
            figures.setdefault("in_process_debits_per_s", []).append(alone["debits_per_s"])
    figures["socket_vs_in_process"] = [
        socket_rate / alone for socket_rate, alone in
        zip(figures["engine_ipc_debits_per_s"], figures["in_process_debits_per_s"],
            strict=True)]
    rate = summary(figures["engine_ipc_debits_per_s"])["median"]
    return write_result(
        options,
        "engine_ipc",
        {"accounts": accounts, "debits_per_run": debits, "runs": runs, "seed": SEED,
         "load_processes": LOADERS, "in_flight_per_process": IN_FLIGHT, "fsync": True,
         "engine": "the `serve --workers N` engine process, fresh data directory",
         "load": "RemoteFacade(Billing).report_usage over the engine socket, no HTTP",
         "metric": "llm_tokens claude-3-haiku 1200 in / 300 out",
         "p50_ms/p99_ms": "the worse of the load processes"},
        figures,
        {"wire": wire,
         "goals": {"engine_ipc_debits_per_s": {"at_least": GOAL_DEBITS_PER_S, "median": rate,
                                               "met": rate >= GOAL_DEBITS_PER_S}}},
    )
