"""`serve --workers 2` as real processes: crashes of the engine and of a worker under load,
a malformed frame on the engine socket, the drain on SIGTERM, one view in /metrics.

Every load loop is bounded by a count and a deadline; processes are stopped by their PID."""

from __future__ import annotations

import collections
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from actors.engine_socket import SOCKET_NAME
from storage.lmdb_store import LmdbStore
from storage.verify import verify_store
from tests.conftest import new_user
from tests.fake_lago import FakeLago
from tests.http_support import ADMIN_KEY, ROOT, Server, service_headers, user_headers

pytestmark = pytest.mark.slow

FUNDS = 10**9
CLIENTS = 16
LOAD_DEADLINE_S = 90
RESTART_TIMEOUT_S = 30


def open_funded_account(server: Server) -> object:
    user = new_user()
    assert httpx.post(f"{server.url}/v1/accounts", headers=user_headers(user)).status_code == 201
    granted = httpx.post(f"{server.url}/v1/credits/add", headers={"X-Admin-Key": ADMIN_KEY},
                         json={"user_id": str(user), "amount_cents": FUNDS})
    assert granted.status_code == 200, granted.text
    return user


class Load:
    """CLIENTS threads debiting 1 credit per event; each event is sent again (same id) until
    it is acknowledged: 200, or 409 duplicate_event for an earlier attempt that was applied."""

    def __init__(self, server: Server, user: object, events_per_client: int) -> None:
        self.server = server
        self.user = user
        self.events_per_client = events_per_client
        self.acknowledged: list[str] = []
        self.answers: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + LOAD_DEADLINE_S
        self._threads = [threading.Thread(target=self._client, args=(index,), daemon=True)
                         for index in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        for thread in self._threads:
            thread.join(LOAD_DEADLINE_S)
        assert not any(thread.is_alive() for thread in self._threads), "load did not finish"

    def wait_for(self, acks: int) -> None:
        while len(self.acknowledged) < acks:
            assert time.monotonic() < self._deadline, (len(self.acknowledged), self.answers)
            assert any(thread.is_alive() for thread in self._threads), self.answers
            time.sleep(0.01)

    def _record(self, answer: str, event_id: str | None = None, problem: str | None = None
                ) -> None:
        with self._lock:
            self.answers[answer] += 1
            if event_id is not None:
                self.acknowledged.append(event_id)
            if problem is not None:
                self.unexpected.append(problem)

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=15) as http:
            for number in range(self.events_per_client):
                event_id = f"c{index}-{number}"
                while time.monotonic() < self._deadline:
                    try:
                        answer = http.post(f"{self.server.url}/v1/usage",
                                           headers=service_headers(),
                                           json={"event_id": event_id,
                                                 "user_id": str(self.user), "cost_cents": 1})
                    except httpx.TransportError as error:
                        self._record(f"transport:{type(error).__name__}")
                        time.sleep(0.01)
                        continue
                    code = (answer.json().get("error") or {}).get("code", "") \
                        if answer.status_code != 200 else ""
                    if answer.status_code == 200 or code == "duplicate_event":
                        self._record(f"{answer.status_code}{':' + code if code else ''}",
                                     event_id)
                        break
                    if answer.status_code == 503 and code in ("engine_unavailable",
                                                              "overloaded") \
                            and answer.headers.get("Retry-After"):
                        self._record(f"503:{code}")
                        time.sleep(0.01)
                        continue
                    self._record(str(answer.status_code), problem=answer.text)
                    return

    @property
    def event_ids(self) -> set[str]:
        return {f"c{index}-{number}" for index in range(CLIENTS)
                for number in range(self.events_per_client)}


