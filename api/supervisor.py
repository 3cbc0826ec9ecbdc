"""`zbilling serve --workers N` (N ≥ 2): the parent process.

It starts one engine process (which takes the data directory lock: a second server on the
same directory fails there, before anything else is touched) and, once the engine listens on
its socket, N HTTP worker processes, each with its own SO_REUSEPORT listening socket. A child
that dies is started again (with backoff); while the engine is away the workers answer 503
`engine_unavailable` and reconnect by themselves. SIGTERM or SIGINT drains: the workers stop
accepting and finish their requests, then the engine commits what it accepted, and every
process exits 0.

Children are `python -m api.supervisor ROLE READY_FD` with the settings pickled on stdin (the
parent's own settings, generated dev keys included); each writes one line to READY_FD when it
serves. They ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the parent
alone decides the order of the shutdown) and stop by themselves if the parent disappears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from actors.runtime import SHUTDOWN_FLUSH_TIMEOUT_S
from api.server import (
    SHUTDOWN_GRACE_S,
    configure_logging,
    print_banner,
    serve_engine,
    serve_worker,
)
from api.settings import Settings
from storage.datadir_lock import DataDirLocked

log = logging.getLogger("zbilling.supervisor")

ENGINE = "engine"
WORKER = "worker"
EXIT_DATA_DIR_LOCKED = 3
START_TIMEOUT_S = 120.0  # the engine replays its log before it listens
RESTART_DELAY_MIN_S = 0.1
RESTART_DELAY_MAX_S = 5.0
STABLE_UPTIME_S = 30.0  # a child that ran this long restarts without backoff
WORKER_STOP_TIMEOUT_S = SHUTDOWN_GRACE_S + 10
ENGINE_STOP_TIMEOUT_S = SHUTDOWN_FLUSH_TIMEOUT_S + SHUTDOWN_GRACE_S + 10
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ListenError(OSError):
    """The listen address is taken (by another server, or anything else)."""


class Child:
    """One engine or worker process, started again as often as needed."""

    def __init__(self, role: str, number: int, settings: Settings, env: dict[str, str]) -> None:
        self.role = role
        self.name = role if role == ENGINE else f"{role} {number}"
        self._settings = settings
        self._env = env
        self.process: trio.Process | None = None
        self._ready_fd: int | None = None  # spawned, not yet started
        self.ready = False

    async def spawn(self) -> None:
        """Start the process; it imports everything, then waits for its settings (`start`),
        so that the workers' start-up overlaps the engine's."""
        self.ready = False
        read_fd, write_fd = os.pipe()
        try:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "api.supervisor", self.role, self.name, str(write_fd)],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), env=self._env)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._ready_fd = read_fd

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> bool:
        """Let the spawned process (spawned now if it is not) go, and wait until it serves;
        False if it exited (or hung) first. Cancelled meanwhile, it kills the process."""
        if self._ready_fd is None:
            await self.spawn()
        assert self.process is not None and self.process.stdin is not None
        read_fd, self._ready_fd = self._ready_fd, None
        try:
            async with self.process.stdin:
                await self.process.stdin.send_all(pickle.dumps(self._settings))
            async with trio.lowlevel.FdStream(read_fd) as ready:
                with trio.move_on_after(timeout_s):
                    self.ready = await ready.receive_some() != b""  # "": the child exited
            if not self.ready:
                with trio.move_on_after(timeout_s):
                    await self.process.wait()  # its exit code says why
        except BaseException:
            self.kill()
            raise
        return self.ready

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def signal(self, number: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(number)

    async def stop(self, timeout_s: float) -> bool:
        """SIGTERM, wait (SIGKILL past `timeout_s`); True when it exited 0."""
        if self.process is None:
            return True
        self.signal(signal.SIGTERM)
        with trio.move_on_after(timeout_s):
            await self.process.wait()
        if self.process.returncode is None:
            log.error("%s did not stop within %.0f s: killed", self.name, timeout_s)
            self.kill()
            await self.process.wait()
        # A child still starting when the stop came has no handler yet: SIGTERM ends it.
        return self.process.returncode == 0 or not self.ready


class Supervisor:
    def __init__(self, settings: Settings, workers: int, metrics_dir: Path) -> None:
        base_env = {name: value for name, value in os.environ.items() if name != METRICS_ENV}
        self._settings = settings
        self.engine = Child(ENGINE, 0, settings, base_env)
        self.workers = [Child(WORKER, number, settings, {**base_env, METRICS_ENV: str(metrics_dir)})
                        for number in range(1, workers + 1)]
        self._started: set[str] = set()

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            for child in (self.engine, *self.workers):
                await child.spawn()
            try:
                # The engine takes the data directory lock: nothing else starts without it.
                if not await self.engine.start():
                    code = self.engine.process.returncode if self.engine.process else None
                    if code == EXIT_DATA_DIR_LOCKED:
                        raise DataDirLocked(f"data directory {self._settings.data_dir} is in "
                                            "use by another z-billing process")
                    raise RuntimeError(f"the engine process did not start (exit code {code})")
                try:
                    _check_listen_address(self._settings)
                except ListenError:
                    await self.engine.stop(ENGINE_STOP_TIMEOUT_S)
                    raise
            except BaseException:
                for worker in self.workers:
                    worker.kill()
                raise
            print_banner(self._settings)
            print(f"  processes: {len(self.workers)} HTTP workers and 1 engine "
                  f"(supervisor pid {os.getpid()})", flush=True)
            async with trio.open_nursery() as keepers:
                keepers.start_soon(self._keep, self.engine, True)
                for worker in self.workers:
                    keepers.start_soon(self._keep, worker, False)
                async for received in signals:
                    print(f"received {signal.Signals(received).name}: draining", flush=True)
                    break
                keepers.cancel_scope.cancel()  # no restarts from here on
        clean = await self._drain()
        print("z-billing stopped" + ("" if clean else " (a process did not exit cleanly)"),
              flush=True)
        return 0 if clean else 1

    async def _keep(self, child: Child, running: bool) -> None:
        """Start `child` again whenever it exits (backoff while it keeps failing)."""
        delay = RESTART_DELAY_MIN_S
        while True:
            if not running and await child.start():
                self._announce(child)
            running = False
            began = trio.current_time()
            assert child.process is not None
            await child.process.wait()
            if trio.current_time() - began > STABLE_UPTIME_S:
                delay = RESTART_DELAY_MIN_S
            log.error("%s exited with %s; starting it again in %.1f s", child.name,
                      child.process.returncode, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    def _announce(self, child: Child) -> None:
        if child.role == WORKER and child.name not in self._started:
            self._started.add(child.name)
            if len(self._started) == len(self.workers):
                print("z-billing ready", flush=True)

    async def _drain(self) -> bool:
        """Workers first (they finish their requests, which need the engine), then the
        engine, which then has nothing new to accept and commits what it took."""
        clean = True

        async def stop_worker(worker: Child) -> None:
            nonlocal clean
            clean &= await worker.stop(WORKER_STOP_TIMEOUT_S)

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(stop_worker, worker)
        return await self.engine.stop(ENGINE_STOP_TIMEOUT_S) and clean


def _check_listen_address(settings: Settings) -> None:
    """Refuse to share the port: the workers' SO_REUSEPORT sockets would accept a second
    server's workers into the same group. A plain bind fails while anyone listens there."""
    host, port = settings.host_port
    with _tcp_socket(host) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise ListenError(f"cannot listen on {settings.listen}: {error.strerror}") from None


def _tcp_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def run_supervised(settings: Settings, workers: int) -> None:
    """Serve with `workers` HTTP processes; exits with the supervisor's code."""
    configure_logging("supervisor")
    host, port = settings.host_port
    if port == 0:
        # Every worker must bind the same port: pick it once.
        with _tcp_socket(host) as probe:
            probe.bind((host.strip("[]"), 0))
            port = probe.getsockname()[1]
        settings = dataclasses.replace(settings, listen=f"{host}:{port}")
    metrics_dir = Path(tempfile.mkdtemp(prefix="zbilling-metrics-"))
    try:
        code = trio.run(Supervisor(settings, workers, metrics_dir).run)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(code)


def _child_main(role: str, name: str, ready_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings: Settings = pickle.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    configure_logging(f"{name} pid {os.getpid()}")

    def ready() -> None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    if role == ENGINE:
        try:
            trio.run(serve_engine, settings, ready)
        except DataDirLocked as error:
            print(f"zbilling engine: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_DATA_DIR_LOCKED)
    else:
        metrics_dir = Path(os.environ[METRICS_ENV])
        trio.run(serve_worker, settings, metrics_dir, ready)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        _child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
