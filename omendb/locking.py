"""The writer lock: at most one process writes a table at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import OmenError

__all__ = ["WriterLock", "TableLockedError"]


class TableLockedError(OmenError, RuntimeError):
    """Another process holds the table's writer lock."""


class WriterLock:
    """An exclusive ``flock`` on the table's ``LOCK`` file, held while the table is open.

    The kernel releases it when the process dies, so a crash never leaves it stale.
    """

    def __init__(self, path: Path, table: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise TableLockedError(
                f"table {table!r} is open for writing in another process ({path})") from None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
