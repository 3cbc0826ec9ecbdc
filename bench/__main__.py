"""`python -m bench PART [--quick] [--out DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import baseline, engine, export, reservations, scale
from bench.common import DEFAULT_OUT, Options

PARTS = {
    "engine": engine.run,
    "reservations": reservations.run,
    "export": export.run,
    "baseline": baseline.run,
    "scale": scale.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("part", choices=[*PARTS, "all"])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    arguments = parser.parse_args()
    options = Options(quick=arguments.quick, out=arguments.out)
    parts = list(PARTS) if arguments.part == "all" else [arguments.part]
    for part in parts:
        path = PARTS[part](options)
        if path is not None:
            print(f"{part}: wrote {path}")


if __name__ == "__main__":
    main()
