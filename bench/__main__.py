"""`python -m bench PART [--quick] [--out DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bench import (
    baseline,
    controls,
    dashboard,
    engine,
    engine_ipc,
    export,
    http,
    instructions,
    lots,
    profile,
    reservations,
    scale,
    wal,
)
from bench.common import DEFAULT_OUT, Options
from bench.report import write_report

PARTS = {
    "engine": engine.run,
    "engine-ipc": engine_ipc.run,
    "reservations": reservations.run,
    "export": export.run,
    "baseline": baseline.run,
    "scale": scale.run,
    "http": http.run,
    "batch": http.run_batch,
    "profile": profile.run,
    "instructions": instructions.run,
    "wal": wal.run,
    "lots": lots.run,
    "controls": controls.run,
}
# Parts run only when named (not by "all"): the dashboard picture needs Debian's prometheus.
NAMED_PARTS = {"dashboard": dashboard.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("part", choices=[*PARTS, *NAMED_PARTS, "all"])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    arguments = parser.parse_args()
    options = Options(quick=arguments.quick, out=arguments.out)
    parts = list(PARTS) if arguments.part == "all" else [arguments.part]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  BarColumn()) as progress:
        overall = progress.add_task("benchmarks", total=len(parts))
        for part in parts:
            progress.update(overall, description=f"running {part}")
            path = {**PARTS, **NAMED_PARTS}[part](options)
            progress.console.print(f"{part}: wrote {path}" if path is not None
                                   else f"{part}: skipped")
            progress.advance(overall)
    print(f"report: {write_report(options.out)}")


if __name__ == "__main__":
    main()
