"""The background index builder: one thread per open database, fed by a queue.

Tables submit ``(table, segment file)`` after a flush (and on open, for segments that
lack a current index). The thread calls back ``table._build_index(file)``, which builds
without holding the table's locks and publishes a manifest version when done. Writes
and searches never wait for it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["IndexBuilder"]


class IndexBuilder:
    """Runs index builds one at a time on a daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[tuple[Any, str] | None] = queue.Queue()
        self._pending: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, table: Any, segment_file: str) -> None:
        """Queue a build of ``segment_file`` of ``table`` (ignored if already queued)."""
        key = (id(table), segment_file)
        with self._lock:
            if self._closed or key in self._pending:
                return
            self._pending.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"omendb-index-builder:{self._name}",
                                                daemon=True)
                self._thread.start()
        self._queue.put((table, segment_file))

    def is_pending(self, table: Any, segment_file: str) -> bool:
        with self._lock:
            return (id(table), segment_file) in self._pending

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            table, segment_file = item
            try:
                table._build_index(segment_file)
            except BaseException as exc:  # reported through the table, never kills the thread
                table._index_failed(segment_file, exc)
            finally:
                with self._lock:
                    self._pending.discard((id(table), segment_file))
                table._index_progress()

    def close(self) -> None:
        """Stop after the current build (tables cancel theirs when they close)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
