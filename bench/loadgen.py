"""A small HTTP/1.1 keep-alive load generator for the HTTP benchmarks.

It runs in its own process (see `Generator`), so that it does not share an interpreter with the
server, and drives it with asyncio streams over raw sockets: one request in flight per
connection, requests prebuilt as bytes, latency taken with `perf_counter_ns`. Every load is
bounded by a request count and a time limit, whichever comes first. It reports its own CPU use,
so that a result can show that the generator was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgpack
import msgspec

from bench.common import percentile

# Past the time limit, in-flight requests get this long to finish before the load is cut off.
GRACE_S = 30
METRIC = {"type": "llm_tokens", "provider": "anthropic", "model": "claude-3-haiku",
          "input_tokens": 1200, "output_tokens": 300}
_METRIC_JSON = msgspec.json.encode(METRIC)


@dataclass(frozen=True)
class Load:
    """One bounded load: `kind` names a request builder below (picklable, unlike a closure)."""

    kind: str
    host: str
    port: int
    connections: int
    requests: int  # units of work: a reserve+commit cycle, a batch, an account seeded, ...
    time_limit_s: float
    prefix: str  # makes event and reservation ids unique across loads on one server
    users: tuple[str, ...] = ()
    seed: int = 0
    service_key: str = ""
    admin_key: str = ""
    batch_events: int = 1000


@dataclass
class Outcome:
    """What one load did. Latencies are per unit of work (a whole cycle for reserve+commit)."""

    completed: int = 0  # units of work whose every response was 2xx
    errors: int = 0  # non-2xx responses, failed batch events, broken connections
    wall_s: float = 0.0
    generator_cpu_s: float = 0.0
    timed_out: bool = False
    statuses: dict[str, int] = field(default_factory=dict)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s else 0.0

    @property
    def generator_cpu_fraction(self) -> float:
        """Share of one core the generator used: near 1.0 would mean it limited the rate."""
        return self.generator_cpu_s / self.wall_s if self.wall_s else 0.0


class _BatchReply(msgspec.Struct):
    processed: int
    failed: int


_batch_json = msgspec.json.Decoder(_BatchReply)
_batch_msgpack = msgspec.msgpack.Decoder(_BatchReply)


def _request(load: Load, method: str, path: str, body: bytes | None = None,
             headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {load.host}:{load.port}", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _service(load: Load, content_type: str = "application/json") -> tuple[str, ...]:
    return (f"X-API-Key: {load.service_key}", f"Content-Type: {content_type}")


# A builder turns a unit index (unique within the load) into the requests of that unit, sent
# one after the other on one connection. Bodies are formatted from bytes templates: cheap.
Builder = Callable[[Load, int, random.Random], tuple[bytes, ...]]


def _bare(load: Load, _index: int, _pick: random.Random) -> tuple[bytes, ...]:
    return (_request(load, "GET", "/health"),)


def _usage(load: Load, index: int, pick: random.Random) -> tuple[bytes, ...]:
    user = load.users[pick.randrange(len(load.users))]
    body = b'{"event_id":"%s-%d","user_id":"%s","metric":%s}' % (
        load.prefix.encode(), index, user.encode(), _METRIC_JSON)
    return (_request(load, "POST", "/v1/usage", body, _service(load)),)


def _cycle(load: Load, index: int, pick: random.Random) -> tuple[bytes, ...]:
    user = load.users[pick.randrange(len(load.users))]
    reservation = f"{load.prefix}-{index}"
    reserve = b'{"reservation_id":"%s","user_id":"%s","amount_cents":5}' % (
        reservation.encode(), user.encode())
    commit = b'{"metric":%s}' % _METRIC_JSON
    return (_request(load, "POST", "/v1/reservations", reserve, _service(load)),
            _request(load, "POST", f"/v1/reservations/{reservation}/commit", commit,
                     _service(load)))


def _seed(load: Load, index: int, _pick: random.Random) -> tuple[bytes, ...]:
    """Open account `index` (a dev-mode test token) and grant it plenty of credits."""
    user = load.users[index]
    grant = b'{"user_id":"%s","amount_cents":%d}' % (user.encode(), 10**9)
    return (_request(load, "POST", "/v1/accounts", b"{}",
                     (f"Authorization: Bearer test-token:{user}",
                      "Content-Type: application/json")),
            _request(load, "POST", "/v1/credits/add", grant,
                     (f"X-Admin-Key: {load.admin_key}", "Content-Type: application/json")))


def _batch_events(load: Load, index: int, pick: random.Random) -> list[dict[str, Any]]:
    return [{"event_id": f"{load.prefix}-{index}-{n}",
             "user_id": load.users[pick.randrange(len(load.users))], "metric": METRIC}
            for n in range(load.batch_events)]


def _batch_json_request(load: Load, index: int, pick: random.Random) -> tuple[bytes, ...]:
    body = msgspec.json.encode({"events": _batch_events(load, index, pick)})
    return (_request(load, "POST", "/v1/usage/batch", body, _service(load)),)


def _batch_msgpack_request(load: Load, index: int, pick: random.Random) -> tuple[bytes, ...]:
    body = msgpack.packb({"events": _batch_events(load, index, pick)})
    return (_request(load, "POST", "/v1/usage/batch", body,
                     (*_service(load, "application/msgpack"),
                      "Accept: application/msgpack")),)


BUILDERS: dict[str, Builder] = {
    "bare": _bare,
    "usage": _usage,
    "cycle": _cycle,
    "seed": _seed,
    "batch_json": _batch_json_request,
    "batch_msgpack": _batch_msgpack_request,
}
# Batch bodies are costly to build, so they are all built before the clock starts.
PREBUILT = {"batch_json", "batch_msgpack"}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked replies are not expected from these routes")
    return status, await reader.readexactly(length)


def _batch_failures(kind: str, body: bytes) -> int:
    reply = (_batch_msgpack if kind == "batch_msgpack" else _batch_json).decode(body)
    return reply.failed


async def _drive(load: Load, outcome: Outcome, latencies: list[int]) -> None:
    build = BUILDERS[load.kind]
    prebuilt: list[tuple[bytes, ...]] = []
    if load.kind in PREBUILT:
        pick = random.Random(load.seed)
        prebuilt = [build(load, index, pick) for index in range(load.requests)]
    statuses: Counter[int] = Counter()
    next_index = 0  # shared by the connections: one event loop, so no lock is needed
    opened = [await asyncio.open_connection(load.host, load.port)
              for _ in range(load.connections)]
    started = time.perf_counter()
    cpu_started = time.process_time()  # after the batch bodies are built: they are not load
    deadline = started + load.time_limit_s

    async def connection(number: int) -> None:
        nonlocal next_index
        reader, writer = opened[number]
        pick = random.Random(load.seed * 1000 + number)
        try:
            while next_index < load.requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                requests = prebuilt[index] if prebuilt else build(load, index, pick)
                began = time.perf_counter_ns()
                ok = True
                for request in requests:
                    try:
                        writer.write(request)
                        status, body = await _read_response(reader)
                    except (OSError, asyncio.IncompleteReadError, ValueError):
                        # The connection broke: count it, and carry on over a fresh one.
                        outcome.errors += 1
                        statuses[0] += 1
                        writer.close()
                        try:
                            reader, writer = await asyncio.open_connection(load.host,
                                                                           load.port)
                        except OSError:
                            return  # the server is gone: the other connections will see it
                        ok = False
                        break
                    statuses[status] += 1
                    if not 200 <= status < 300:
                        outcome.errors += 1
                        ok = False
                        break
                    if load.kind in PREBUILT:
                        outcome.errors += _batch_failures(load.kind, body)
                if ok:
                    latencies.append(time.perf_counter_ns() - began)
                    outcome.completed += 1
        finally:
            writer.close()

    try:
        async with asyncio.timeout(load.time_limit_s + GRACE_S):
            await asyncio.gather(*(connection(number) for number in range(load.connections)))
    except TimeoutError:
        outcome.timed_out = True
    outcome.wall_s = time.perf_counter() - started
    outcome.generator_cpu_s = time.process_time() - cpu_started
    outcome.statuses = {str(status): count for status, count in sorted(statuses.items())}


def run_load(load: Load) -> Outcome:
    """Run one load in this process (the generator process) and summarise it."""
    outcome = Outcome()
    latencies: list[int] = []
    asyncio.run(_drive(load, outcome, latencies))
    latencies.sort()
    outcome.p50_ms = percentile(latencies, 0.50) / 1e6
    outcome.p99_ms = percentile(latencies, 0.99) / 1e6
    return outcome


class Generator:
    """One long-lived generator process, reused for every load of a benchmark part."""

    def __init__(self) -> None:
        # spawn: the parent may run threads (the progress display), which fork does not suit.
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, load: Load) -> Outcome:
        return self._pool.submit(run_load, load).result()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._pool.shutdown(cancel_futures=True)
