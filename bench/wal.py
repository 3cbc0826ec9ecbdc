"""`python -m bench wal`: the two candidates for the journal's log, side by side.

Each appends group-commit records of the size one commit of 256 debits produces and makes
each durable before the next, as the journal does: a plain file opened with O_APPEND and
`os.fdatasync`, and an LMDB environment of its own with integer keys written in append mode
(`sync=True`). Device bytes written come from /proc/self/io.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from bench.common import Options, device_write_bytes, write_result

RECORD_BYTES = 256 * 700  # one commit of 256 debits: ~700 bytes of records per debit
APPENDS = 400
APPENDS_QUICK = 50


def _measure(append: Callable[[bytes], None], appends: int) -> dict[str, float]:
    payload = os.urandom(RECORD_BYTES)
    seconds: list[float] = []
    written = device_write_bytes()
    for _ in range(appends):
        started = time.perf_counter()
        append(payload)
        seconds.append(time.perf_counter() - started)
    written = device_write_bytes() - written
    return {"appends_per_s": appends / sum(seconds),
            "p50_ms": statistics.median(seconds) * 1000,
            "device_bytes_per_append": written / appends,
            "device_bytes_per_payload_byte": written / (appends * RECORD_BYTES)}


def _plain_file(directory: Path, appends: int) -> dict[str, float]:
    fd = os.open(directory / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        def append(payload: bytes) -> None:
            os.write(fd, payload)
            os.fdatasync(fd)
        return _measure(append, appends)
    finally:
        os.close(fd)


def _lmdb_append(directory: Path, appends: int) -> dict[str, float]:
    env = lmdb.open(str(directory / "lmdb"), map_size=1 << 32, sync=True, metasync=True)
    sequence = [0]
    try:
        def append(payload: bytes) -> None:
            sequence[0] += 1
            with env.begin(write=True) as txn:
                txn.put(sequence[0].to_bytes(8, "big"), payload, append=True)
        return _measure(append, appends)
    finally:
        env.close()


def run(options: Options) -> Path:
    appends = APPENDS_QUICK if options.quick else APPENDS
    rounds = 1 if options.quick else 3
    figures: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved, so both meet the same machine
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            for name, candidate in (("file", _plain_file), ("lmdb", _lmdb_append)):
                for figure, value in candidate(Path(tmp), appends).items():
                    figures.setdefault(f"{name}_{figure}", []).append(value)
    figures["file_over_lmdb_appends"] = [
        file / lmdb_ for file, lmdb_ in zip(figures["file_appends_per_s"],
                                            figures["lmdb_appends_per_s"], strict=True)]
    print(f"plain file: {statistics.median(figures['file_appends_per_s']):.0f} appends/s, "
          f"LMDB append: {statistics.median(figures['lmdb_appends_per_s']):.0f} appends/s",
          flush=True)
    return write_result(
        options, "wal",
        {"record_bytes": RECORD_BYTES, "appends": appends, "rounds": rounds,
         "note": "each append made durable before the next, as the group commit does"},
        figures,
    )
