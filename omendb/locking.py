"""The writer lock: at most one process writes a table at a time."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .errors import OmenError

__all__ = ["WriterLock", "TableLockedError"]


class TableLockedError(OmenError, RuntimeError):
    """Another process holds the table's writer lock."""


class WriterLock:
    """An exclusive ``flock`` on the table's ``LOCK`` file, held while the table is open.

    The kernel releases it when the process dies, so a crash never leaves it stale.
    """

    def __init__(self, path: Path, table: str, timeout: float = 0.0) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        os.close(self._fd)
        self._fd = -1
        waited = f" after waiting {timeout:g} s" if timeout else ""
        raise TableLockedError(
            f"table {table!r} is open for writing in another process{waited} ({path}); "
            "open the database with read_only=True to read it, or lock_timeout= to wait")

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
