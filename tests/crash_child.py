"""Child process for the crash tests: debits under load and prints each acknowledged event.

Run as `python -m tests.crash_child DATA_DIR USER_ID EVENTS [ROUND ACCOUNTS CHECKPOINT_S]`:
PRODUCERS tasks debit ACCOUNTS accounts (the first is USER_ID, the others derived from it),
event ids carry ROUND, and the store checkpoints every CHECKPOINT_S seconds (short, so a kill
meets appends, checkpoints and the moments between). It stops by itself after EVENTS debits or
60 seconds, whichever comes first; the parent normally SIGKILLs it long before.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from engine.errors import DuplicateEvent
from engine.ids import UserId
from engine.metering import UsageRequest
from storage.lmdb_store import CHECKPOINT_INTERVAL_S

PRODUCERS = 32
RUN_TIME_MAX_S = 60


def account_ids(user: UserId, accounts: int) -> list[UserId]:
    return [user, *(UserId(uuid.uuid5(user, str(n))) for n in range(1, accounts))]


async def main(data_dir: Path, user: UserId, events: int, *, round_name: str, accounts: int,
               checkpoint_interval_s: float) -> None:
    users = account_ids(user, accounts)
    async with open_billing(data_dir, checkpoint_interval_s=checkpoint_interval_s) as billing:
        for account in users:
            await billing.open_account(account)
            with contextlib.suppress(DuplicateEvent):  # funded in an earlier round
                await billing.add_credits(account, 10**9, idempotency_key=f"seed-{account}")
        print("READY", flush=True)
        per_producer = events // PRODUCERS

        async def produce(producer: int) -> None:
            for index in range(per_producer):
                event_id = f"crash-{round_name}-{producer}-{index}"
                target = users[(producer + index) % len(users)]
                result = await billing.report_usage(
                    UsageRequest(event_id=event_id, user_id=target, cost_micros=1_500_000)
                )
                sys.stdout.write(f"ACK {event_id} {result.balance_cents} {target}\n")
                sys.stdout.flush()

        with trio.move_on_after(RUN_TIME_MAX_S):
            async with trio.open_nursery() as nursery:
                for producer in range(PRODUCERS):
                    nursery.start_soon(produce, producer)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    trio.run(functools.partial(
        main, Path(arguments[0]), UserId(uuid.UUID(arguments[1])), int(arguments[2]),
        round_name=arguments[3] if len(arguments) > 3 else "r0",
        accounts=int(arguments[4]) if len(arguments) > 4 else 1,
        checkpoint_interval_s=float(arguments[5]) if len(arguments) > 5
        else CHECKPOINT_INTERVAL_S))
