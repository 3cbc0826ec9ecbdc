"""Writes that are durable in the log but not yet checkpointed into the LMDB databases.

Every read of the store looks here first, then in LMDB (`LmdbStore._get` and `_scan`), so an
acknowledged write is visible at once whether checkpointed or not, through this one path.
Writes are kept in generations: the open one takes each commit's writes; a checkpoint seals
it, writes it into LMDB and then drops it whole, so forgetting costs nothing per key.

Threads: one writer (the journal's commit thread) applies; the checkpointer seals and drops;
any thread reads. A lock guards the generation list and the sorted key lists; point reads of
a generation's dict need none.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice

from sortedcontainers import SortedList

# A write: (database number, key, value), value None for a delete.
Write = tuple[int, bytes, bytes | None]
ABSENT = object()
# Keys a range read copies from one generation per hold of the lock.
RANGE_CHUNK_KEYS = 128


class Generation:
    __slots__ = ("first_write_s", "groups", "last_sequence", "sorted_keys", "tables", "writes")

    def __init__(self) -> None:
        self.tables: dict[int, dict[bytes, bytes | None]] = {}
        self.sorted_keys: dict[int, SortedList] = {}
        # Grouped databases: key prefix -> that prefix's keys, in order.
        self.groups: dict[int, dict[bytes, list[bytes]]] = {}
        self.writes = 0
        self.last_sequence = 0
        # When its first write arrived (time.monotonic), for the checkpoint lag.
        self.first_write_s: float | None = None


class Overlay:
    def __init__(self, sorted_databases: Iterable[int],
                 grouped_databases: Mapping[int, int] | None = None) -> None:
        # Databases read by key range while the server runs keep their keys sorted as they
        # come; the others are sorted on the rare range read (start-up, verify, the CLI).
        self._sorted_databases = frozenset(sorted_databases)
        # Databases read by range within one key prefix (database -> prefix length: a user's
        # transactions, a user's usage totals) keep a list per prefix instead: few keys per
        # prefix, most arriving in order (transaction ids only grow), so a write is an append
        # or a short insert, not an insert into one sorted list of every key.
        self._grouped_databases = dict(grouped_databases or {})
        self._lock = threading.Lock()
        self._generations: list[Generation] = [Generation()]

    @property
    def writes(self) -> int:
        """Writes waiting for a checkpoint (all generations)."""
        return sum(generation.writes for generation in self._generations)

    def apply(self, writes: list[Write], sequence: int) -> None:
        with self._lock:
            generation = self._generations[-1]
            tables = generation.tables
            sorted_databases = self._sorted_databases
            grouped_databases = self._grouped_databases
            for database, key, value in writes:
                table = tables.get(database)
                if table is None:
                    table = tables[database] = {}
                if key not in table:
                    if database in sorted_databases:
                        keys = generation.sorted_keys.get(database)
                        if keys is None:
                            keys = generation.sorted_keys[database] = SortedList()
                        keys.add(key)
                    elif database in grouped_databases:
                        _add_to_group(generation.groups.setdefault(database, {}),
                                      grouped_databases[database], key)
                table[key] = value
            if generation.first_write_s is None:
                generation.first_write_s = time.monotonic()
            generation.writes += len(writes)
            generation.last_sequence = sequence

    def lag_s(self) -> float:
        """Age of the oldest write waiting for a checkpoint (0: none waits)."""
        started = [generation.first_write_s for generation in self._generations
                   if generation.first_write_s is not None]
        return time.monotonic() - min(started) if started else 0.0

    def seal(self) -> Generation:
        """Close the open generation (for a checkpoint) and open a new one."""
        with self._lock:
            sealed = self._generations[-1]
            self._generations = [*self._generations, Generation()]
        return sealed

    def sealed(self) -> list[Generation]:
        """Generations closed for a checkpoint, oldest first."""
        return self._generations[:-1]

    def drop(self, generation: Generation) -> None:
        """Forget a generation now in LMDB (call only after its checkpoint committed)."""
        with self._lock:
            self._generations = [kept for kept in self._generations if kept is not generation]

    def get(self, database: int, key: bytes) -> object:
        """The newest write of `key` (None: deleted), or ABSENT when none is waiting."""
        for generation in reversed(self._generations):
            table = generation.tables.get(database)
            if table is not None:
                found = table.get(key, ABSENT)
                if found is not ABSENT:
                    return found
        return ABSENT

    def latest(self, database: int) -> dict[bytes, bytes | None]:
        """The newest write of every key of `database` waiting here (for counts)."""
        found: dict[bytes, bytes | None] = {}
        with self._lock:
            for generation in self._generations:  # oldest first: newer writes overwrite
                found.update(generation.tables.get(database, {}))
        return found

    def range(self, database: int, low: bytes, high: bytes | None, *,
              reverse: bool = False) -> Iterator[tuple[bytes, bytes | None]]:
        """The newest write of every key in [low, high) (high None: no upper bound), in key
        order (or reversed), produced lazily: a reader that stops after 100 rows (the Lago
        exporter) copies about 100 keys per generation, not every key waiting."""
        with self._lock:
            generations = list(self._generations)
        # (key, rank): for equal keys the newest generation sorts first in either direction.
        streams = [_ranked(self._keys_in(generation, database, low, high, reverse),
                           age if reverse else -age)
                   for age, generation in enumerate(generations)]
        previous: bytes | None = None
        for key, rank in heapq.merge(*streams, reverse=reverse):
            if key == previous:
                continue  # an older generation's write of a key already produced
            previous = key
            yield key, generations[abs(rank)].tables[database][key]

    def _keys_in(self, generation: Generation, database: int, low: bytes, high: bytes | None,
                 reverse: bool) -> Iterator[bytes]:
        table = generation.tables.get(database)
        if not table:
            return
        prefix_length = self._grouped_databases.get(database)
        if (prefix_length is not None and high is not None and len(low) >= prefix_length
                and low[:prefix_length] == high[:prefix_length]):
            with self._lock:
                group = generation.groups.get(database, {}).get(low[:prefix_length], [])
                chosen = group[bisect.bisect_left(group, low):bisect.bisect_left(group, high)]
            yield from reversed(chosen) if reverse else chosen
            return
        if database not in self._sorted_databases:
            # Rare range reads (start-up, verify, the CLI): sort this generation's keys once.
            with self._lock:
                chosen = [key for key in table if key >= low and (high is None or key < high)]
            yield from sorted(chosen, reverse=reverse)
            return
        # The open generation's sorted keys change under the commit thread: copy them a chunk
        # at a time under the lock, each chunk starting after the last key produced.
        inclusive = (True, False)
        while True:
            with self._lock:
                keys = generation.sorted_keys.get(database)
                if keys is None:
                    return
                chunk = list(islice(keys.irange(low, high, inclusive=inclusive,
                                                reverse=reverse), RANGE_CHUNK_KEYS))
            yield from chunk
            if len(chunk) < RANGE_CHUNK_KEYS:
                return
            if reverse:
                high = chunk[-1]  # exclusive already
            else:
                low, inclusive = chunk[-1], (False, False)


def _ranked(keys: Iterator[bytes], rank: int) -> Iterator[tuple[bytes, int]]:
    for key in keys:
        yield key, rank


def _add_to_group(groups: dict[bytes, list[bytes]], prefix_length: int, key: bytes) -> None:
    group = groups.setdefault(key[:prefix_length], [])
    if not group or key > group[-1]:
        group.append(key)
    else:
        bisect.insort(group, key)  # out of order (not expected, but kept correct)
