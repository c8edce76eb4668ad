"""When this process last served a read or a write, so background graph building can
use every core while the foreground is idle and leave it one while it is busy."""

from __future__ import annotations

import time

from ..index.hnsw import build_threads

__all__ = ["note", "foreground_busy", "graph_threads", "BUSY_WINDOW_S"]

#: A read or write within this many seconds counts as a busy foreground.
BUSY_WINDOW_S = 0.5

_last = float("-inf")


def note() -> None:
    """A read or a write starts now (cheap: one clock read and one store)."""
    global _last
    _last = time.monotonic()


def foreground_busy() -> bool:
    return time.monotonic() - _last < BUSY_WINDOW_S


def graph_threads() -> int:
    """Threads for the next chunk of a background graph build."""
    return build_threads(foreground_busy())
