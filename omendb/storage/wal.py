"""Write-ahead log: checksummed records, each holding one Arrow IPC stream.

Spec: ``formats/wal.md``. A record is written payload first, in pieces the disk starts
on while the next is copied in, then its header, and by default ``fdatasync``-ed
before the caller is told it is durable. On open, records are read back in order. A
damaged *last* record is a torn tail, cut off, only when its damage is what a crash
during its write leaves (``formats/wal.md``, "Torn tail or damage"); any other damage
raises :class:`~omendb.errors.WalDamageError` naming the file and the records, and
:func:`~omendb.storage.wal_read.scan_wal` recovers every record that still verifies
(for salvage). Reading lives in ``wal_read.py``; this module writes.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import storage_error
from .checksum import crc32
from .fileio import fsync_dir, start_writeback

__all__ = ["RecordKind", "WalRecord", "WalWriter", "PendingRecord", "Payload", "encode_table", "decode_table",
           "wal_file_name", "first_seq_of", "single_record_file"]

FORMAT_VERSION = 1
FILE_MAGIC = b"OMENWAL\x00"
FILE_HEADER = struct.Struct("<8sII")  # magic, format_version, crc32(magic+version)
RECORD_MAGIC = b"WREC"
RECORD_HEADER = struct.Struct("<4sBBHQII")  # magic, kind, flags, header check, seq, length, crc32
#: Flag bit: the u16 after the flags is a check of the header's own fields, so a reader
#: can trust a record's length and seq before its payload verifies (formats/wal.md).
FLAG_HEADER_CHECK = 1
#: The unit a disk persists whole; a crash leaves a sector of an unsynced write either
#: written or not (reading as zeros), never half.
SECTOR = 512
_IOV_MAX = 512  # buffers per pwritev call (Linux allows 1024)
#: Payload bytes handed to the kernel per step of a record write; each step's write-back
#: starts at once, so the disk works on one piece while the next is checksummed and copied.
#: Each step costs a request to the disk (a trip to the host in a VM): with 256 KiB pieces
#: a 1,000 x 384 batch took ~0.15 ms longer per add than with 1 MiB (benchmarks/README.md).
WRITE_PIECE = 1 << 20


class RecordKind(enum.IntEnum):
    """What a WAL record asks the table to do with its Arrow payload."""

    ADD = 1
    UPSERT = 2
    DELETE = 3


@dataclass(frozen=True)
class WalRecord:
    """One committed log record."""

    seq: int
    kind: RecordKind
    payload: pa.Table
    size: int = 0  # payload bytes in the file


class Payload:
    """A record's payload, one Arrow IPC stream, as the pieces the IPC writer produced.

    The large pieces are views of the table's own buffers: nothing is copied until the
    bytes go to the kernel.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: list) -> None:
        self.parts = [memoryview(part).cast("B") for part in parts if len(part)]
        self.size = sum(len(part) for part in self.parts)

    def __len__(self) -> int:
        return self.size

    def to_bytes(self) -> bytes:
        return b"".join(self.parts)


class _Pieces:
    """A write-only file that keeps what it is given (pyarrow hands it buffers uncopied)."""

    def __init__(self) -> None:
        self.parts: list = []
        self.closed = False

    def write(self, data) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def encode_table(table: pa.Table | pa.RecordBatch) -> Payload:
    """Serialise Arrow data as an IPC stream (the payload of a record), without copying its buffers."""
    pieces = _Pieces()
    with pa.ipc.new_stream(pa.PythonFile(pieces, mode="w"), table.schema) as writer:
        writer.write(table)
    return Payload(pieces.parts)


def decode_table(payload: pa.Buffer | bytes) -> pa.Table:
    """Inverse of :func:`encode_table`."""
    return pa.ipc.open_stream(payload).read_all()


def wal_file_name(first_seq: int) -> str:
    """A WAL file's name: the sequence number of its first record, 20 digits."""
    return f"{first_seq:020d}.wal"


def first_seq_of(path: str | os.PathLike) -> int | None:
    """The first sequence number a WAL file's name promises (None: not a numbered name)."""
    stem = Path(path).name.removesuffix(".wal")
    return int(stem) if len(stem) == 20 and stem.isdigit() else None


def _header_check(kind: int, flags: int, seq: int, length: int) -> int:
    return crc32(struct.pack("<BBQI", kind, flags, seq, length)) & 0xFFFF


def _record_header(kind: int, seq: int, length: int, crc: int) -> bytes:
    check = _header_check(kind, FLAG_HEADER_CHECK, seq, length)
    return RECORD_HEADER.pack(RECORD_MAGIC, kind, FLAG_HEADER_CHECK, check, seq, length, crc)


def _header_bytes() -> bytes:
    head = FILE_MAGIC + struct.pack("<I", FORMAT_VERSION)
    return FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, crc32(head))


def _record_crc(header_fields: bytes, payload: memoryview | bytes | pa.Buffer | Payload) -> int:
    crc = crc32(header_fields)
    for part in payload.parts if isinstance(payload, Payload) else (payload,):
        crc = crc32(part, crc)
    return crc


