"""Write-ahead log: checksummed records, each holding one Arrow IPC stream.

Spec: ``formats/wal.md``. A record is written payload first, in pieces the disk starts
on while the next is copied in, then its header, and by default ``fdatasync``-ed
before the caller is told it is durable. On open, records are read back in order. A
damaged *last* record is a torn tail, cut off, only when its damage is what a crash
during its write leaves (``formats/wal.md``, "Torn tail or damage"); any other damage
raises :class:`~omendb.errors.WalDamageError` naming the file and the records, and
:func:`scan_wal` recovers every record that still verifies (for salvage).
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import FormatVersionError, WalDamageError, storage_error
from .checksum import crc32
from .fileio import fsync_dir, start_writeback

__all__ = ["RecordKind", "WalRecord", "WalWriter", "PendingRecord", "Payload", "read_wal", "scan_wal", "WalScan",
           "WalProblem", "encode_table", "decode_table", "wal_file_name", "first_seq_of"]

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


@dataclass(frozen=True)
class WalProblem:
    """Where and how a WAL file stops verifying."""

    offset: int               # byte offset of the first bad record
    reason: str
    torn: bool                # explained by a crash during that record's write: never acknowledged
    quiet: bool               # a torn tail a killed process leaves (header never written): nothing to say
    expected_seq: int | None  # the seq the bad record should have had
    rows: str = ""            # what the damaged record seems to hold, when its payload still decodes


@dataclass
class WalScan:
    """What :func:`scan_wal` found in one WAL file."""

    path: Path
    records: list[WalRecord]          # verified records before the first problem, in order
    problem: WalProblem | None = None
    later: list[WalRecord] | None = None  # verifiable records after a damage (salvage keeps them)
    size: int = 0

    def describe(self) -> str:
        """One sentence on the damage and what it holds, for error messages."""
        p = self.problem
        if p is None:
            return f"{self.path}: no damage"
        text = f"{self.path}: {p.reason} at byte {p.offset}"
        if p.expected_seq is not None:
            text += f" (record seq {p.expected_seq})"
        if p.rows:
            text += f"; the damaged record seems to hold {p.rows}"
        if self.later:
            rows = sum(r.payload.num_rows for r in self.later)
            text += (f"; {len(self.later)} verifiable record(s) follow it (seq {self.later[0].seq}.."
                     f"{self.later[-1].seq}, {rows} rows)")
        return text


def scan_wal(path: str | os.PathLike, *, last: bool = True, expected_first: int | None = None) -> WalScan:
    """Read a WAL file, stopping at the first record that does not verify.

    ``last``: the file is the newest of its table, so its final record may be a torn
    tail; damage anywhere in an older file is always damage. ``expected_first``: the
    seq its first record must have (from the file name), if known.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        scan = WalScan(path, [])
        scan.problem = WalProblem(0, "is a directory, not a log file", False, False, expected_first)
        return scan
    except OSError as exc:
        raise storage_error(exc, "reading a write-ahead log", path) from None
    scan = WalScan(path, [], size=len(data))
    if len(data) < FILE_HEADER.size:
        scan.problem = WalProblem(0, f"file of {len(data)} bytes is shorter than its header (WAL files are "
                                     "created whole, so it was truncated)", False, False, expected_first)
        return scan
    magic, version, crc = FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC or crc != crc32(data[:12]):
        scan.problem = WalProblem(0, "not an omendb write-ahead log (bad file header)", False, False, expected_first)
        return scan
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: write-ahead log format version {version} is not supported "
            f"(this omendb reads version {FORMAT_VERSION})")
    view = memoryview(data)
    offset = FILE_HEADER.size
    expected = expected_first
    while offset < len(data):
        record, reason, torn, quiet = _read_record(data, view, offset, expected, last)
        if record is None:
            later = _records_after(data, offset, expected)
            if torn and later:  # a torn record is the last one written: this one is not
                reason, torn, quiet = f"{reason}, with acknowledged records after it", False, False
            scan.problem = WalProblem(offset, reason, torn, quiet, expected, "" if torn else _peek_rows(data, offset))
            scan.later = None if torn else later
            return scan
        scan.records.append(record)
        expected = record.seq + 1
        offset += RECORD_HEADER.size + record.size
    return scan


