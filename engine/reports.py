"""Usage reports: per-day aggregates of usage, kept up to date by the journal (the usage
event's writer adds its event to them in the same commit), so a summary reads a few rows per
day instead of scanning the ledger. Days are UTC days of the debit's transaction time, the
time the transaction list shows.
"""

from __future__ import annotations

import datetime
from enum import StrEnum

import msgspec

from engine.commands import UsageEventRecord
from engine.ids import transaction_id_ms
from engine.money import MICROS_PER_CREDIT
from engine.usage import LlmTokens

DAY_MS = 24 * 3600 * 1000
SUMMARY_DAYS_MAX = 366
SUMMARY_DAYS_DEFAULT = 30
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
NO_MODEL = "-"  # usage without an LLM metric (a cost, compute, storage, API calls)


class GroupBy(StrEnum):
    DAY = "day"
    MODEL = "model"
    AGENT = "agent"


class Totals(msgspec.Struct, frozen=True, gc=False):
    """What usage added up to: events, the exact cost, the whole credits debited for it,
    and LLM tokens."""

    events: int = 0
    cost_micros: int = 0
    debited_cents: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.events + other.events, self.cost_micros + other.cost_micros,
                      self.debited_cents + other.debited_cents,
                      self.input_tokens + other.input_tokens,
                      self.output_tokens + other.output_tokens)

    def cost_credits_exact(self) -> str:
        """The exact cost in credits, as a decimal string (never a float)."""
        whole, micros = divmod(self.cost_micros, MICROS_PER_CREDIT)
        return f"{whole}.{micros:06d}"


class Group(msgspec.Struct, frozen=True, gc=False):
    key: str  # the day (YYYY-MM-DD), "provider/model" or the agent id ("" for none)
    totals: Totals


class UsageSummary(msgspec.Struct, frozen=True, gc=False):
    group_by: GroupBy
    from_day: int
    to_day: int
    groups: tuple[Group, ...]
    total: Totals


def day_of(epoch_ms: int) -> int:
    return epoch_ms // DAY_MS


def day_text(day: int) -> str:
    """A day since the epoch as YYYY-MM-DD."""
    return datetime.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def aggregate_rows(record: UsageEventRecord) -> tuple[tuple[int, GroupBy, str, Totals], ...]:
    """The aggregate rows one committed usage event adds to: its day's total, its model's
    and its agent's (each on the day of its transaction)."""
    result = record.result
    metric = record.metric
    llm = metric if isinstance(metric, LlmTokens) else None
    totals = Totals(1, result.cost_micros, result.cost_cents,
                    llm.prompt_tokens if llm is not None else 0,
                    llm.output_tokens if llm is not None else 0)
    day = day_of(transaction_id_ms(result.transaction_id))
    model = f"{llm.provider}/{llm.model}" if llm is not None else NO_MODEL
    return ((day, GroupBy.DAY, "", totals), (day, GroupBy.MODEL, model, totals),
            (day, GroupBy.AGENT, record.agent_id or "", totals))


def bounded_from(from_day: int, to_day: int) -> int:
    """The first day a summary covers: `from_day`, or later so that it covers at most
    SUMMARY_DAYS_MAX days (the reply says which days it covers)."""
    return max(from_day, to_day - SUMMARY_DAYS_MAX + 1)
