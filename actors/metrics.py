"""Engine metrics. Per-command counts are plain integers read at scrape time, so the hot
path never takes a prometheus-client lock; per-batch figures are observed once per commit."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.deadlines import Deadlines
from actors.journal import Batch, Journal
from actors.system import ActorSystem, WallClock
from engine.commands import UsageEventRecord
from engine.ledger import EntryType, LedgerEntry
from engine.lots import LotCategory
from engine.pricing import PricingConfig
from engine.usage import LlmTokens
from engine.usage import Metric as UsageMetric
from storage.store import Store

BATCH_COMMANDS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
CHECKPOINT_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The `model` label of usage metrics: a model of the price table as "provider/model" (aliases
# resolved), every other model "other", a metric without a model "none". Callers choose model
# names, so only the table may bound the label's values.
MODEL_OTHER = "other"
MODEL_NONE = "none"
# Label lookups remembered per (provider, model) as sent; unknown names beyond it are resolved
# again each time instead of growing the cache without bound.
MODEL_LABELS_CACHED_MAX = 10_000


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry, pricing: PricingConfig | None = None) -> None:
        self.registry = registry
        self._pricing = pricing if pricing is not None else PricingConfig()
        self._model_labels: dict[tuple[str, str], str] = {}
        self.batch_commands = Histogram(
            "zbilling_journal_batch_commands",
            "Commands made durable by one group commit",
            buckets=BATCH_COMMANDS_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "zbilling_journal_commit_seconds",
            "Duration of one group commit (encode, write, fsync)",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "zbilling_checkpoint_seconds",
            "Duration of one checkpoint of the log into the indexed databases",
            buckets=CHECKPOINT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.entries = Counter(
            "zbilling_ledger_entries",
            "Ledger entries committed, by type (usage entries are the debits)",
            ["type"],
            registry=registry,
        )
        self.credits = Counter(
            "zbilling_ledger_credits",
            "Credits moved by committed entries, by type (absolute value)",
            ["type"],
            registry=registry,
        )
        self.breakage_credits = Counter(
            "zbilling_breakage_credits",
            "Credits that expired unspent (breakage), by lot category",
            ["category"],
            registry=registry,
        )
        self.usage_events = Counter(
            "zbilling_usage_events",
            "Usage events debited (reservation commits included), by metric type and model",
            ["type", "model"],
            registry=registry,
        )
        self.usage_credits = Counter(
            "zbilling_usage_credits",
            "Credits debited by usage events (reservation commits included), by metric type "
            "and model",
            ["type", "model"],
            registry=registry,
        )

    def observe_commit(self, batch: Batch, duration_s: float) -> None:
        self.batch_commands.observe(batch.commands)
        self.commit_seconds.observe(duration_s)
        counts: Tally[str] = Tally()
        amounts: Tally[str] = Tally()
        usage_counts: Tally[tuple[str, str]] = Tally()
        usage_amounts: Tally[tuple[str, str]] = Tally()
        usage_labels = self._usage_labels
        # Most entries are usage: counted apart, so no enum member is hashed for them (an
        # Enum's __hash__ and `.value` are Python-level calls).
        usage_entries = usage_debited = 0
        for record in batch.records:
            kind = type(record)  # exact types: neither record type is subclassed
            if kind is LedgerEntry:
                if record.entry_type is EntryType.USAGE:
                    usage_entries += 1
                    usage_debited -= record.amount
                else:
                    counts[record.entry_type.value] += 1
                    amounts[record.entry_type.value] += abs(record.amount)
                    if record.entry_type is EntryType.EXPIRY:
                        self._count_breakage(record)
            elif kind is UsageEventRecord:
                labels = usage_labels(record.metric)
                usage_counts[labels] += 1
                usage_amounts[labels] += record.result.cost_cents
        if usage_entries:
            counts[EntryType.USAGE.value] += usage_entries
            amounts[EntryType.USAGE.value] += usage_debited
        for entry_type, count in counts.items():
            self.entries.labels(entry_type).inc(count)
            self.credits.labels(entry_type).inc(amounts[entry_type])
        for labels, count in usage_counts.items():
            self.usage_events.labels(*labels).inc(count)
            self.usage_credits.labels(*labels).inc(usage_amounts[labels])

    def _count_breakage(self, expiry: LedgerEntry) -> None:
        """An expiry entry says how much of each category it took (engine/expiry.py)."""
        for category in LotCategory:
            cents = expiry.metadata.get(f"{category.value}_cents", 0)
            if cents:
                self.breakage_credits.labels(category.value).inc(cents)

    def _usage_labels(self, metric: UsageMetric | None) -> tuple[str, str]:
        if metric is None:
            return "cost", MODEL_NONE  # a precomputed cost, no metric
        if not isinstance(metric, LlmTokens):
            return metric.type, MODEL_NONE
        key = (metric.provider, metric.model)
        label = self._model_labels.get(key)
        if label is None:
            (provider, model), price = self._pricing.resolve(*key)
            label = f"{provider}/{model}" if price is not None else MODEL_OTHER
            if len(self._model_labels) < MODEL_LABELS_CACHED_MAX:
                self._model_labels[key] = label
        return metric.type, label

    def watch(self, system: ActorSystem, journal: Journal, deadlines: Deadlines) -> None:
        self.registry.register(_RuntimeCollector(system, journal, deadlines))

    def watch_export(self, exporter: Exporter, store: Store, wall_clock_ms: WallClock) -> None:
        self.registry.register(_ExportCollector(exporter, store, wall_clock_ms))


class _RuntimeCollector(Collector):
    def __init__(self, system: ActorSystem, journal: Journal, deadlines: Deadlines) -> None:
        self._system = system
        self._journal = journal
        self._deadlines = deadlines

    def collect(self) -> Iterator[Metric]:
        counters = self._system.counters
        for name, help_text, value in (
            ("zbilling_insufficient_credits", "Debits refused for insufficient credits",
             counters.insufficient_credits),
            ("zbilling_duplicate_events", "Repeated idempotency keys answered with the "
             "original result", counters.duplicate_events),
            ("zbilling_backpressure_events", "Commands refused because a mailbox or the "
             "journal was full", counters.overloaded),
            ("zbilling_actor_crashes", "Commands that failed with an unexpected error",
             counters.crashes),
            ("zbilling_actor_loads", "Accounts loaded from storage into an actor",
             counters.loads),
            ("zbilling_actor_passivations", "Idle actors dropped from memory",
             counters.passivations),
            ("zbilling_reservations_opened", "Reservations that placed a hold",
             counters.reservations_opened),
            ("zbilling_reservation_commits", "Reservations committed with their actual usage",
             counters.reservation_commits),
            ("zbilling_reservation_commits_above_hold", "Commits that charged more than "
             "their hold", counters.reservation_commits_above_hold),
            ("zbilling_reservation_releases", "Reservations released by the caller",
             counters.reservation_releases),
            ("zbilling_reservation_expiries", "Reservations released by their expiry timer",
             counters.reservation_expiries),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family
        holds = GaugeMetricFamily("zbilling_open_holds", "Reservations currently holding credits")
        holds.add_metric([], counters.open_holds)
        yield holds
        held = GaugeMetricFamily("zbilling_held_credits", "Credits held by open reservations")
        held.add_metric([], counters.held_cents)
        yield held
        active = GaugeMetricFamily("zbilling_active_actors", "Accounts held in memory")
        active.add_metric([], self._system.active_actors)
        yield active
        pending = GaugeMetricFamily(
            "zbilling_journal_pending_commands", "Commands waiting for the next group commit"
        )
        pending.add_metric([], self._journal.pending_commands)
        yield pending
        waiting = GaugeMetricFamily(
            "zbilling_log_writes_waiting",
            "Writes durable in the log, not yet checkpointed into the indexed databases")
        waiting.add_metric([], self._journal.log_writes_waiting)
        yield waiting
        lag = GaugeMetricFamily(
            "zbilling_checkpoint_lag_seconds",
            "Age of the oldest write durable in the log and not yet checkpointed")
        lag.add_metric([], self._journal.checkpoint_lag_s)
        yield lag
        armed = GaugeMetricFamily("zbilling_deadlines_armed",
                                  "Deadlines due within the scheduler's horizon, in memory")
        armed.add_metric([], self._deadlines.armed)
        yield armed
        fired = CounterMetricFamily("zbilling_deadlines_fired",
                                    "Deadlines that came due and were acted on, by kind",
                                    labels=["kind"])
        for kind, count in sorted(self._deadlines.fired.items()):
            fired.add_metric([kind], count)
        yield fired
        cpu = CounterMetricFamily(
            "zbilling_journal_cpu_seconds",
            "CPU time of the journal's worker threads, by phase (commit: encode and log "
            "append; checkpoint: log into the indexed databases)", labels=["phase"])
        cpu.add_metric(["commit"], self._journal.commit_cpu_s)
        cpu.add_metric(["checkpoint"], self._journal.checkpoint_cpu_s)
        yield cpu
        stopped = GaugeMetricFamily(
            "zbilling_engine_stopped", "1 when a storage fault stopped the engine (fail-stop)"
        )
        stopped.add_metric([], 1 if self._journal.failure is not None else 0)
        yield stopped


class Exporter(Protocol):
    """A background exporter draining the outbox (integrations/lago provides one)."""

    exported: int
    batches: int
    parked: int
    failures: Mapping[str, int]

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def lag_s(self, now_ms: int) -> float: ...


class _ExportCollector(Collector):
    """Lago export figures, read at scrape time."""

    def __init__(self, exporter: Exporter, store: Store, wall_clock_ms: WallClock) -> None:
        self._exporter = exporter
        self._store = store
        self._wall_clock_ms = wall_clock_ms

    def collect(self) -> Iterator[Metric]:
        exporter = self._exporter
        depth = GaugeMetricFamily("zbilling_lago_outbox_events", "Lago events not yet exported")
        depth.add_metric([], self._store.outbox_depth())
        yield depth
        lag = GaugeMetricFamily("zbilling_lago_export_lag_seconds",
                                "Age of the oldest Lago event not yet exported")
        lag.add_metric([], exporter.lag_s(self._wall_clock_ms()))
        yield lag
        for name, help_text, value in (
            ("zbilling_lago_events_exported", "Events Lago accepted", exporter.exported),
            ("zbilling_lago_batches", "Batches Lago accepted", exporter.batches),
            ("zbilling_lago_dead_letters", "Events Lago refused on their own, parked",
             exporter.parked),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family
        failures = CounterMetricFamily("zbilling_lago_export_failures",
                                       "Failed export requests by kind", labels=["kind"])
        for kind, count in sorted(exporter.failures.items()):
            failures.add_metric([kind], count)
        yield failures


class TallyCollector(Collector):
    """A prometheus counter family read from a plain Counter at scrape time (keys are the
    label values: a string, or a tuple of them)."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 tally: Tally[object]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for key, count in sorted(self._tally.items(), key=str):
            family.add_metric(list(key) if isinstance(key, tuple) else [str(key)], count)
        yield family
