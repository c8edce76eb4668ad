"""Every table object open in this process, by folder, so cleanup spares what they use.

A checkout, a reader's table or a second ``Table`` on the same folder may still map
files of versions that ``cleanup()`` would otherwise remove.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

__all__ = ["register", "open_tables"]

_TABLES: dict[str, "weakref.WeakSet[Any]"] = {}
_LOCK = threading.Lock()


def register(table: Any) -> None:
    """Remember ``table`` (weakly) under its folder."""
    with _LOCK:
        _TABLES.setdefault(str(Path(table.core.directory).resolve()), weakref.WeakSet()).add(table)


def open_tables(folder: Path) -> list[Any]:
    """The table objects over ``folder`` that are not closed."""
    with _LOCK:
        tables = list(_TABLES.get(str(Path(folder).resolve()), ()))
    return [t for t in tables if not t.closed]
