"""Child for the disk-full test: debits until the log cannot grow, prints what it learns.

Run as `python -m tests.disk_full_child DATA_DIR USER_ID LIMIT_BYTES`. The file size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so the write fails with EFBIG like a full disk fails
with ENOSPC) is set after the engine opened; checkpoints are an hour apart, so the log
segment is the file that meets the limit.
"""

from __future__ import annotations

import resource
import signal
import sys
import uuid
from pathlib import Path

import trio

from actors.runtime import open_billing
from engine.errors import EngineStopped
from engine.ids import UserId
from engine.metering import UsageRequest

EVENTS_MAX = 100_000


async def main(data_dir: Path, user: UserId, limit_bytes: int) -> None:
    async with open_billing(data_dir, checkpoint_interval_s=3600) as billing:
        await billing.open_account(user)
        await billing.add_credits(user, 10**9, idempotency_key="seed")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        for index in range(EVENTS_MAX):
            event_id = f"full-{index}"
            try:
                result = await billing.report_usage(
                    UsageRequest(event_id=event_id, user_id=user, cost_micros=1_000_000))
            except EngineStopped:
                print(f"STOPPED {event_id} {billing.accepting_writes}", flush=True)
                break
            print(f"ACK {event_id} {result.balance_cents}", flush=True)
        try:
            await billing.add_credits(user, 1)
        except EngineStopped:
            print("REFUSED", flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), UserId(uuid.UUID(sys.argv[2])), int(sys.argv[3]))
