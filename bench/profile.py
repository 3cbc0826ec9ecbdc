"""`python -m bench profile`: where a debit's time goes, layer by layer, from py-spy samples.

Two profiles, each taken by py-spy attached to a running process, so set-up work is left out:
the HTTP debit route (`POST /v1/usage`, a `serve --dev` process driven at 16 connections by the
load generator) and the engine in-process (256 producers over 10,000 accounts, as in
`bench engine`). Every sample (either thread: trio's, or the worker thread that commits) is
put in the layer of its innermost frame that belongs to one, and each layer is reported as its
share of the samples and as thread-time per debit in microseconds. py-spy needs permission to
attach (root, or kernel.yama.ptrace_scope = 0); without it, or without py-spy, the part is
skipped with a message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import SEED, Options, write_result
from bench.engine import ACCOUNTS, PRODUCERS
from bench.http import BenchServer, Generator, Session

SAMPLES_PER_S = 250
# py-spy has no "attached" signal: give it this long, then check it did not exit with an error.
ATTACH_WAIT_S = 1.5
HTTP_CONNECTIONS = 16
ENGINE_PROFILE_SCRIPT = """
import json, sys, tempfile, trio
from pathlib import Path
from bench.engine import debit_run
accounts, producers, debits, seed = (int(value) for value in sys.argv[1:5])

async def main(data_dir):
    async def ready():
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
    return await debit_run(data_dir, accounts, producers, debits, seed, before_debits=ready)

