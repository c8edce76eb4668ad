"""The writer lock: at most one writer of a table at a time, across processes."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from ..errors import CorruptFileError, TableLockedError, storage_error

__all__ = ["WriterLock", "TableLockedError"]


#: Lock files this process holds, so a refusal can say who holds the lock.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


class WriterLock:
    """An exclusive ``flock`` on the table's ``LOCK`` file, held while the table is open.

    The kernel releases it when the process dies, so a crash never leaves it stale.
    ``flock`` locks belong to an open file, so a second ``omendb.open`` of the same
    folder in this process is refused just like another process.
    """

    def __init__(self, path: Path, table: str, timeout: float = 0.0) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise CorruptFileError(f"{self.path}: the table's lock file is a directory, not a file") from None
        except FileNotFoundError:
            raise CorruptFileError(f"{self.path.parent}: the table's folder is missing") from None
        except OSError as exc:
            raise storage_error(exc, "opening the table's lock file", self.path) from None
        key = str(self.path.resolve())
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with _HELD_LOCK:
                    _HELD.add(key)
                self._key = key
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        os.close(self._fd)
        self._fd = -1
        with _HELD_LOCK:
            here = key in _HELD
        waited = f" after waiting {timeout:g} s" if timeout else ""
        holder = ("by another open of this database in this process (close it first, or use the "
                  "Database you already have)" if here else "in another process")
        raise TableLockedError(
            f"table {table!r} is open for writing {holder}{waited} ({self.path}); "
            "open the database with read_only=True to read it, or lock_timeout= to wait")

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd >= 0:
            with _HELD_LOCK:
                _HELD.discard(self._key)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
