"""Every table object open in this process, by folder, so cleanup spares what they use.

A checkout, a reader's table or a second ``Table`` on the same folder may still map
files of versions that ``cleanup()`` would otherwise remove.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

__all__ = ["register", "open_tables", "pinned", "pins", "cleaning"]

_TABLES: dict[str, "weakref.WeakSet[Any]"] = {}
_PINS: dict[str, collections.Counter] = {}
_LOCK = threading.Lock()
#: Held by a cleanup while it decides what to remove and removes the manifests: a pin is
#: taken either before (the cleanup keeps the version) or after (its manifest is gone).
_CLEANING = threading.Lock()


def register(table: Any) -> None:
    """Remember ``table`` (weakly) under its folder."""
    with _LOCK:
        _TABLES.setdefault(str(Path(table.core.directory).resolve()), weakref.WeakSet()).add(table)


def open_tables(folder: Path) -> list[Any]:
    """The table objects over ``folder`` that are not closed."""
    with _LOCK:
        tables = list(_TABLES.get(str(Path(folder).resolve()), ()))
    return [t for t in tables if not t.closed]


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


@contextlib.contextmanager
def pinned(folder: Path, version: int) -> Iterator[None]:
    """Keep this process's ``cleanup()`` from removing ``version`` while a checkout of it opens."""
    with _CLEANING:
        _PINS.setdefault(_key(folder), collections.Counter())[version] += 1
    try:
        yield
    finally:
        with _CLEANING:
            _PINS[_key(folder)][version] -= 1


def pins(folder: Path) -> set[int]:
    """Versions pinned by checkouts being opened (call it holding :func:`cleaning`)."""
    return {v for v, n in _PINS.get(_key(folder), collections.Counter()).items() if n > 0}


def cleaning() -> contextlib.AbstractContextManager[bool]:
    """Held while a cleanup decides what to remove and removes manifests."""
    return _CLEANING
