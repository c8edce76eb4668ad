"""Small file primitives every on-disk format relies on: atomic publish and fsync."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import CorruptFileError, MissingFileError, storage_error
from .checksum import crc32, crc32_of_file

__all__ = ["atomic_write", "fsync_dir", "crc32_of_file", "write_file_synced", "publish_written", "verify_file",
           "start_writeback", "write_back_gradually", "log_commit_in_progress", "ChecksummingWriter",
           "remove_gradually"]

# sync_file_range(2) flags
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux ``sync_file_range(fd, offset, nbytes, flags)``, or None where it is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()

#: Bytes per step of :func:`write_back_gradually`.
WRITEBACK_CHUNK = 1 << 20


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to begin writing a byte range back now, without waiting.

    It promises nothing (an ``fdatasync`` after it does), so work done in between
    overlaps the disk write. A no-op where ``sync_file_range`` is not available.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _WRITE)


class _LogCommits:
    """Counts log commits in progress; bulk write-back waits (briefly) for none to be."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._active = 0

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        with self._changed:
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                if not self._active:
                    self._changed.notify_all()

    def wait_for_none(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._active, timeout)


_LOG_COMMITS = _LogCommits()

#: Longest a write-back chunk waits for log commits to pause (writers never wait for it).
LOG_COMMIT_WAIT = 0.005


def log_commit_in_progress() -> contextlib.AbstractContextManager[None]:
    """Mark one log commit in progress: a WAL record's write and its ``fdatasync``.

    :func:`write_back_gradually` hands the disk its next chunk between commits, so a
    segment or index written in the background fills the gaps while the writer prepares
    its next batch, instead of queueing ahead of the log's sync. Commits never wait for
    each other or for the write-back.
    """
    return _LOG_COMMITS.commit()


def write_back_gradually(fd: int, size: int, chunk: int = WRITEBACK_CHUNK, *,
                         patient: Callable[[], bool] | None = None) -> None:
    """Write a freshly written file's pages back ``chunk`` bytes at a time, between log commits.

    Why not one ``fsync``: on ext4 (``data=ordered``) a log ``fdatasync`` commits the
    journal, and the commit first waits for the data of every block allocated in that
    transaction. A 64 MiB segment handed to the disk at once makes some log commit wait
    for all of it (adds stalled 20-40 ms). Here each chunk waits for the log commits in
    progress (:func:`log_commit_in_progress`, at most :data:`LOG_COMMIT_WAIT`), goes to
    the disk alone and is waited for, so a commit finds at most one chunk ahead of it.
    The waits add up to no more than the disk time of the chunks, so under a steady
    stream of commits a write-back takes at most about twice as long; and none is made
    while ``patient()`` says false (a flush that must end before the next memtable
    fills). The ``fsync`` that follows still guarantees durability. A no-op where
    ``sync_file_range`` is not available.
    """
    if _SYNC_FILE_RANGE is None:
        return
    waited = busy = 0.0
    for offset in range(0, size, chunk):
        if busy > waited and (patient is None or patient()):  # yield no longer than the disk spent on it
            started = time.monotonic()
            _LOG_COMMITS.wait_for_none(min(LOG_COMMIT_WAIT, busy - waited))
            waited += time.monotonic() - started
        started = time.monotonic()
        _SYNC_FILE_RANGE(fd, offset, chunk, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
        busy += time.monotonic() - started


#: Bytes freed per step of :func:`remove_gradually`.
REMOVE_STEP = 4 << 20


def remove_gradually(path: str | os.PathLike, step: int = REMOVE_STEP) -> None:
    """Delete a large file by shrinking it ``step`` bytes at a time, then unlinking it.

    Freeing a 64 MiB file in one unlink holds an ext4 journal handle for ~20 ms, and a
    log ``fdatasync`` meanwhile waits for it; in steps each wait is short. Only for files
    no process maps (log files): a mapped file's cut pages kill the process reading
    them with SIGBUS. Missing files are fine.
    """
    try:
        size = os.stat(path).st_size
        while size > step:
            size -= step
            os.truncate(path, size)
        Path(path).unlink()
    except FileNotFoundError:
        pass


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
    try:
        write_file_synced(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, "writing", path) from None


class ChecksummingWriter:
    """A binary file that checksums what it writes (so a publish need not read it back)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._file = open(path, "wb")
        self.crc32 = 0
        self.closed = False

    def write(self, data) -> int:
        self.crc32 = crc32(data, self.crc32)
        return self._file.write(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self.closed = True


def publish_written(tmp: str | os.PathLike, final: str | os.PathLike, crc32: int | None = None, *,
                    patient: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Make a fully written temp file durable under its final name.

    Checksums it (through a memory map) unless its writer did (``crc32``), fsyncs it
    (written back with :func:`write_back_gradually`, given ``patient``), renames it and
    fsyncs the directory. Returns ``(bytes, crc32)`` for the manifest.
    """
    final = Path(final)
    crc = crc32_of_file(tmp) if crc32 is None else crc32
    with open(tmp, "rb+") as handle:
        write_back_gradually(handle.fileno(), os.fstat(handle.fileno()).st_size, patient=patient)
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
        raise MissingFileError(f"{path}: {what} file is missing", path) from None
    if actual != size:
        raise CorruptFileError(f"{path}: {what} is {actual} bytes, manifest says {size}")
    if crc32 is not None and crc32_of_file(path) != crc32:
        raise CorruptFileError(f"{path}: {what} checksum mismatch (file is damaged)")
