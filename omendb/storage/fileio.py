"""Small file primitives every on-disk format relies on: atomic publish and fsync."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "crc32_of_file", "write_file_synced"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and unlinks inside it survive power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (no rename, no directory sync)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Publish ``data`` at ``path`` atomically: temp file, fsync, rename, fsync dir.

    A reader sees either the old file (or none) or the complete new one, and after
    return the new file survives a crash of the process or the machine.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_file_synced(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def crc32_of_file(path: str | os.PathLike, chunk_bytes: int = 16 << 20) -> int:
    """CRC-32 of a whole file, read in chunks (never all at once)."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            crc = zlib.crc32(chunk, crc)
    return crc
