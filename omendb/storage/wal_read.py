"""Reading the write-ahead log back (``formats/wal.md``): every record in order, a torn
tail cut off only when its damage is what a crash during its write leaves, any other
damage reported (:class:`~omendb.errors.WalDamageError`) or, for salvage, skipped by
:func:`scan_wal`, which recovers every record that still verifies. ``wal.py`` writes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import FormatVersionError, WalDamageError, storage_error
from .checksum import crc32
from .wal import (FILE_HEADER, FILE_MAGIC, FLAG_HEADER_CHECK, FORMAT_VERSION, RECORD_HEADER, RECORD_MAGIC, SECTOR,
                  RecordKind, WalRecord, _header_check, _record_crc, decode_table)

__all__ = ["read_wal", "scan_wal", "WalScan", "WalProblem"]


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
