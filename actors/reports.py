"""`UsageReports`: usage summaries from the aggregates the journal keeps (engine/reports.py),
read after everything submitted so far is durable, so a summary agrees with the ledger."""

from __future__ import annotations

from actors.journal import Journal
from actors.system import WallClock
from engine.errors import InvalidInput
from engine.ids import UserId
from engine.reports import (
    SUMMARY_DAYS_DEFAULT,
    Group,
    GroupBy,
    Totals,
    UsageSummary,
    bounded_from,
    day_of,
    day_text,
)
from storage.store import Store


class UsageReports:
    def __init__(self, store: Store, journal: Journal, wall_clock_ms: WallClock) -> None:
        self._store = store
        self._journal = journal
        self._wall_clock_ms = wall_clock_ms

    async def summary(self, user_id: UserId, from_day: int | None = None,
                      to_day: int | None = None, group_by: str = GroupBy.DAY.value
                      ) -> UsageSummary:
        """Credits and tokens of the user's usage on the UTC days `from_day`..`to_day`
        (days since the epoch; default: the SUMMARY_DAYS_DEFAULT days to the engine's
        today; none when `to_day` is before `from_day`), grouped by day, model or agent."""
        if to_day is None:
            to_day = day_of(self._wall_clock_ms())
        if from_day is None:
            from_day = to_day - SUMMARY_DAYS_DEFAULT + 1
        try:
            grouping = GroupBy(group_by)
        except ValueError:
            raise InvalidInput("group_by is day, model or agent", {"field": "group_by"}
                               ) from None
        # No usage predates the epoch: a summary starts there at the earliest.
        from_day = max(bounded_from(from_day, to_day), 0)
        barrier = self._journal.pending_barrier()
        if barrier is not None:
            await barrier.wait()
        kind = grouping.value[0]
        groups: dict[str, Totals] = {}
        for day, found_kind, group, totals in self._store.usage_aggregates(user_id, from_day,
                                                                           to_day):
            if found_kind != kind:
                continue
            name = day_text(day) if grouping is GroupBy.DAY else group
            groups[name] = groups.get(name, Totals()) + totals
        ordered = tuple(Group(name, totals) for name, totals in sorted(groups.items()))
        total = sum((group.totals for group in ordered), Totals())
        return UsageSummary(grouping, from_day, to_day, ordered, total)

