"""The profile benchmark's arithmetic: py-spy raw stacks to thread time per debit by layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import IDLE, OTHER, SAMPLES_PER_S, breakdown, layer_of

MAIN = "thread (0x1): MainThread"
WORKER = "thread (0x2): Trio thread 0"
LOOP = "run (api/server.py:90);unrolled_run (trio/_core/_run.py:2843)"
CACHE = "WorkerThread._work (trio/_core/_thread_cache.py:200)"
PRICING = "view (api/app.py:245);price_micros (engine/pricing.py:393)"
RAW = f"""\
{MAIN};{LOOP};LmdbStore.get_outcome (storage/lmdb_store.py:275) 30
{MAIN};{LOOP};EpollIOManager.get_events (trio/_core/_io_epoll.py:243) 100
{MAIN};{LOOP};{PRICING};dumps (json/__init__.py:231) 20
{MAIN};{LOOP};Event.wait (trio/_sync.py:80) 40
{WORKER};{CACHE};LmdbStore.commit (storage/lmdb_store.py:146) 50
{WORKER};{CACHE};LmdbStore.commit (storage/lmdb_store.py:160);encode_entry (storage/codec.py:146) 10
{WORKER};WorkerThread._work (trio/_core/_thread_cache.py:211) 70
{MAIN};<module> (x.py:1);sleep (time.py:1) 0
"""


@pytest.mark.parametrize(
    ("stack", "layer"),
    [
        (["view (api/app.py:245)", "price_micros (engine/pricing.py:393)", "dumps (json/x.py:1)"],
         "engine: price + decide"),
        (["LmdbStore.commit (storage/lmdb_store.py:146)", "encode_entry (storage/codec.py:9)"],
         "storage: encode records"),
        (["LmdbStore.commit (storage/lmdb_store.py:146)"], "storage: LMDB write + fsync"),
        (["handle (hypercorn/protocol/http_stream.py:1)", "send (trio/_socket.py:1)"],
         "trio: scheduling + I/O"),
        (["handle (hypercorn/protocol/http_stream.py:1)", "split (re.py:1)"], "hypercorn + h11"),
        (["<module> (x.py:1)"], OTHER),
    ],
)
def test_a_sample_belongs_to_its_innermost_known_layer(stack: list[str], layer: str) -> None:
    assert layer_of(stack) == layer


def test_breakdown_counts_work_per_debit_and_leaves_idle_waits_out(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    result = breakdown(raw, debits=10)
    assert result["idle_samples"] == 170
    assert result["samples"] == 150
    per_sample_us = 1e6 / SAMPLES_PER_S / 10
    assert result["thread_us_per_debit"] == pytest.approx(150 * per_sample_us)
    layers = result["layers"]
    assert IDLE not in layers
    assert layers["storage: LMDB write + fsync"]["us_per_debit"] == pytest.approx(
        50 * per_sample_us)
    assert layers["storage: LMDB reads"]["share"] == pytest.approx(30 / 150)
    assert layers["engine: price + decide"]["share"] == pytest.approx(20 / 150)
    assert layers["trio: scheduling + I/O"]["share"] == pytest.approx(40 / 150)
    assert layers["storage: encode records"]["share"] == pytest.approx(10 / 150)
    assert result["threads"]["trio thread"]["share"] == pytest.approx(90 / 150)
    assert result["threads"]["worker threads (commits)"]["share"] == pytest.approx(60 / 150)


def test_a_profile_without_samples_is_an_error_not_a_zero(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{WORKER};WorkerThread._work (trio/_core/_thread_cache.py:211) 9\n")
    with pytest.raises(RuntimeError, match="no samples"):
        breakdown(raw, debits=10)
