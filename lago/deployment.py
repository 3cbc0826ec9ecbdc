"""`LagoDeployment`: a self-hosted Lago run with `docker compose` in one directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lago.config import LagoConfig

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
COMPOSE_UP_TIMEOUT_S = 600.0
COMPOSE_PULL_TIMEOUT_S = 1800.0
COMPOSE_COMMAND_TIMEOUT_S = 120.0
LOGS_TAIL_MAX = 10_000
ERROR_TAIL_CHARS = 2000


class LagoDeploymentError(RuntimeError):
    pass


class DockerNotFound(LagoDeploymentError):
    pass


class ComposeFileMissing(LagoDeploymentError):
    pass


class ComposeCommandFailed(LagoDeploymentError):
    pass


class CommandTimedOut(LagoDeploymentError):
    pass


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str  # running / stopped / starting / unknown
    health: str


@dataclass(frozen=True)
class DeploymentStatus:
    services: tuple[ServiceState, ...]

    @property
    def running(self) -> bool:
        return bool(self.services) and all(s.state == "running" for s in self.services)


def service_state(container_state: str, health: str) -> str:
    """Docker's State and Health, as one of running / stopped / starting / unknown."""
    state = container_state.lower()
    if state == "running":
        return "starting" if health.lower() in ("starting", "unhealthy") else "running"
    if state == "restarting":
        return "starting"
    if state in ("exited", "dead", "created", "removing", "paused"):
        return "stopped"
    return "unknown"


def parse_ps(output: str) -> DeploymentStatus:
    """`docker compose ps --format json`: one JSON array (older Compose) or one object per
    line (newer Compose)."""
    text = output.strip()
    if not text:
        return DeploymentStatus(())
    try:
        rows = json.loads(text) if text.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except ValueError as error:
        raise ComposeCommandFailed(f"cannot read `docker compose ps` output: {error}") from None
    services = []
    for row in rows:
        if not isinstance(row, dict):
            raise ComposeCommandFailed("`docker compose ps` gave an unexpected shape")
        name = str(row.get("Service") or row.get("Name") or "?")
        health = str(row.get("Health") or "")
        services.append(ServiceState(name, service_state(str(row.get("State", "")), health),
                                     health))
    return DeploymentStatus(tuple(sorted(services, key=lambda s: s.name)))


class LagoDeployment:
    def __init__(self, path: Path, config: LagoConfig, docker: str = "docker") -> None:
        self.path = path
        self.config = config
        self.docker = docker

    def _compose(self, *arguments: str, timeout_s: float) -> str:
        executable = shutil.which(self.docker)
        if executable is None:
            raise DockerNotFound(f"`{self.docker}` is not on PATH: install Docker first")
        if not any((self.path / name).exists() for name in COMPOSE_FILE_NAMES):
            raise ComposeFileMissing(f"no compose file in {self.path} "
                                     f"(looked for {', '.join(COMPOSE_FILE_NAMES)})")
        try:
            result = subprocess.run(
                [executable, "compose", *arguments], cwd=self.path, capture_output=True,
                text=True, timeout=timeout_s, env={**os.environ, **self.config.environment()},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(f"`docker compose {arguments[0]}` took longer than "
                                  f"{timeout_s:g} s") from None
        if result.returncode != 0:
            raise ComposeCommandFailed(
                f"`docker compose {arguments[0]}` exited {result.returncode}: "
                f"{result.stderr.strip()[-ERROR_TAIL_CHARS:]}"
            )
        return result.stdout

    def up(self, timeout_s: float = COMPOSE_UP_TIMEOUT_S) -> None:
        self._compose("up", "-d", timeout_s=timeout_s)

    def down(self, timeout_s: float = COMPOSE_COMMAND_TIMEOUT_S) -> None:
        self._compose("down", timeout_s=timeout_s)

    def restart(self, timeout_s: float = COMPOSE_COMMAND_TIMEOUT_S) -> None:
        self._compose("restart", timeout_s=timeout_s)

    def pull(self, timeout_s: float = COMPOSE_PULL_TIMEOUT_S) -> None:
        self._compose("pull", timeout_s=timeout_s)

    def status(self, timeout_s: float = COMPOSE_COMMAND_TIMEOUT_S) -> DeploymentStatus:
        return parse_ps(self._compose("ps", "--all", "--format", "json", timeout_s=timeout_s))

    def logs(self, service: str | None = None, tail: int = 100,
             timeout_s: float = COMPOSE_COMMAND_TIMEOUT_S) -> str:
        if not 1 <= tail <= LOGS_TAIL_MAX:
            raise LagoDeploymentError(f"tail must be between 1 and {LOGS_TAIL_MAX}")
        arguments = ["logs", "--no-color", "--tail", str(tail)]
        if service:
            arguments.append(service)
        return self._compose(*arguments, timeout_s=timeout_s)
