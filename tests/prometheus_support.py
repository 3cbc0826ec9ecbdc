"""A real Prometheus server (Debian's `prometheus` package) on 127.0.0.1, for the Prometheus
tests and the dashboard picture (`python -m bench dashboard`); stopped by its own PID."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import terminate
from tests.http_support import ROOT, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = ROOT / "integrations" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "integrations" / "prometheus" / "grafana-dashboard.json"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def readme_prometheus_config() -> dict[str, Any]:
    """The scrape configuration the README's "Prometheus and Grafana" section gives."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Prometheus and Grafana"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    return yaml.safe_load(block[:block.index("```")])


class Prometheus:
    """A `prometheus` process on 127.0.0.1 scraping `target` every second with the README's
    scrape configuration, stopped by its PID."""

    def __init__(self, workdir: Path, target: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = readme_prometheus_config()
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("prometheus did not become ready")

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expression, body)
        assert body["data"]["resultType"] == "vector", (expression, body["data"])
        return body["data"]["result"]

    def value(self, expression: str) -> float:
        [sample] = self.query(expression)
        return float(sample["value"][1])

    def stop(self) -> None:
        terminate(self.process, STOP_TIMEOUT_S)
        self.log.close()

    def query_range(self, expression: str, start: float, end: float,
                    step_s: float) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query_range", timeout=30, params={
            "query": expression, "start": start, "end": end, "step": step_s})
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expression, body)
        return body["data"]["result"]
