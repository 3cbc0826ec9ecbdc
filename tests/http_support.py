"""A real `zbilling serve` process on 127.0.0.1 for HTTP tests, stopped by its own PID.

`workers` is `serve --workers`: 1 runs everything in one process; 2 runs a supervisor with an
engine process and two HTTP worker processes. Modules whose `server` fixture takes the
`workers` fixture (tests/conftest.py) run every test in both modes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
SERVICE_KEY = "svc-test-key-0123456789"
ADMIN_KEY = "admin-test-key-0123456789"
# `serve --workers` values for the `workers` fixture (tests/conftest.py).
WORKER_MODES = (pytest.param(1, id="one-process"), pytest.param(2, id="two-workers"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, *, dev: bool = True, env: dict[str, str] | None = None,
                 port: int | None = None, args: tuple[str, ...] = (), workers: int = 1) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "SERVICE_API_KEY": SERVICE_KEY, "ADMIN_API_KEY": ADMIN_KEY,
                       **(env or {})}
        argv = [sys.executable, "-c", "from api.cli import main; main()", "serve",
                "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir),
                "--workers", str(workers), *args]
        if dev:
            argv.append("--dev")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200 and \
                        self.connected_workers() in (None, self.workers):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError("server did not become ready")

    def connected_workers(self) -> int | None:
        """Workers connected to the engine, as the engine counts them (None in one process)."""
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("zbilling_engine_connected_workers "):
                return int(float(line.split()[1]))
        return None

    def children(self, role: str) -> list[int]:
        """PIDs of the supervisor's `role` ("engine" or "worker") processes (Linux /proc)."""
        found = []
        # Children of any of its threads (trio starts processes from a worker thread).
        for child in " ".join(path.read_text() for path in
                              Path(f"/proc/{self.process.pid}/task").glob("*/children")).split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"api.supervisor" in argv and argv[argv.index(b"api.supervisor") + 1] == \
                    role.encode():
                found.append(int(child))
        return found

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait; returns the exit code and everything it printed."""
        self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.process.returncode, output

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=STOP_TIMEOUT_S)


def service_headers(**extra: str) -> dict[str, str]:
    return {"X-API-Key": SERVICE_KEY, **extra}


def user_headers(user: object) -> dict[str, str]:
    return {"Authorization": f"Bearer test-token:{user}"}


class JwksServer:
    """A JWKS issuer on 127.0.0.1 (threads) serving `keys` at /.well-known/jwks.json (404
    elsewhere), optionally slow to answer."""

    def __init__(self, keys: list[dict[str, Any]], delay_s: float = 0.0) -> None:
        document = json.dumps({"keys": keys}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def do_GET(self) -> None:
                time.sleep(delay_s)
                status = 200 if self.path == "/.well-known/jwks.json" else 404
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def rsa_signing_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    """A fresh RS256 key and its public JWK (`kid` as given)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return private, public_jwk
