"""The write side of a table: validate, log (WAL), apply to memory.

A change is conformed to the schema, its WAL record's payload goes to the disk while
the change is checked and staged in the memtable, the record's header and its
``fdatasync`` make it durable, and only then does it become visible. Flushing the
memtable to a segment is the flusher's (``flusher.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..convert import conform, refuse_non_finite, to_arrow_table
from ..errors import (CommitConflictError, DuplicateKeyError, InvalidArgumentError, ReadOnlyError,
                      storage_error)
from ..index.keys import keys_to_numpy
from ..query.search import allowed_rows
from ..storage.fileio import log_commit_in_progress
from ..storage.wal import PendingRecord, Payload, RecordKind, WalWriter, encode_table, single_record_file
from .memtable import Memtable, StagedRows
from .reader import TableReader
from .state import Deletions, TableCore

if TYPE_CHECKING:
    from .flusher import Flusher

__all__ = ["Writer", "WriteLog"]


@dataclass
class WriteLog:
    """The writer's log: the open WAL file, the last seq logged, the next automatic id,
    and why writes stopped (a failed log sync), if they did."""

    directory: Path
    fsync: bool
    wal: WalWriter | None = None
    seq: int = 0
    next_id: int = 0
    failure: str | None = None

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()


class Writer:
    """``add`` / ``upsert`` / ``insert`` / ``delete`` of a writable table."""

    def __init__(self, core: TableCore, reader: TableReader, log: WriteLog, flusher: "Flusher",
                 after_commit: Callable[[], None] = lambda: None) -> None:
        self._core = core
        self._reader = reader
        self._log = log
        self._flusher = flusher
        self._after_commit = after_commit  # (rows were added: the fresh indexer may take them)

    def check_writable(self) -> None:
        """Refuse writes once a log sync failed (the log's state on disk is unknown)."""
        if self._log.failure is not None:
            raise ReadOnlyError(f"table {self._core.name!r} takes no more writes: {self._log.failure}. Close and "
                                "reopen the database: every acknowledged write is replayed from the log")

    # ------------------------------------------------------------------ writes
    def write(self, kind: RecordKind, data: Any, fsync: bool | None, *, keys: bool = False) -> Any:
        core = self._core
        info = core.state.info
        raw = to_arrow_table(data, info.vector_column)
        self._flusher.wait_for_room(raw.nbytes)
        with core.write_lock:
            core.check_open()
            # NaN and infinity are refused in commit(), from the norms it computes anyway.
            table = conform(raw, info.schema, id_column=info.id_column, vector_column=info.vector_column,
                            next_id=self._log.next_id, require_ids=kind is RecordKind.UPSERT, check_finite=False)
            if table.num_rows == 0:
                return table.column(info.id_column).combine_chunks() if keys else 0
            self.commit(kind, table, fsync)
        return table.column(info.id_column).combine_chunks() if keys else table.num_rows

    def delete(self, ids: Any, where: str | None, fsync: bool | None) -> int:
        core = self._core
        if (ids is None) == (where is None):
            raise InvalidArgumentError("delete() takes ids or where=, exactly one of them")
        with core.write_lock:
            core.check_open()
            info = core.state.info
            if ids is not None:
                keys = pc.unique(self._reader.keys_array(ids))
                state = core.state
                located = self._reader.locate(keys_to_numpy(keys), state, state.memtables())
                keys = keys.take(pa.array(np.sort(np.concatenate([i for i, _, _ in located])))) \
                    if located else keys.slice(0, 0)
            else:
                keys = self._keys_where(where)
            if len(keys) == 0:
                return 0
            self.commit(RecordKind.DELETE, pa.table({info.id_column: keys}), fsync)
            return len(keys)

    def _keys_where(self, where: str) -> pa.Array:
        state, parts = self._reader.parts()
        info = state.info
        keys = []
        for part in parts:
            allowed = allowed_rows(part, where, info.vector_column)
            mask = np.ones(part.table.num_rows, bool) if allowed is None else allowed
            if mask.any():
                keys.append(part.table.column(info.id_column).filter(pa.array(mask)))
        id_type = info.schema.field(info.id_column).type
        return pa.chunked_array(keys, id_type).combine_chunks() if keys else pa.array([], id_type)

    # ------------------------------------------------------------------ commit
    def commit(self, kind: RecordKind, table: pa.Table, fsync: bool | None) -> None:
        """Log then apply one conformed change (caller holds the write lock).

        The WAL record's payload is written first; the change is checked and staged while
        the disk takes it; only then is the record's header written, which makes it a
        record. A refused change abandons it: the log is cut back, nothing changes.
        """
        core, log, flusher = self._core, self._log, self._flusher
        state = core.state
        if state.sealed is not None and state.sealed.error is not None:
            flusher.finish_sealed_locked()  # the background flush failed: retry it before logging more
        if (kind is not RecordKind.DELETE and len(core.state.memtable)
                and core.state.memtable.nbytes + table.nbytes > core.options.memtable_bytes):
            # Flush first rather than overfill: the memtable's buffers are sized for
            # ``memtable_bytes`` and growing them would copy every row held so far.
            flusher.flush_full()
        seq = log.seq + 1
        payload = encode_table(table)
        durable = log.fsync if fsync is None else fsync
        wal = log.wal
        # While a durable commit writes and syncs, a background segment or index write-back
        # holds back its next chunk (fileio.log_commit_in_progress).
        with log_commit_in_progress() if durable else contextlib.nullcontext():
            try:
                record = wal.begin(seq, kind, payload)  # the disk starts on the payload ...
            except OSError as exc:  # nothing was logged: the log is cut back to where it was
                raise storage_error(exc, f"writing to the write-ahead log of table {core.name!r}", wal.path) from None
            try:
                staged = self.check_and_stage(kind, table)  # ... while the change is checked and staged
            except BaseException:
                record.abandon()
                raise
            try:
                record.finish()
            except OSError as exc:
                raise storage_error(exc, f"writing to the write-ahead log of table {core.name!r}", wal.path) from None
            if durable:
                try:
                    wal.sync_data()
                except OSError as exc:
                    # The record may or may not be on disk, and the kernel may have dropped the
                    # pages it failed to write: writing on would build on a log of unknown state.
                    log.failure = f"syncing its write-ahead log failed ({exc})"
                    raise storage_error(exc, f"syncing the write-ahead log of table {core.name!r}",
                                        wal.path) from None
            if core.mirror is not None:
                self._store_record(seq, record, payload)
        log.seq = seq
        self.apply(kind, table, seq, staged)
        if core.state.memtable.nbytes >= core.options.memtable_bytes:
            flusher.flush_full()
        if staged is not None:
            self._after_commit()

    def _store_record(self, seq: int, record: PendingRecord, payload: Payload) -> None:
        """Put the record in the object store: only then is the change acknowledged. On
        failure it is cut off the local log again, and the writer stops taking writes
        when it cannot know whether the store kept it (or another writer took over)."""
        core, log = self._core, self._log
        try:
            core.mirror.log_record(seq, single_record_file(record, payload))
        except BaseException as exc:
            try:
                log.wal.retract(record)
            except OSError as cut:
                log.failure = f"cutting an unacknowledged record off its write-ahead log failed ({cut})"
            if log.failure is None:
                log.failure = (str(exc) if isinstance(exc, CommitConflictError) else
                               f"the object store did not confirm log record {seq} ({exc})")
            raise

    def check_and_stage(self, kind: RecordKind, table: pa.Table) -> StagedRows | None:
        """Refuse repeated or (for add) existing keys and non-finite vectors; stage the rows.

        Runs while the change's WAL record goes to disk and before it is finished, so a
        refusal leaves no record behind.
        """
        if kind is RecordKind.DELETE:
            return None
        state = self._core.state
        info = state.info
        key_column = table.column(info.id_column)
        _refuse_repeated_keys(key_column)
        if kind is RecordKind.ADD:
            existing = self._reader.locate(keys_to_numpy(key_column), state, state.memtables())
            if existing:
                found = np.concatenate([idx for idx, _, _ in existing])
                sample = keys_to_numpy(key_column)[np.sort(found)[:5]].tolist()
                raise DuplicateKeyError(
                    f"{found.size} id(s) already exist in table {self._core.name!r}, e.g. {sample}; "
                    "use upsert() to replace rows")
        staged = state.memtable.stage(table)
        refuse_non_finite(staged.vectors, staged.norms, info.vector_column)
        return staged

    def apply(self, kind: RecordKind, table: pa.Table, seq: int, staged: StagedRows | None = None) -> None:
        """Apply the change logged as record ``seq`` to memory (also used by WAL replay).

        ``staged``: the rows already copied in by ``Memtable.stage``. Holds the state
        lock throughout, so a reader sees an upsert's old rows or its new rows, never neither.
        """
        core = self._core
        keys = table.column(core.state.info.id_column)
        if kind in (RecordKind.UPSERT, RecordKind.DELETE):
            self._reader.load_key_indexes(core.state)  # (the state lock below is short then)
        with core.changing() as state:
            if kind in (RecordKind.UPSERT, RecordKind.DELETE):
                self._delete_keys(keys_to_numpy(keys), state, seq)
            if kind in (RecordKind.ADD, RecordKind.UPSERT):
                memtable = core.state.memtable
                if staged is None:
                    memtable.append(table)
                else:
                    memtable.commit(staged)
        if kind is not RecordKind.DELETE and pa.types.is_integer(keys.type) and len(keys):
            self._log.next_id = max(self._log.next_id, int(pc.max(keys).as_py()) + 1)

    def _delete_keys(self, keys: np.ndarray, state: Any, seq: int) -> None:
        """Mark the live rows of ``keys`` deleted by record ``seq`` (caller holds the state lock)."""
        changed = None
        for _, where, positions in self._reader.locate(keys, state, state.memtables()):
            if isinstance(where, Memtable):
                where.delete_rows(positions, seq)
            else:
                changed = dict(state.deletions) if changed is None else changed
                before = changed[where.file]
                mask = np.ones(where.entry.rows, bool) if before.live is None else before.live.copy()
                mask[positions] = False
                changed[where.file] = Deletions(mask, before.published, before.pending + ((seq, positions),))
        if changed is not None:
            self._core.swap(deletions=changed)


def _refuse_repeated_keys(keys: pa.ChunkedArray) -> None:
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys).flatten()
    repeated = pc.filter(counts[0], pc.greater(counts[1], 1)).to_pylist()[:5]
    raise DuplicateKeyError(f"id(s) repeated within the data: {repeated}")
