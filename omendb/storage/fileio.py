"""Small file primitives every on-disk format relies on: atomic publish and fsync."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CorruptFileError
from .checksum import crc32_of_file

__all__ = ["atomic_write", "fsync_dir", "crc32_of_file", "write_file_synced", "publish_written", "verify_file"]


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


def publish_written(tmp: str | os.PathLike, final: str | os.PathLike) -> tuple[int, int]:
    """Make a fully written temp file durable under its final name.

    Checksums it (through a memory map), fsyncs it, renames it and fsyncs the
    directory. Returns ``(bytes, crc32)`` for the manifest.
    """
    final = Path(final)
    crc = crc32_of_file(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final.stat().st_size, crc


def verify_file(path: str | os.PathLike, *, size: int, crc32: int | None, what: str) -> None:
    """Check a file against the size and CRC-32 its manifest recorded (CRC when given).

    Raises :class:`CorruptFileError` naming the file when it is missing, has another
    size or fails the checksum.
    """
    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: {what} file is missing") from None
    if actual != size:
        raise CorruptFileError(f"{path}: {what} is {actual} bytes, manifest says {size}")
    if crc32 is not None and crc32_of_file(path) != crc32:
        raise CorruptFileError(f"{path}: {what} checksum mismatch (file is damaged)")
