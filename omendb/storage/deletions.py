"""Deletion files: the sorted row positions deleted from one immutable segment.

Spec: ``formats/deletions.md``. A deletion file is immutable too: each publish that
changes a segment's deletions writes a new file and the manifest points at it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, FormatVersionError, MissingFileError
from .checksum import crc32
from .fileio import atomic_write

__all__ = ["write_deletions", "read_deletions", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = b"OMENDEL\x00"
_HEADER = struct.Struct("<8sIQ")  # magic, format_version, count


def write_deletions(path: str | os.PathLike, positions: np.ndarray) -> None:
    """Atomically write the deleted row positions (any order; stored sorted, unique)."""
    rows = np.unique(np.asarray(positions, dtype=np.uint32)).astype("<u4")
    body = _HEADER.pack(_MAGIC, FORMAT_VERSION, rows.size) + rows.tobytes()
    atomic_write(path, body + struct.pack("<I", crc32(body)))


def read_deletions(path: str | os.PathLike, *, segment_rows: int) -> np.ndarray:
    """Read and verify a deletion file; return its sorted ``uint32`` row positions."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: deletion file is missing", path) from None
    if len(data) < _HEADER.size + 4:
        raise CorruptFileError(f"{path}: deletion file is truncated")
    magic, version, count = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise CorruptFileError(f"{path}: not an omendb deletion file")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: deletion file format version {version} is not supported "
            f"(this omendb reads version {FORMAT_VERSION})")
    if len(data) != _HEADER.size + 4 * count + 4:
        raise CorruptFileError(f"{path}: deletion file length does not match its count")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if crc32(data[:-4]) != crc:
        raise CorruptFileError(f"{path}: deletion file checksum mismatch")
    rows = np.frombuffer(data, dtype="<u4", count=count, offset=_HEADER.size)
    if count and int(rows[-1]) >= segment_rows:
        raise CorruptFileError(f"{path}: deletes row {int(rows[-1])} of a {segment_rows}-row segment")
    return rows.astype(np.uint32)
