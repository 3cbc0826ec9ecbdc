"""The one scheduler: what it keeps in memory, and that committed deadlines drive the work."""

from __future__ import annotations

import trio

from actors.deadlines import HORIZON_MS, REFRESH_S, Deadlines
from actors.journal import Journal
from actors.system import ActorSystem
from engine.deadlines import Deadline, DeadlineKind, user_deadline
from storage.lmdb_store import LmdbStore
from storage.store import CommitBatch
from tests.conftest import new_user

NOW = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ms = NOW

    def __call__(self) -> int:
        return self.now_ms


def scheduler(tmp_path, clock: Clock) -> tuple[Deadlines, LmdbStore]:
    store = LmdbStore(tmp_path / "data")
    system = ActorSystem(store, Journal(store), clock)
    return Deadlines(system, store, clock), store


async def test_memory_holds_only_deadlines_within_the_horizon(tmp_path):
    clock = Clock()
    deadlines, store = scheduler(tmp_path, clock)
    soon, far = new_user(), new_user()
    store.commit(CommitBatch([], [
        user_deadline(DeadlineKind.SUBSCRIPTION, soon, NOW + 60_000),
        user_deadline(DeadlineKind.SUBSCRIPTION, far, NOW + 30 * 86_400_000),
    ]))
    deadlines.load()
    assert deadlines.armed == 1
    # A month later the far one is within the horizon, and a refresh picks it up.
    clock.now_ms = NOW + 30 * 86_400_000 - HORIZON_MS // 2
    deadlines.load()
    assert deadlines.armed == 2
    store.close()


async def test_a_committed_deadline_is_armed_moved_and_dropped(tmp_path):
    clock = Clock()
    deadlines, store = scheduler(tmp_path, clock)
    user = new_user()
    deadlines.observe([Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", user, NOW + 1_000)])
    assert deadlines.armed == 1
    deadlines.observe([Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", user, NOW + 2_000)])
    assert deadlines.armed == 1  # the same kind and key: moved, not added
    deadlines.observe([Deadline(DeadlineKind.RESERVATION_EXPIRY, "r1", user, None)])
    assert deadlines.armed == 0
    # Beyond the horizon it waits in the index, not in memory.
    deadlines.observe([Deadline(DeadlineKind.RESERVATION_EXPIRY, "r2", user,
                                NOW + HORIZON_MS + 1)])
    assert deadlines.armed == 0
    store.close()


async def test_a_due_deadline_goes_to_the_handler_of_its_kind_once(tmp_path, autojump_clock):
    clock = Clock()
    deadlines, store = scheduler(tmp_path, clock)
    user, other = new_user(), new_user()
    seen: list[Deadline] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(deadlines.run)
        deadlines.handle(DeadlineKind.AUTO_REFILL, seen.append)
        deadlines.observe([user_deadline(DeadlineKind.AUTO_REFILL, user, NOW)])
        deadlines.remind(user_deadline(DeadlineKind.AUTO_REFILL, other, NOW + 5_000))
        await trio.sleep(0.1)
        assert [deadline.user_id for deadline in seen] == [user]
        clock.now_ms = NOW + 5_000
        await trio.sleep(REFRESH_S + 1)  # wakes by its timer; the refresh finds nothing new
        assert [deadline.user_id for deadline in seen] == [user, other]
        assert deadlines.fired["auto_refill"] == 2
        nursery.cancel_scope.cancel()
    store.close()