with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps(trio.run(main, Path(tmp) / "data")), flush=True)
"""

# (layer, test on one frame "function (path:line)"), innermost frame first: first match wins.
Layer = tuple[str, Callable[[str], bool]]
LAYERS: tuple[Layer, ...] = (
    ("storage: encode records", lambda frame: "(storage/codec.py" in frame),
    ("storage: LMDB write + fsync", lambda frame: frame.startswith(
        ("LmdbStore.commit (", "LmdbStore._acknowledge (", "LmdbStore._requeue ("))),
    ("storage: LMDB reads", lambda frame: "(storage/" in frame),
    ("engine: price + decide", lambda frame: "(engine/" in frame),
    ("actors: actor + group commit", lambda frame: "(actors/" in frame),
    ("auth", lambda frame: "(api/auth.py" in frame or "(jwt/" in frame),
    ("api: parse, validate, reply", lambda frame: "(api/" in frame or "(msgspec/" in frame),
    ("quart", lambda frame: "(quart" in frame or "(werkzeug/" in frame),
    ("hypercorn + h11", lambda frame: "(hypercorn/" in frame or "(h11/" in frame),
    ("metrics", lambda frame: "(prometheus_client/" in frame),
    ("trio: scheduling + I/O", lambda frame: "(trio/" in frame or "(outcome/" in frame),
    ("benchmark producers", lambda frame: "(bench/" in frame),
)
OTHER = "other (stdlib, logging, ...)"
# Leaf frames of a thread that waits rather than works: epoll with nothing runnable, a cached
# worker thread waiting for its next job. py-spy counts them; they are not time spent on debits.
IDLE_LEAVES = ("EpollIOManager.get_events (trio/", "WorkerThread._work (trio/")
IDLE = "idle (waiting for I/O or for work)"


def py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, belongs in LAYERS:
            if belongs(frame):
                return name
    return OTHER


def read_samples(raw: Path) -> tuple[Counter[str], Counter[str]]:
    """Samples per layer, and per thread: trio's (the one running trio's loop) or a worker."""
    layers: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    trio_threads: set[str] = set()
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        thread, *stack = stack_text.split(";")
        count = int(count_text)
        if not stack or stack[-1].startswith(IDLE_LEAVES):
            layers[IDLE] += count
            continue
        layers[layer_of(stack)] += count
        by_thread[thread] += count
        if any("(trio/_core/_run.py" in frame for frame in stack):
            trio_threads.add(thread)
    threads: Counter[str] = Counter()
    for thread, count in by_thread.items():
        threads["trio thread" if thread in trio_threads else "worker threads (commits)"] += count
    return layers, threads


def breakdown(raw: Path, debits: int) -> dict[str, Any]:
    layers, threads = read_samples(raw)
    idle = layers.pop(IDLE, 0)
    total = sum(layers.values())
    if not total or not debits:
        raise RuntimeError(f"py-spy recorded no samples in {raw}")

    def per_debit_us(samples: int) -> float:
        return samples / SAMPLES_PER_S / debits * 1e6

    return {
        "debits": debits,
        "samples": total,
        "idle_samples": idle,
        "thread_us_per_debit": per_debit_us(total),
        "layers": {
            name: {"share": samples / total, "us_per_debit": per_debit_us(samples)}
            for name, samples in layers.most_common()
        },
        "threads": {name: {"share": samples / total, "us_per_debit": per_debit_us(samples)}
                    for name, samples in threads.most_common()},
    }


def attach(
    spy: str, pid: int, raw: Path, duration_s: float | None = None
) -> subprocess.Popen[bytes]:
    command = [spy, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_S), "--threads",
               "--format", "raw", "--output", str(raw)]
    if duration_s is not None:
        command += ["--duration", str(round(duration_s))]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(ATTACH_WAIT_S)
    if recorder.poll() is not None:
        message = recorder.stderr.read().decode(errors="replace") if recorder.stderr else ""
        raise PermissionError(f"py-spy could not attach to {pid}: {message.strip()}")
    return recorder


def http_profile(spy: str, quick: bool, work_dir: Path) -> dict[str, Any]:
    """The debit route and the bare route of one server, and what the debit adds per layer."""
    load_s = 5.0 if quick else 15.0
    accounts = 200 if quick else 1_000
    work_dir.mkdir()
    profiles: dict[str, Any] = {}
    with BenchServer(work_dir) as server, Generator() as generator:
        session = Session(server, generator, accounts)
        for kind in ("usage", "bare"):
            raw = work_dir / f"{kind}.txt"
            session.load("warm-up", kind, HTTP_CONNECTIONS, 2_000, load_s, record=False)
            recorder = attach(spy, server.process.pid, raw, load_s + 2 * ATTACH_WAIT_S)
            outcome = session.load(kind, kind, HTTP_CONNECTIONS, 10**7, load_s, record=False)
            recorder.wait(timeout=load_s + 60)
            profiles[kind] = {**breakdown(raw, outcome.completed),
                              "requests_per_s": outcome.per_s, "errors": outcome.errors}
    usage, bare = profiles["usage"], profiles["bare"]
    profiles["usage_minus_bare_us"] = {
        layer: usage["layers"].get(layer, {}).get("us_per_debit", 0.0)
        - bare["layers"].get(layer, {}).get("us_per_debit", 0.0)
        for layer in {*usage["layers"], *bare["layers"]}
    }
    return profiles


def engine_profile(spy: str, quick: bool, work_dir: Path) -> dict[str, Any]:
    accounts = 1_000 if quick else ACCOUNTS
    debits = 20_000 if quick else 100_000
    raw = work_dir / "engine.txt"
    work_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", ENGINE_PROFILE_SCRIPT, str(accounts), str(PRODUCERS),
         str(debits), str(SEED)],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the engine profile run did not start")
        recorder = attach(spy, child.pid, raw)
        child.stdin.write("go\n")
        child.stdin.flush()
        measured = child.stdout.readline()
        child.wait(timeout=120)
        recorder.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    figures = json.loads(measured)
    result = breakdown(raw, debits)
    result["debits_per_s_while_sampled"] = figures["debits_per_s"]
    return result


def run(options: Options) -> Path | None:
    spy = py_spy()
    if spy is None:
        print("profile: skipped, py-spy is not installed (pip install -e '.[bench]')",
              flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            http = http_profile(spy, options.quick, Path(tmp) / "http")
            engine = engine_profile(spy, options.quick, Path(tmp) / "engine")
        except PermissionError as error:
            print(f"profile: skipped, {error}", flush=True)
            return None
    for name, profile in (("http usage", http["usage"]), ("http bare", http["bare"]),
                          ("engine", engine)):
        top = ", ".join(f"{layer} {figures['us_per_debit']:.1f} µs"
                        for layer, figures in list(profile["layers"].items())[:4])
        print(f"{name}: {profile['thread_us_per_debit']:.1f} µs of thread time per debit; {top}",
              flush=True)
    return write_result(
        options,
        "profile",
        {"sampler": f"py-spy record --rate {SAMPLES_PER_S} --threads (attached after set-up)",
         "http": f"POST /v1/usage and the bare GET /health at {HTTP_CONNECTIONS} connections, "
                 "one serve --dev process; per request for the bare route",
         "engine": f"{PRODUCERS} producers over {ACCOUNTS} accounts, in-process",
         "layers": [name for name, _ in LAYERS] + [OTHER],
         "us_per_debit": "samples / rate / debits: thread time (both threads) per debit"},
        {},
        {"http": http, "engine": engine},
    )
