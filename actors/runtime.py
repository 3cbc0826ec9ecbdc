"""Starting and stopping the engine: lock, store, journal, actors, in one nursery."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from actors.billing import Billing
from actors.config import load_pricing
from actors.deadlines import Deadlines
from actors.journal import Journal
from actors.metrics import EngineMetrics, Exporter
from actors.system import ACTOR_IDLE_S, ActorSystem, WallClock
from engine.lots import LotDefaults
from engine.plans import Plans
from engine.pricing import PricingConfig
from storage.datadir_lock import DataDirLock
from storage.lmdb_store import CHECKPOINT_INTERVAL_S, MAP_SIZE_INITIAL_BYTES, LmdbStore
from storage.store import Store

# Builds the outbox exporter once the store and journal exist (integrations/lago has one).
ExporterFactory = Callable[[Store, Journal], Exporter]

# How long a shutdown waits for the last batch to become durable.
SHUTDOWN_FLUSH_TIMEOUT_S = 30.0


def system_wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def offset_clock(path: Path) -> WallClock:
    """The system clock plus the milliseconds written in `path` (0 while it is missing or
    empty), read again whenever the file changes: tests move an engine's time this way."""
    seen: list[Any] = [None, 0]

    def now_ms() -> int:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return system_wall_clock_ms()
        if stamp != seen[0]:
            seen[:] = [stamp, int(path.read_text().strip() or 0)]
        return system_wall_clock_ms() + int(seen[1])

    return now_ms


@asynccontextmanager
async def open_billing(
    data_dir: Path,
    *,
    pricing: PricingConfig | None = None,
    plans: Plans | None = None,
    wall_clock_ms: WallClock = system_wall_clock_ms,
    map_size_bytes: int = MAP_SIZE_INITIAL_BYTES,
    actor_idle_s: float = ACTOR_IDLE_S,
    registry: CollectorRegistry | None = None,
    wrap_store: Callable[[Store], Store] | None = None,
    exporter: ExporterFactory | None = None,
    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    lot_defaults: LotDefaults | None = None,
) -> AsyncIterator[Billing]:
    """Run the engine for the duration of the block; on exit, flush what was submitted."""
    lock = DataDirLock(data_dir)
    try:
        lmdb_store = LmdbStore(data_dir, map_size_bytes,
                               checkpoint_interval_s=checkpoint_interval_s)
        try:
            store: Store = wrap_store(lmdb_store) if wrap_store else lmdb_store
            pricing = pricing if pricing is not None else load_pricing()
            # The price table bounds the metrics' model label.
            metrics = EngineMetrics(registry if registry is not None else CollectorRegistry(),
                                    pricing)
            journal = Journal(store, export=exporter is not None)
            system = ActorSystem(
                store,
                journal,
                wall_clock_ms,
                idle_s=actor_idle_s,
                last_transaction_id=store.last_transaction_id(),
            )
            deadlines = Deadlines(system, store, wall_clock_ms)
            journal.listeners += [metrics.observe_commit, deadlines.committed]
            journal.checkpoint_listeners.append(metrics.checkpoint_seconds.observe)
            for hold in store.iter_open_holds():
                system.counters.held_cents += hold.amount_cents
                system.counters.open_holds += 1
            metrics.watch(system, journal, deadlines)
            export = exporter(store, journal) if exporter is not None else None
            if export is not None:
                metrics.watch_export(export, store, wall_clock_ms)
            billing = Billing(
                store=store,
                journal=journal,
                system=system,
                pricing=pricing,
                plans=plans if plans is not None else Plans.from_config(None),
                wall_clock_ms=wall_clock_ms,
                metrics=metrics,
                deadlines=deadlines,
                exporter=export,
                lot_defaults=lot_defaults if lot_defaults is not None else LotDefaults(),
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                await nursery.start(journal.run_checkpoints)
                await nursery.start(system.run_passivation)
                # A deadline that passed while we were down is acted on at once.
                await nursery.start(deadlines.run)
                if export is not None:
                    await nursery.start(export.run)
                try:
                    yield billing
                finally:
                    with trio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT_S) as flush:
                        flush.shield = True
                        await journal.close()
                        if journal.failure is None:
                            # A clean stop leaves nothing to replay at the next start.
                            await journal.checkpoint()
                    nursery.cancel_scope.cancel()
        finally:
            lmdb_store.close()
    finally:
        lock.release()
