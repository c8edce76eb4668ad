"""Background workers: one daemon thread per job kind per open database, fed by a queue.

The database runs four: the flusher (a full memtable to a segment: ``flusher.py``),
the fresh indexer (graphs over rows that have no segment graph yet: ``fresh.py``),
the index builder (a segment's graph after a flush, and on open for segments that
lack a current index: ``indexer.py``) and the compaction service (merges after a
flush: ``compactor.py``). A job runs without holding the table's locks except for its final publish,
so writes and searches never wait for it.

The index builder and the compaction service run at a lower CPU priority (nice
:data:`BACKGROUND_NICE`, and so do the OpenMP threads a build starts), the fresh
indexer halfway between: while searches and writes keep the cores busy, the kernel
gives them the CPU first, and the builds take what is left. The flusher keeps normal
priority: a writer that fills the next memtable waits for it.
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

__all__ = ["BackgroundWorker", "Workers", "exiting", "background_running", "BACKGROUND_NICE"]

#: Niceness of the index builder's and the compaction service's threads (0-19; higher
#: yields more). ``OMENDB_BACKGROUND_NICE`` overrides it (0: the foreground's priority).
BACKGROUND_NICE = 10

_LIVE: "weakref.WeakSet[BackgroundWorker]" = weakref.WeakSet()
_EXITING = threading.Event()


_running = 0  # background jobs running now, in every open database of the process
_running_lock = threading.Lock()


def background_running() -> bool:
    """True while a background job (flush, fresh graph, build, merge) runs in this process."""
    return _running > 0


def _count_running(step: int) -> None:
    global _running
    with _running_lock:
        _running += step


def exiting() -> bool:
    """True once the interpreter is exiting: long jobs should stop at their next check."""
    return _EXITING.is_set()


@atexit.register
def _stop_workers_at_exit() -> None:
    # Python kills daemon threads when it finalizes; one inside faiss or DuckDB would be
    # unwound through C++ frames and abort the process. Stop them while Python is whole.
    _EXITING.set()
    for worker in list(_LIVE):
        worker.close()


class BackgroundWorker:
    """Runs queued jobs one at a time on a daemon thread (started on first use)."""

    def __init__(self, name: str, nice: int = 0) -> None:
        self._name = name
        self._nice = nice
        self._queue: queue.Queue[tuple[Hashable, Callable[[], Any], Callable[[BaseException], None]] | None] = \
            queue.Queue()
        self._pending: set[Hashable] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        _LIVE.add(self)

    def submit(self, key: Hashable, job: Callable[[], Any], on_error: Callable[[BaseException], None],
               on_done: Callable[[], None] = lambda: None) -> bool:
        """Queue ``job`` unless one with the same ``key`` is queued and not yet started; True if queued."""
        with self._lock:
            if self._closed or key in self._pending:
                return False
            self._pending.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"omendb-{self._name}", daemon=True)
                self._thread.start()
        self._queue.put((key, job, on_error, on_done))
        return True

    def _run(self) -> None:
        _lower_priority(self._nice)
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, job, on_error, on_done = item
            with self._lock:  # from now on a new submit queues another run (it may see newer state)
                self._pending.discard(key)
            _count_running(1)
            try:
                job()
            except BaseException as exc:  # reported to the job's owner, never kills the thread
                on_error(exc)
            finally:
                _count_running(-1)
                on_done()

    def close(self) -> None:
        """Stop after the current job (tables cancel theirs when they close)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()


def background_nice() -> int:
    """The niceness background builds run at (:data:`BACKGROUND_NICE` or its override)."""
    configured = os.environ.get("OMENDB_BACKGROUND_NICE")
    try:
        return min(19, max(0, int(configured))) if configured else BACKGROUND_NICE
    except ValueError:
        return BACKGROUND_NICE


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (on Linux, where a thread id names
    one thread to ``setpriority``; elsewhere, or when refused, the thread keeps its priority)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


@dataclass
class Workers:
    """The background threads of one open database."""

    flusher: BackgroundWorker = field(default_factory=lambda: BackgroundWorker("flusher"))
    fresh: BackgroundWorker = field(
        default_factory=lambda: BackgroundWorker("fresh-index", (background_nice() + 1) // 2))
    indexer: BackgroundWorker = field(default_factory=lambda: BackgroundWorker("index-builder", background_nice()))
    compactor: BackgroundWorker = field(default_factory=lambda: BackgroundWorker("compaction", background_nice()))

    def close(self) -> None:
        self.flusher.close()
        self.fresh.close()
        self.compactor.close()
        self.indexer.close()
