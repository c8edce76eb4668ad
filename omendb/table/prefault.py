"""Fault a large buffer's pages in just ahead of the writer filling it, on a helper thread.

The memtable's vector buffer is reserved untouched (pages cost nothing until used), so
each append pays the page faults of the memory it copies into: zeroing fresh pages, and
in a virtual machine often a trip to the host for memory it had reclaimed. That sits on
the write path. Here a daemon thread asks the kernel to fault in the next few MiB
(``madvise(MADV_POPULATE_WRITE)``, Linux 5.14+) while the writer works, so the copy
finds the pages ready. Populating never changes a buffer's contents, so it may run
while the writer copies into the same pages. Where the call is missing it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import queue
import threading

import numpy as np

__all__ = ["AheadOfUse", "LOOKAHEAD", "available"]

#: Bytes kept faulted in beyond what the writer has used.
LOOKAHEAD = 16 << 20

_MADV_POPULATE_WRITE = 23
_PAGE = mmap.PAGESIZE


def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()
_jobs: queue.SimpleQueue = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def available() -> bool:
    """True where buffers can be populated ahead of use (and it has not failed)."""
    return _MADVISE is not None


def _populate(array: np.ndarray, start: int, end: int) -> None:
    global _MADVISE
    base = array.ctypes.data
    first = -(-(base + start) // _PAGE) * _PAGE  # page-aligned, inside [start, end)
    last = (base + end) // _PAGE * _PAGE
    if last > first and _MADVISE is not None and _MADVISE(first, last - first, _MADV_POPULATE_WRITE) != 0:
        _MADVISE = None  # an older kernel (EINVAL): stop asking


def _run() -> None:
    while True:
        array, start, end, done = _jobs.get()
        try:
            _populate(array, start, end)
        except Exception:  # an optimisation only: never let it take the thread down
            pass
        finally:
            done.set()


def _submit(array: np.ndarray, start: int, end: int) -> threading.Event:
    global _worker
    done = threading.Event()
    with _worker_lock:
        if _worker is None:
            _worker = threading.Thread(target=_run, name="omendb-prefault", daemon=True)
            _worker.start()
    _jobs.put((array, start, end, done))  # the job holds the array: it cannot be freed meanwhile
    return done


class AheadOfUse:
    """Keeps the bytes after the used part of ``array`` faulted in: eight writes' worth of
    the latest write's size, at most ``lookahead`` (so small writes fault in little)."""

    def __init__(self, array: np.ndarray, lookahead: int = LOOKAHEAD) -> None:
        self._array = array
        self._lookahead = lookahead
        self._used = 0
        self._requested = 0  # bytes from the start asked for so far
        self._last: threading.Event | None = None

    def used(self, nbytes: int) -> None:
        """The first ``nbytes`` are in use: ask for the next stretch when the last one runs low."""
        ahead = min(self._lookahead, 8 * max(0, nbytes - self._used))
        self._used = nbytes
        if _MADVISE is None or self._requested >= self._array.nbytes or self._requested - nbytes > ahead // 2:
            return
        start = max(self._requested, nbytes)
        self._requested = min(self._array.nbytes, start + ahead)
        if self._requested > start:
            self._last = _submit(self._array, start, self._requested)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the latest request (tests, benchmarks); True when it is done."""
        return self._last is None or self._last.wait(timeout)
