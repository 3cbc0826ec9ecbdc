"""Child process for the crash tests: debits under load and prints each acknowledged event.

Run as `python -m tests.crash_child DATA_DIR USER_ID EVENTS`. It stops by itself after EVENTS
debits or 60 seconds, whichever comes first; the parent normally SIGKILLs it long before.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from engine.ids import UserId
from engine.metering import UsageRequest

PRODUCERS = 32
RUN_TIME_MAX_S = 60


async def main(data_dir: Path, user: UserId, events: int) -> None:
    async with open_billing(data_dir) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**9, idempotency_key="crash-seed")
        print("READY", flush=True)
        per_producer = events // PRODUCERS

        async def produce(producer: int) -> None:
            for index in range(per_producer):
                event_id = f"crash-{producer}-{index}"
                result = await billing.report_usage(
                    UsageRequest(event_id=event_id, user_id=user, cost_micros=1_500_000)
                )
                sys.stdout.write(f"ACK {event_id} {result.balance_cents}\n")
                sys.stdout.flush()

        with trio.move_on_after(RUN_TIME_MAX_S):
            async with trio.open_nursery() as nursery:
                for producer in range(PRODUCERS):
                    nursery.start_soon(produce, producer)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), UserId(uuid.UUID(sys.argv[2])), int(sys.argv[3]))
