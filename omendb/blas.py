"""Run a block of NumPy work with BLAS on one thread, for a few microseconds of cost.

``threadpoolctl``'s ``limit()`` re-reads every library's state on each entry
(~0.5 ms), too slow around a sub-millisecond search. The BLAS libraries are looked
up once; entering sets their thread count to one and the last thread to leave
restores it (BLAS thread counts are process-wide, so nested and concurrent users
share one pin instead of undoing each other's).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]

_lock = threading.Lock()
_libraries: list[Any] | None = None
_holders = 0
_saved: list[int] = []


def _blas_libraries() -> list[Any]:
    global _libraries
    if _libraries is None:
        _libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block (for small work, or work already run in parallel)."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            libraries = _blas_libraries()
            _saved = [lib.get_num_threads() for lib in libraries]
            for lib, threads in zip(libraries, _saved):
                if threads != 1:
                    lib.set_num_threads(1)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for lib, threads in zip(_blas_libraries(), _saved):
                    if threads != 1:
                        lib.set_num_threads(threads)
