"""One process owns one data directory: two engines with their own in-memory balances for
the same accounts would double-spend."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE_NAME = "zbilling.lock"


class DataDirLocked(RuntimeError):
    pass


class DataDirLock:
    """An exclusive `flock` held for the life of the process (released by the kernel on exit,
    SIGKILL included, so a crash never leaves a stale lock behind)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LOCK_FILE_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataDirLocked(
                f"data directory {data_dir} is in use by another z-billing process"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
