"""Write-ahead log: checksummed records, each holding one Arrow IPC stream.

Spec: ``formats/wal.md``. A record is written payload first, in pieces the disk starts
on while the next is copied in, then its header, and by default ``fdatasync``-ed
before the caller is told it is durable. On open, records are read back in order; an
incomplete or unverifiable *last* record is a torn tail (the process died while
writing it) and is cut off; a bad record followed by more data is corruption and
raises :class:`~omendb.errors.CorruptFileError`.
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

from ..errors import CorruptFileError, FormatVersionError
from .checksum import crc32
from .fileio import start_writeback

__all__ = ["RecordKind", "WalRecord", "WalWriter", "PendingRecord", "Payload", "read_wal", "encode_table",
           "decode_table"]

FORMAT_VERSION = 1
FILE_MAGIC = b"OMENWAL\x00"
FILE_HEADER = struct.Struct("<8sII")  # magic, format_version, crc32(magic+version)
RECORD_MAGIC = b"WREC"
RECORD_HEADER = struct.Struct("<4sBBHQII")  # magic, kind, flags, reserved, seq, length, crc32
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
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._pending: PendingRecord | None = None
        self._size = os.fstat(self._fd).st_size
        if new:
            self._size = _pwrite_all(self._fd, [memoryview(_header_bytes())], 0)
            os.fsync(self._fd)

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
        fields = struct.pack("<BBHQI", int(kind), 0, 0, seq, payload.size)
        start = self._size
        try:
            crc = _write_payload(self._fd, payload, start + RECORD_HEADER.size, crc32(fields))
        except BaseException:
            self._cut_back(start)
            raise
        header = RECORD_HEADER.pack(RECORD_MAGIC, int(kind), 0, 0, seq, payload.size, crc)
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


def read_wal(path: str | os.PathLike, *, repair: bool = True) -> Iterator[WalRecord]:
    """Yield the committed records of a WAL file in order.

    A torn tail is cut off (the file truncated) when ``repair`` is true.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < FILE_HEADER.size:
        # The file was created but its header never fully reached disk: nothing
        # in it was ever acknowledged.
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(0)
        return
    magic, version, crc = FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC or crc != crc32(data[:12]):
        raise CorruptFileError(f"{path}: not an omendb write-ahead log (bad header)")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: write-ahead log format version {version} is not supported "
            f"(this omendb reads version {FORMAT_VERSION})")
    view = memoryview(data)
    offset = FILE_HEADER.size
    while offset < len(data):
        problem = None
        if len(data) - offset < RECORD_HEADER.size:
            problem = "incomplete record header"
        else:
            magic, kind, flags, reserved, seq, length, crc = RECORD_HEADER.unpack_from(data, offset)
            end = offset + RECORD_HEADER.size + length
            if magic != RECORD_MAGIC:
                problem = "bad record magic"
            elif end > len(data):
                problem = "incomplete record"
            else:
                payload = view[offset + RECORD_HEADER.size:end]
                fields = data[offset + 4:offset + RECORD_HEADER.size - 4]
                if _record_crc(fields, payload) != crc:
                    problem = "checksum mismatch"
        if problem is not None:
            torn_tail = _nothing_valid_after(data, offset)
            if not torn_tail:
                raise CorruptFileError(
                    f"{path}: {problem} in record at byte {offset}, followed by more records")
            if repair:
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    handle.flush()
                    os.fsync(handle.fileno())
            return
        try:
            record_kind = RecordKind(kind)
            table = decode_table(payload)
        except (ValueError, pa.ArrowInvalid) as exc:
            raise CorruptFileError(f"{path}: record at byte {offset} cannot be decoded: {exc}") from exc
        yield WalRecord(seq, record_kind, table)
        offset = end


def _nothing_valid_after(data: bytes, offset: int) -> bool:
    """True when no verifiable record starts after ``offset``: the damage is a torn tail."""
    start = data.find(RECORD_MAGIC, offset + 1)
    while start >= 0 and len(data) - start >= RECORD_HEADER.size:
        _, _, _, _, _, length, crc = RECORD_HEADER.unpack_from(data, start)
        end = start + RECORD_HEADER.size + length
        if end <= len(data):
            fields = data[start + 4:start + RECORD_HEADER.size - 4]
            if _record_crc(fields, memoryview(data)[start + RECORD_HEADER.size:end]) == crc:
                return False
        start = data.find(RECORD_MAGIC, start + 1)
    return True
