"""The overlay's range reads: ordered, newest write wins, deletes kept, lazy across chunks."""

from __future__ import annotations

from itertools import islice

from storage.overlay import RANGE_CHUNK_KEYS, Overlay

SORTED, UNSORTED = 1, 2


def key(n: int) -> bytes:
    return n.to_bytes(8, "big")


def overlay_with_generations() -> Overlay:
    """Three generations: 0..299 (sealed), every third key rewritten or deleted (sealed),
    then 300..399 and a rewrite of key 5 (open)."""
    overlay = Overlay([SORTED])
    for database in (SORTED, UNSORTED):
        overlay.apply([(database, key(n), b"a%d" % n) for n in range(300)], 1)
    overlay.seal()
    for database in (SORTED, UNSORTED):
        overlay.apply([(database, key(n), None if n % 2 else b"b%d" % n)
                       for n in range(0, 300, 3)], 2)
    overlay.seal()
    for database in (SORTED, UNSORTED):
        overlay.apply([(database, key(n), b"c%d" % n) for n in range(300, 400)]
                      + [(database, key(5), b"c5")], 3)
    return overlay


def expected(low: int, high: int) -> list[tuple[bytes, bytes | None]]:
    rows = []
    for n in range(low, high):
        if n == 5:
            value: bytes | None = b"c5"
        elif n >= 300:
            value = b"c%d" % n
        elif n % 3 == 0:
            value = None if n % 2 else b"b%d" % n
        else:
            value = b"a%d" % n
        rows.append((key(n), value))
    return rows


def test_a_range_merges_generations_in_key_order_with_the_newest_write():
    overlay = overlay_with_generations()
    assert RANGE_CHUNK_KEYS < 300  # the reads below cross several chunks of one generation
    for database in (SORTED, UNSORTED):
        assert list(overlay.range(database, key(0), None)) == expected(0, 400)
        assert list(overlay.range(database, key(7), key(350))) == expected(7, 350)
        assert list(overlay.range(database, key(0), None, reverse=True)) == expected(0, 400)[::-1]
        assert list(overlay.range(database, key(10), key(260), reverse=True)) == (
            expected(10, 260)[::-1])
        assert list(overlay.range(database, key(400), None)) == []


def test_a_commit_landing_during_a_read_leaves_it_ordered_and_complete():
    overlay = overlay_with_generations()
    overlay.apply([(SORTED, key(n), b"d%d" % n) for n in range(1000, 1000 + 3 * RANGE_CHUNK_KEYS)],
                  4)
    rows = overlay.range(SORTED, key(0), None)
    assert list(islice(rows, 3)) == expected(0, 3)
    # A commit lands while the reader is paused: every row written before the read began
    # still comes, in order; the new one may or may not (a read is not a snapshot).
    overlay.apply([(SORTED, key(2000), b"late")], 5)
    rest = [row for row in rows if row != (key(2000), b"late")]
    assert rest == expected(3, 400) + [(key(n), b"d%d" % n)
                                       for n in range(1000, 1000 + 3 * RANGE_CHUNK_KEYS)]


def test_latest_holds_the_newest_write_of_every_waiting_key():
    overlay = overlay_with_generations()
    assert overlay.latest(SORTED) == dict(expected(0, 400))
    assert overlay.latest(3) == {}


GROUPED = 3


def user_key(user: int, transaction: int) -> bytes:
    return user.to_bytes(2, "big") + transaction.to_bytes(4, "big")


def test_a_grouped_database_reads_one_prefix_in_order_even_when_keys_came_out_of_order():
    overlay = Overlay([], {GROUPED: 2})
    # Users 1 and 2 interleaved; user 1's transaction 5 arrives after 6 and 7.
    overlay.apply([(GROUPED, user_key(1, 6), b""), (GROUPED, user_key(2, 1), b""),
                   (GROUPED, user_key(1, 7), b""), (GROUPED, user_key(1, 5), b"")], 1)
    overlay.seal()
    overlay.apply([(GROUPED, user_key(1, 8), b""), (GROUPED, user_key(1, 6), None)], 2)
    first, top = user_key(1, 0), user_key(1, 0xFFFFFFFF)
    assert [key for key, _ in overlay.range(GROUPED, first, top)] == [
        user_key(1, n) for n in (5, 6, 7, 8)]
    assert dict(overlay.range(GROUPED, first, top))[user_key(1, 6)] is None  # newest: deleted
    assert [key for key, _ in overlay.range(GROUPED, first, user_key(1, 7), reverse=True)] == [
        user_key(1, 6), user_key(1, 5)]
    # A range over several prefixes (verify, the CLI) still comes whole and in order.
    assert [key for key, _ in overlay.range(GROUPED, b"", None)] == [
        user_key(1, n) for n in (5, 6, 7, 8)] + [user_key(2, 1)]