def _read_record(data: bytes, view: memoryview, offset: int, expected: int | None,
                 last: bool) -> tuple[WalRecord | None, str, bool, bool]:
    """(record, "", ...) or (None, reason, torn, quiet) for the record at ``offset``."""
    remaining = len(data) - offset
    head = data[offset:offset + RECORD_HEADER.size]
    if not any(head):
        # The header is written last: zeros there are a record whose write never finished.
        return None, "record header never written", last, last
    if remaining < RECORD_HEADER.size:
        return None, "incomplete record header", last, False
    magic, kind, flags, check, seq, length, crc = RECORD_HEADER.unpack_from(data, offset)
    header_ok = magic == RECORD_MAGIC and (not flags & FLAG_HEADER_CHECK
                                           or check == _header_check(kind, flags, seq, length))
    if not header_ok:
        # A sector of a header that straddles a sector boundary may not have been written.
        torn = last and _could_be_unwritten(data, offset, offset + RECORD_HEADER.size)
        return None, "damaged record header", torn, False
    if expected is not None and seq != expected:
        return None, f"record has seq {seq} where {expected} was expected", False, False
    end = offset + RECORD_HEADER.size + length
    if end > len(data):
        return None, f"record of {length} bytes cut short ({remaining - RECORD_HEADER.size} present)", last, False
    payload = view[offset + RECORD_HEADER.size:end]
    if _record_crc(data[offset + 4:offset + RECORD_HEADER.size - 4], payload) != crc:
        return None, "record checksum mismatch", last and _could_be_unwritten(data, offset, end), False
    try:
        record = WalRecord(seq, RecordKind(kind), decode_table(payload), length)
    except (ValueError, pa.ArrowInvalid) as exc:
        return None, f"record cannot be decoded ({exc})", False, False
    return record, "", False, False


def _could_be_unwritten(data: bytes, start: int, end: int) -> bool:
    """True when some disk sector overlapping ``[start, end)`` holds only zeros there:
    what a crash leaves of a write the disk had not finished."""
    first = start - start % SECTOR
    for sector in range(first, end, SECTOR):
        lo, hi = max(sector, start), min(sector + SECTOR, end)
        if hi - lo >= min(64, end - start) and not any(data[lo:hi]):
            return True
    return False


def _peek_rows(data: bytes, offset: int) -> str:
    """Best effort, for the error message: the rows of a damaged record whose payload still decodes."""
    try:
        _, kind, _, _, _, length, _ = RECORD_HEADER.unpack_from(data, offset)
        table = decode_table(memoryview(data)[offset + RECORD_HEADER.size:offset + RECORD_HEADER.size + length])
        ids = table.column(0).slice(0, 5).to_pylist()
        action = RecordKind(kind).name.lower()
    except Exception:  # noqa: BLE001 - damaged bytes may fail anywhere; the message just says less
        return ""
    more = ", ..." if table.num_rows > 5 else ""
    return f"{table.num_rows} row(s) to {action} ({table.column_names[0]} {', '.join(map(repr, ids))}{more})"


def _records_after(data: bytes, offset: int, expected: int | None) -> list[WalRecord]:
    """The records that follow damaged bytes at ``offset``: a run of consecutive, verified
    records (seqs after ``expected``, the damaged record's own) that ends at the end of
    the file or at a torn tail. Empty when there is none.

    Record-like bytes inside a payload (a user's blob may hold anything) are not taken
    for records: such bytes are followed by the rest of their payload, never by the end
    of the file, and the damaged record is skipped whole when its header checks out.
    """
    view = memoryview(data)
    start = offset + 1
    if len(data) - offset >= RECORD_HEADER.size:
        magic, kind, flags, check, seq, length, _ = RECORD_HEADER.unpack_from(data, offset)
        if magic == RECORD_MAGIC and flags & FLAG_HEADER_CHECK and check == _header_check(kind, flags, seq, length):
            start = offset + RECORD_HEADER.size + length
    candidate = data.find(RECORD_MAGIC, start)
    while candidate >= 0 and len(data) - candidate >= RECORD_HEADER.size:
        record = _read_record(data, view, candidate, None, False)[0]
        if record is not None and (expected is None or record.seq > expected):
            run, position = [record], candidate + RECORD_HEADER.size + record.size
            while position < len(data):
                following, _, torn, _ = _read_record(data, view, position, run[-1].seq + 1, True)
                if following is None:
                    break
                run.append(following)
                position += RECORD_HEADER.size + following.size
            if position >= len(data) or torn:
                return run
        candidate = data.find(RECORD_MAGIC, candidate + 1)
    return []


def read_wal(path: str | os.PathLike, *, repair: bool = True, last: bool = True,
             expected_first: int | None = None, salvage_hint: str = "`omendb salvage`") -> Iterator[WalRecord]:
    """Yield the committed records of a WAL file in order.

    A torn tail (see :func:`scan_wal`) is cut off, the file truncated, when ``repair``
    is true; a torn tail that a power loss, not a killed process, would leave is
    reported with a ``RuntimeWarning``. Damage raises :class:`WalDamageError`.
    """
    scan = scan_wal(path, last=last, expected_first=expected_first)
    problem = scan.problem
    if problem is not None and not problem.torn:
        raise WalDamageError(
            f"{scan.describe()}. The log holds acknowledged writes past this point, so the table is not "
            f"opened (nothing was changed or removed); see formats/wal.md, or run {salvage_hint} to keep "
            "every record that still verifies")
    yield from scan.records
    if problem is not None and repair:
        if not problem.quiet:
            warnings.warn(f"omendb: {scan.path}: cut off a torn last record at byte {problem.offset} "
                          f"({problem.reason}), as a crash during its write leaves it; that write was never "
                          "acknowledged", RuntimeWarning, stacklevel=2)
        with open(scan.path, "r+b") as handle:
            handle.truncate(problem.offset)
            handle.flush()
            os.fsync(handle.fileno())
