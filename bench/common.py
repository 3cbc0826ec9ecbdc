"""Shared benchmark plumbing: machine facts, repeated runs summarised, JSON results."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SEED = 20261125
PACKAGES = ("trio", "hypercorn", "quart-trio", "lmdb", "msgpack", "cbor2", "httpx", "stripe",
            "prometheus-client", "pyjwt")


@dataclass(frozen=True)
class Options:
    quick: bool
    out: Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_facts() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(),
    }


def summary(runs: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(runs),
        "min": min(runs),
        "max": max(runs),
        "runs": list(runs),
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def write_result(options: Options, part: str, parameters: dict[str, Any],
                 figures: dict[str, Sequence[float]], extra: dict[str, Any] | None = None
                 ) -> Path:
    options.out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "part": part,
        "machine": machine_facts(),
        "parameters": parameters,
    }
    for name, runs in figures.items():
        document[name] = summary(runs)
    if extra:
        document.update(extra)
    path = options.out / f"{part}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def device_write_bytes() -> int:
    """Bytes this process caused to be written to the storage device (/proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def terminate(process: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM a process we started and wait; SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
