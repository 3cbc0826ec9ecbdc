"""The write-ahead log: each group commit is one checksummed record appended to a segment
file (`O_APPEND`, then `fdatasync`) before any reply, so a commit costs the bytes it adds.

Record layout: a header (magic, sequence, payload length, CRC-32 of the payload), then the
payload. Sequences grow by one per record across segments; a segment is named by the first
sequence it may hold. A torn or corrupt record at the very end of the last segment is what a
crash during an append leaves: it was never acknowledged, so recovery cuts it off. Anything
wrong before the end is damage to acknowledged data, and recovery refuses to go on.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from storage.store import StoreError

_HEADER = struct.Struct(">IQII")  # magic, sequence, payload length, crc32
_MAGIC = 0x5A42574C  # "ZBWL"
SEGMENT_SUFFIX = ".wal"
# A record larger than this is corruption, not a commit (a batch of 20,000 commands is ~15 MB).
RECORD_BYTES_MAX = 256 * 1024 * 1024


class LogCorrupt(StoreError):
    """The log is damaged before its end: acknowledged commits cannot be read back."""


def _segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


class WriteAheadLog:
    """One writer appends; `recover` must run once before the first append."""

    def __init__(self, directory: Path, *, sync: bool = True, readonly: bool = False) -> None:
        self._directory = directory
        self._sync = sync
        self._readonly = readonly
        if not readonly:
            directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._next_sequence = 1
        self._current_first = 0

    def segments(self) -> list[tuple[int, Path]]:
        """(first sequence, path) of every segment, oldest first."""
        if not self._directory.exists():
            return []
        found = [(int(path.name.removesuffix(SEGMENT_SUFFIX)), path)
                 for path in self._directory.iterdir() if path.name.endswith(SEGMENT_SUFFIX)]
        return sorted(found)

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def recover(self, applied_sequence: int) -> Iterator[tuple[int, bytes]]:
        """Yield the records after `applied_sequence`, in order; cut off a torn tail (unless
        read-only) and get ready to append after the last good record."""
        last = applied_sequence
        segments = self.segments()
        for index, (_, path) in enumerate(segments):
            final = index == len(segments) - 1
            for sequence, payload in self._read_segment(path, final):
                if sequence != last + 1 and sequence > applied_sequence:
                    raise LogCorrupt(f"log jumps from record {last} to {sequence} in {path}")
                last = max(last, sequence)
                if sequence > applied_sequence:
                    yield sequence, payload
        self._next_sequence = last + 1

    def _read_segment(self, path: Path, final: bool) -> Iterator[tuple[int, bytes]]:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            record = self._record_at(data, offset)
            if record is None:
                if not final:
                    raise LogCorrupt(f"damaged record at byte {offset} of {path}")
                if not self._readonly:
                    # A crash during this append: never acknowledged, never to be read.
                    with path.open("r+b") as torn:
                        torn.truncate(offset)
                        os.fsync(torn.fileno())
                return
            sequence, payload, offset = record
            yield sequence, payload

    @staticmethod
    def _record_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
        end = offset + _HEADER.size
        if end > len(data):
            return None
        magic, sequence, length, checksum = _HEADER.unpack_from(data, offset)
        if magic != _MAGIC or length > RECORD_BYTES_MAX or end + length > len(data):
            return None
        payload = data[end:end + length]
        if zlib.crc32(payload) != checksum:
            return None
        return sequence, payload, end + length

    def append(self, payload: bytes) -> int:
        """Append one record and make it durable; return its sequence."""
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        sequence = self._next_sequence
        record = _HEADER.pack(_MAGIC, sequence, len(payload), zlib.crc32(payload)) + payload
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._sync:
            os.fdatasync(self._fd)
        self._next_sequence = sequence + 1
        return sequence

    def _open_segment(self) -> None:
        self._current_first = self._next_sequence
        path = self._directory / _segment_name(self._current_first)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # The new file's name must be durable too, or a crash could lose the whole segment.
        directory = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def rotate(self) -> None:
        """Start a new segment with the next append, so older ones can be trimmed whole."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def trim(self, applied_sequence: int) -> None:
        """Delete segments all of whose records are at or before `applied_sequence`."""
        for (_, path), (next_first, _) in itertools.pairwise(self.segments()):
            # Each record of this segment comes before the next segment's first.
            if next_first - 1 <= applied_sequence:
                path.unlink()

    def close(self) -> None:
        self.rotate()
