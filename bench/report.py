"""`bench/results/report.md` and PNG charts from whatever result files exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

PARTS = ("engine", "http", "batch", "reservations", "export", "scale", "baseline", "profile",
         "instructions")


def load(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for part in PARTS:
        path = out / f"{part}.json"
        if path.exists():
            found[part] = json.loads(path.read_text())
    return found


def figures_of(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: value for name, value in document.items()
            if isinstance(value, dict) and "median" in value}


def chart_throughput(results: dict[str, dict[str, Any]], out: Path) -> Path | None:
    baseline = results.get("baseline")
    if baseline is None:
        return None
    clients = baseline["parameters"]["clients"]
    fig, axis = plt.subplots(figsize=(6, 4))
    for prefix, label in (("engine", "z-billing engine"), ("postgres", "PostgreSQL")):
        values = [baseline[f"{prefix}_debits_per_s_c{c}"]["median"] for c in clients]
        axis.plot(clients, values, marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent clients / producers")
    axis.set_ylabel("durable debits per second (median)")
    axis.set_title("Durable debits: throughput against concurrency")
    axis.legend()
    path = out / "throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def chart_latency(results: dict[str, dict[str, Any]], out: Path) -> Path | None:
    engine = results.get("engine")
    if engine is None:
        return None
    labels = ["p50 @64", "p99 @64", "p50 @256", "p99 @256"]
    keys = ["p50_ms", "p99_ms", "p50_ms_256", "p99_ms_256"]
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.bar(labels, [engine[key]["median"] for key in keys])
    axis.set_ylabel("milliseconds (median of runs)")
    axis.set_title("Engine debit latency percentiles")
    path = out / "latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def chart_export_lag(results: dict[str, dict[str, Any]], out: Path) -> Path | None:
    export = results.get("export")
    if export is None or not export.get("lag_series_s"):
        return None
    fig, axis = plt.subplots(figsize=(6, 4))
    for index, series in enumerate(export["lag_series_s"]):
        if series:
            times, lags = zip(*series, strict=True)
            axis.plot(times, lags, label=f"run {index + 1}")
    axis.set_xlabel("seconds since load started")
    axis.set_ylabel("export lag (s)")
    axis.set_title("Lago export lag under sustained debits")
    axis.legend()
    path = out / "export_lag.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def profile_tables(document: dict[str, Any]) -> list[str]:
    """Thread time per debit by layer, for each profile `python -m bench profile` took."""
    lines = ["## profile", ""]
    profiles = {"HTTP POST /v1/usage": document["http"]["usage"],
                "HTTP bare GET /health (per request)": document["http"]["bare"],
                "engine in-process": document["engine"]}
    for title, profile in profiles.items():
        lines += [f"### {title}: {profile['thread_us_per_debit']:.1f} µs of thread time a debit",
                  "", "| layer | µs a debit | share |", "|---|---|---|"]
        lines += [f"| {layer} | {figures['us_per_debit']:.1f} | {figures['share']:.1%} |"
                  for layer, figures in profile["layers"].items()]
        lines.append("")
    lines += [f"Parameters: `{json.dumps(document['parameters'])}`", ""]
    return lines


def write_report(out: Path) -> Path:
    results = load(out)
    lines = ["# z-billing benchmark report", ""]
    machine = next(iter(results.values()))["machine"] if results else {}
    if machine:
        lines += [
            f"Machine: {machine['cpu_model']}, {machine['cores']} cores, Python "
            f"{machine['python']}, commit {machine['git_commit']}.",
            "",
        ]
    for part, document in results.items():
        if part == "profile":
            lines += profile_tables(document)
            continue
        lines += [f"## {part}", "", "| figure | median | min | max |", "|---|---|---|---|"]
        for name, value in figures_of(document).items():
            lines.append(f"| {name} | {value['median']:.3f} | {value['min']:.3f} | "
                         f"{value['max']:.3f} |")
        lines += ["", f"Parameters: `{json.dumps(document['parameters'])}`", ""]
    for chart in (chart_throughput(results, out), chart_latency(results, out),
                  chart_export_lag(results, out)):
        if chart is not None:
            lines += [f"![{chart.stem}]({chart.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