def assert_exactly_once(data_dir: Path, load: Load) -> None:
    """Every event acknowledged is stored, each once: the balance fell by one credit per
    stored event and by nothing else."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        stored = {outcome.key for outcome in store.iter_outcomes() if outcome.scope == "usage"}
        account = store.get_account(load.user)  # type: ignore[arg-type]
        report = verify_store(store)
    finally:
        store.close()
    assert report.ok, report.violations
    assert stored == set(load.acknowledged) == load.event_ids
    assert account is not None
    assert account.balance_cents == FUNDS - len(stored)


def wait_until(condition: Callable[[], bool], timeout_s: float = RESTART_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def all_workers_connected(server: Server) -> bool:
    try:
        return server.connected_workers() == server.workers
    except httpx.TransportError:
        return False


def test_sigkill_of_the_engine_under_load_loses_and_doubles_nothing(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    try:
        user = open_funded_account(server)
        with Load(server, user, events_per_client=150) as load:
            for kill in range(1, 4):
                load.wait_for(500 * kill)
                (engine,) = server.children("engine")
                os.kill(engine, signal.SIGKILL)
                # The supervisor starts another engine; the workers reconnect by themselves.
                wait_until(lambda engine=engine: server.children("engine") not in ([], [engine]))
                wait_until(lambda: all_workers_connected(server))
        assert load.unexpected == []
        # The outage was answered 503 engine_unavailable with Retry-After, never 500.
        assert load.answers["503:engine_unavailable"] > 0, load.answers
        code, output = server.stop()
        assert code == 0, output
        assert output.count("engine exited with -9") == 3, output
    finally:
        if server.process.poll() is None:
            server.kill()
    assert_exactly_once(tmp_path / "data", load)


def test_sigkill_of_a_worker_under_load_the_other_keeps_answering(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    try:
        user = open_funded_account(server)
        with Load(server, user, events_per_client=100) as load:
            load.wait_for(300)
            killed, _ = server.children("worker")
            os.kill(killed, signal.SIGKILL)
            acks_at_kill = len(load.acknowledged)
            # The other worker's socket takes the new connections at once.
            load.wait_for(acks_at_kill + 100)
            wait_until(lambda: killed not in server.children("worker")
                       and len(server.children("worker")) == 2)
            wait_until(lambda: all_workers_connected(server))
        assert load.unexpected == []
        code, output = server.stop()
        assert code == 0, output
        assert "worker 1 exited with -9" in output or "worker 2 exited with -9" in output
    finally:
        if server.process.poll() is None:
            server.kill()
    assert_exactly_once(tmp_path / "data", load)


def test_a_malformed_frame_on_the_engine_socket_is_dropped_and_serving_goes_on(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    try:
        path = tmp_path / "data" / SOCKET_NAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as intruder:
            intruder.settimeout(10)
            intruder.connect(str(path))
            intruder.sendall(b"\x00\x00\x00\x08not json")
            assert intruder.recv(100) == b""  # disconnected
        user = open_funded_account(server)
        answer = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                            json={"event_id": "after", "user_id": str(user), "cost_cents": 1})
        assert answer.status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "zbilling_engine_socket_protocol_errors_total 1.0" in metrics
        code, output = server.stop()
        assert code == 0
        assert "malformed frame" in output
    finally:
        if server.process.poll() is None:
            server.kill()


def test_sigterm_drains_requests_in_flight_and_every_process_exits_0(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    children = server.children("engine") + server.children("worker")
    user = open_funded_account(server)
    answered: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as http:
            for number in range(10_000):
                if stop.is_set():
                    return
                event_id = f"d{index}-{number}"
                try:
                    answer = http.post(f"{server.url}/v1/usage", headers=service_headers(),
                                       json={"event_id": event_id, "user_id": str(user),
                                             "cost_cents": 1})
                except httpx.TransportError:
                    return  # the listener is closed: the drain began
                answered.append((answer.status_code, event_id))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answered) > 200)
    code, output = server.stop()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert code == 0, output
    assert "journal flushed" in output
    # Every request that got an answer during the drain got its debit, not an error.
    assert {status for status, _ in answered} == {200}
    for child in children:
        assert not Path(f"/proc/{child}").exists() or \
            Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    store = LmdbStore(tmp_path / "data", readonly=True)
    try:
        for _, event_id in answered:
            assert store.get_outcome("usage", event_id) is not None, event_id
    finally:
        store.close()


def test_a_second_server_on_the_same_data_directory_refuses_to_start(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    try:
        second = subprocess.run(
            [sys.executable, "-c", "from api.cli import main; main()", "serve", "--dev",
             "--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2
        assert "in use by another z-billing process" in second.stderr
        # Nor may a second server share the port (SO_REUSEPORT would let it in).
        other = subprocess.run(
            [sys.executable, "-c", "from api.cli import main; main()", "serve", "--dev",
             "--workers", "2", "--listen", f"127.0.0.1:{server.port}",
             "--data-dir", str(tmp_path / "other")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert other.returncode == 2
        assert "cannot listen on" in other.stderr
        assert httpx.get(f"{server.url}/ready").status_code == 200
    finally:
        server.stop()


def test_metrics_on_any_worker_sum_every_process(tmp_path):
    server = Server(tmp_path / "data", workers=2)
    try:
        open_funded_account(server)  # calls to the engine, for the round-trip histogram
        requests = 60
        for _ in range(requests):  # a connection each: the kernel spreads them over both
            assert httpx.get(f"{server.url}/health").status_code == 200
        for _ in range(4):
            text = httpx.get(f"{server.url}/metrics").text
            samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                           if line and not line.startswith("#"))
            health = float(samples['zbilling_http_requests_total{method="GET",route="/health",'
                                   'status="200"}'])
            # The kernel spread the connections over both workers (all 60 on one has odds
            # of 2**-59): the total is only right if both processes' counts are summed.
            assert health == requests
            assert samples["zbilling_engine_connected_workers"] == "2.0"
            assert samples["zbilling_engine_up"] == "1.0"
            assert any(name.startswith("zbilling_engine_round_trip_seconds_bucket")
                       for name in samples)
            assert "zbilling_journal_commit_seconds_count" in samples
            assert text.count("# TYPE zbilling_http_requests_total ") == 1
    finally:
        server.stop()


def test_lago_export_runs_in_the_engine(tmp_path):
    lago = FakeLago()
    try:
        server = Server(tmp_path / "data", workers=2,
                        env={"LAGO_API_URL": lago.url, "LAGO_API_KEY": lago.api_key})
        try:
            user = open_funded_account(server)
            for number in range(20):
                answer = httpx.post(f"{server.url}/v1/usage", headers=service_headers(),
                                    json={"event_id": f"lago-{number}", "user_id": str(user),
                                          "metric": {"type": "api_calls", "count": 2}})
                assert answer.status_code == 200, answer.text
            wait_until(lambda: len(lago.events) == 20)
            assert set(lago.events) == {f"lago-{n}:api_calls" for n in range(20)}
        finally:
            server.stop()
    finally:
        lago.stop()
    assert lago.schema_errors == []
