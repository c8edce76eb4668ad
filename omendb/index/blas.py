"""Run a block of NumPy work with BLAS on one thread, for a few microseconds of cost.

``threadpoolctl``'s ``limit()`` re-reads every library's state on each entry
(~0.5 ms), too slow around a sub-millisecond search. Here the BLAS libraries are
looked up once; entering sets their thread count to one and leaving restores what
the entering thread saw.

The thread that lowers a count is the one that raises it again: OpenBLAS ignores a
raise from another thread. An OpenMP BLAS keeps a count per thread, so each thread
pins its own; a pthreads BLAS has one count for the process, so a thread entering
while another holds the pin finds one thread already and leaves it alone (if the
first leaves earlier, the second finishes on the library's default threads: slower,
never wrong). OpenBLAS may also ignore a change to its process-wide count made from
a thread other than the main one, so a pin there is best effort; both cost only speed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]

_libraries: list[Any] | None = None


def _blas_libraries() -> list[Any]:
    global _libraries
    if _libraries is None:
        _libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block (for small work, or work already run in parallel)."""
    libraries = _blas_libraries()
    before = [lib.get_num_threads() for lib in libraries]
    for lib, threads in zip(libraries, before):
        if threads != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, threads in zip(libraries, before):
            if threads != 1:
                lib.set_num_threads(threads)
