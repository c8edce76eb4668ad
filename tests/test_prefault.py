"""The helper that faults a buffer's pages in ahead of the writer (``omendb.prefault``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np
import pytest

from omendb.table import prefault

MiB = 1 << 20


def _resident_fraction(array: np.ndarray, start: int, end: int) -> float:
    """Share of the pages of ``array[start:end]`` that are in memory (``mincore``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    page = mmap.PAGESIZE
    first = (array.ctypes.data + start) // page * page
    last = -(-(array.ctypes.data + end) // page) * page
    pages = (last - first) // page
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(first), ctypes.c_size_t(last - first), vector) != 0:
        pytest.skip("mincore is not available")
    return sum(v & 1 for v in vector) / pages


def _fresh_buffer(size: int) -> np.ndarray:
    """``size`` bytes of newly mapped memory: no page is in memory yet (``np.empty`` may
    hand back memory the process used before, already faulted in)."""
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)


def _populated_or_skip(ahead: prefault.AheadOfUse) -> None:
    assert ahead.wait(30), "the helper thread did not finish"
    if not prefault.available():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")


@pytest.mark.skipif(not prefault.available(), reason="needs madvise (Linux)")
def test_pages_after_the_used_part_are_faulted_in_and_far_ones_are_not() -> None:
    buffer = _fresh_buffer(64 * MiB)
    ahead = prefault.AheadOfUse(buffer, lookahead=8 * MiB)
    buffer[:MiB] = 1
    ahead.used(MiB)  # a 1 MiB write: eight more are asked for
    _populated_or_skip(ahead)
    assert _resident_fraction(buffer, MiB, 9 * MiB) == 1.0
    assert _resident_fraction(buffer, 40 * MiB, 48 * MiB) == 0.0


@pytest.mark.skipif(not prefault.available(), reason="needs madvise (Linux)")
def test_small_writes_fault_in_little() -> None:
    buffer = _fresh_buffer(64 * MiB)
    ahead = prefault.AheadOfUse(buffer, lookahead=16 * MiB)
    buffer[:4096] = 1
    ahead.used(4096)  # eight 4 KiB writes' worth, not 16 MiB
    _populated_or_skip(ahead)
    assert _resident_fraction(buffer, 8 * MiB, 16 * MiB) == 0.0


@pytest.mark.skipif(not prefault.available(), reason="needs madvise (Linux)")
def test_faulting_in_never_changes_what_the_buffer_holds() -> None:
    buffer = _fresh_buffer(32 * MiB)
    pattern = np.random.default_rng(0).integers(0, 256, 16 * MiB, dtype=np.uint8)
    buffer[:16 * MiB] = pattern  # written already, as by a writer racing the helper
    ahead = prefault.AheadOfUse(buffer, lookahead=8 * MiB)
    ahead.used(MiB)
    _populated_or_skip(ahead)
    assert np.array_equal(buffer[:16 * MiB], pattern)
