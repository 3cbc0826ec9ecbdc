"""Child process for the export crash test: debits, acknowledges, exports to a Lago URL.

`python -m tests.export_child DATA_DIR LAGO_URL LAGO_KEY EVENTS` debits EVENTS usage events
(printing "ACK <event id>" after each), then keeps exporting; it stops by itself after
RUN_TIME_MAX_S. The parent SIGKILLs or SIGTERMs it long before.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from engine.errors import DuplicateEvent
from engine.ids import UserId
from engine.metering import UsageRequest
from engine.usage import LlmTokens
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter

USER = UserId(uuid.UUID(int=42))
PRODUCERS = 8
RUN_TIME_MAX_S = 120


async def main(data_dir: Path, lago_url: str, lago_key: str, events: int) -> None:
    export = lago_exporter(LagoClient(lago_url, lago_key, timeout_s=2))
    async with open_billing(data_dir, exporter=export) as billing:
        await billing.open_account(USER)
        with contextlib.suppress(DuplicateEvent):  # seeded by an earlier run
            await billing.add_credits(USER, 10**9, idempotency_key="export-seed")
        print("READY", flush=True)
        with trio.move_on_after(RUN_TIME_MAX_S):
            async def produce(producer: int) -> None:
                for index in range(events // PRODUCERS):
                    event_id = f"x-{producer}-{index}"
                    await billing.report_usage(UsageRequest(
                        event_id=event_id, user_id=USER,
                        metric=LlmTokens("openai", "gpt-4o", 100 + index, 10),
                    ))
                    sys.stdout.write(f"ACK {event_id}\n")
                    sys.stdout.flush()

            async with trio.open_nursery() as nursery:
                for producer in range(PRODUCERS):
                    nursery.start_soon(produce, producer)
            print("DEBITED", flush=True)
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
