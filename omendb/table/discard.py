"""Removing a table's folder for good, under its writer lock (``drop_table``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ..errors import storage_error
from ..storage.fileio import fsync_dir
from ..storage.layout import LOCK
from ..storage.locking import WriterLock

__all__ = ["discard_table_folder"]


def discard_table_folder(directory: Path, name: str, *, lock: WriterLock | None = None,
                         lock_timeout: float = 0.0) -> None:
    """Remove a table's folder for good, holding its writer lock while it disappears.

    ``lock``: the writer lock, held by the caller (the table being closed); otherwise it
    is taken here, and a table open for writing elsewhere raises ``TableLockedError``
    with nothing changed. The folder is first renamed to a hidden name (a crash then
    leaves a leftover that the next open of the database removes).
    """
    lock = lock or WriterLock(directory / LOCK, name, lock_timeout)
    graveyard = directory.parent / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(directory, graveyard)
        fsync_dir(directory.parent)
    except OSError as exc:
        raise storage_error(exc, f"dropping table {name!r}", directory) from None
    finally:
        lock.release()
    shutil.rmtree(graveyard, ignore_errors=True)
