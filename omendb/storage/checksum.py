"""CRC-32 (zlib's polynomial, so every file format keeps its checksums) at memory speed.

zlib-ng's folded, carry-less-multiply CRC-32 gives the same values as ``zlib.crc32``
many times faster; every WAL record and segment is checksummed, so this sits on the
durable write path.
"""

from __future__ import annotations

import mmap
import os

from zlib_ng.zlib_ng import crc32

__all__ = ["crc32", "crc32_of_file"]


def crc32_of_file(path: str | os.PathLike) -> int:
    """CRC-32 of a whole file, read through a memory map (no copy into Python)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return 0
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return crc32(mapped)