class WalWriter:
    """Appends records to one WAL file. Not thread-safe: the table serialises writes."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        try:
            if not self.path.exists():
                _create(self.path)
            self._fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise storage_error(exc, "starting a write-ahead log file", self.path) from None
        self._pending: PendingRecord | None = None
        self._size = os.fstat(self._fd).st_size

    def append(self, seq: int, kind: RecordKind, payload: Payload, *, fsync: bool | None = None) -> None:
        """Append one record; return once it is on stable storage if ``fsync``."""
        self.write(seq, kind, payload)
        if self.fsync if fsync is None else fsync:
            self.sync_data()

    def write(self, seq: int, kind: RecordKind, payload: Payload) -> None:
        """Append one record without waiting for the disk: :meth:`sync_data` makes it durable."""
        self.begin(seq, kind, payload).finish()

    def begin(self, seq: int, kind: RecordKind, payload: Payload) -> PendingRecord:
        """Write a record's payload and return it pending: it is not a record until ``finish()``.

        The payload goes first, in pieces of :data:`WRITE_PIECE` bytes whose write-back
        starts at once, so the disk works while the caller checks and stages the change.
        The header, which carries the checksum, is written last, by ``finish()``; until
        then the bytes read as a torn tail. On failure, or on ``abandon()``, the file is
        cut back to its previous end.
        """
        if self._pending is not None:
            raise RuntimeError("a WAL record is already pending")
        check = _header_check(int(kind), FLAG_HEADER_CHECK, seq, payload.size)
        fields = struct.pack("<BBHQI", int(kind), FLAG_HEADER_CHECK, check, seq, payload.size)
        start = self._size
        try:
            crc = _write_payload(self._fd, payload, start + RECORD_HEADER.size, crc32(fields))
        except BaseException:
            self._cut_back(start)
            raise
        header = _record_header(int(kind), seq, payload.size, crc)
        self._pending = PendingRecord(self, start, RECORD_HEADER.size + payload.size, header)
        return self._pending

    def _finish(self, record: PendingRecord) -> None:
        try:
            _pwrite_all(self._fd, [memoryview(record.header)], record.start)
        except BaseException:
            self._cut_back(record.start)
            raise
        finally:
            self._pending = None
        self._size = record.start + record.size

    def _abandon(self, record: PendingRecord) -> None:
        self._pending = None
        self._cut_back(record.start)

    def _cut_back(self, size: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)

    def retract(self, record: "PendingRecord") -> None:
        """Cut a finished record (the newest) back off: it was never acknowledged (an
        object store refused to take it), so a reopen must not replay it."""
        if record.start + record.size != self._size:
            raise RuntimeError("only the newest WAL record can be retracted")
        os.ftruncate(self._fd, record.start)
        self._size = record.start

    def sync_data(self) -> None:
        """Wait until every record written so far is on stable storage (``fdatasync``)."""
        os.fdatasync(self._fd)

    def sync(self) -> None:
        """Force everything appended so far to stable storage."""
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _create(path: Path) -> None:
    """Create a WAL file holding only its header, atomically: a file under a WAL name
    always has a complete header, so a short one is damage, never a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _pwrite_all(fd, [memoryview(_header_bytes())], 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)


def single_record_file(record: "PendingRecord", payload: Payload) -> bytes:
    """A whole WAL file holding just ``record``: how an object store keeps one commit."""
    return b"".join([_header_bytes(), record.header, *payload.parts])


class PendingRecord:
    """A record whose payload is written and whose header is not (see :meth:`WalWriter.begin`)."""

    __slots__ = ("_writer", "start", "size", "header")

    def __init__(self, writer: WalWriter, start: int, size: int, header: bytes) -> None:
        self._writer = writer
        self.start, self.size, self.header = start, size, header

    def finish(self) -> None:
        """Write the header: the record now exists (durable after ``sync_data()``)."""
        self._writer._finish(self)

    def abandon(self) -> None:
        """Forget the record: the log is cut back to where it began."""
        self._writer._abandon(self)


def _write_payload(fd: int, payload: Payload, offset: int, crc: int) -> int:
    """Write ``payload`` at ``offset`` piece by piece, starting each piece's write-back.

    Returns the record's checksum: ``crc`` (of the header fields) continued over the payload.
    """
    for piece in _pieces(payload.parts, WRITE_PIECE):
        for part in piece:
            crc = crc32(part, crc)
        written = _pwrite_all(fd, piece, offset)
        start_writeback(fd, offset, written)
        offset += written
    return crc


def _pieces(parts: list[memoryview], size: int) -> Iterator[list[memoryview]]:
    """``parts`` regrouped into runs of about ``size`` bytes (large parts are split)."""
    piece: list[memoryview] = []
    room = size
    for part in parts:
        while len(part):
            taken = part[:room]
            piece.append(taken)
            room -= len(taken)
            part = part[len(taken):]
            if not room:
                yield piece
                piece, room = [], size
    if piece:
        yield piece


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Write every byte of ``views`` at ``offset`` (``pwritev``, resumed after a short write)."""
    views = list(views)
    total = 0
    while views:
        written = os.pwritev(fd, views[:_IOV_MAX], offset + total)
        total += written
        while written:
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0] = views[0][written:]
                written = 0
    return total
