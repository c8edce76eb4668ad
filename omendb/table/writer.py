"""The write side of a table: validate, WAL commit, apply to memory (flushing: ``flushing.py``)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..convert import conform, refuse_non_finite, to_arrow_table
from ..errors import DuplicateKeyError, InvalidArgumentError, ReadOnlyError, storage_error
from ..keys import keys_to_numpy
from ..memtable import Memtable, StagedRows
from ..query.search import allowed_rows
from ..storage.fileio import log_commit_in_progress
from ..storage.wal import RecordKind, encode_table

__all__ = ["WriteMixin"]


class WriteMixin:
    """add / upsert / delete / flush of the writable table (mixed into ``Table``)."""

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyError(f"table {self.name!r} is read-only ({self._read_only_reason}); "
                                "writes go through the writable table of the writer process")
        if self._log_failure is not None:
            raise ReadOnlyError(f"table {self.name!r} takes no more writes: {self._log_failure}. Close and "
                                "reopen the database: every acknowledged write is replayed from the log")

    def add(self, data: Any, *, fsync: bool | None = None) -> int:
        """Append rows; refuse keys that already exist. Returns the number of rows added.

        ``data``: a pandas/polars DataFrame, pyarrow Table/RecordBatch/RecordBatchReader,
        list of dicts, dict of columns, or a 2-D NumPy array of vectors (ids assigned).
        Returns once the rows are durable (see ``TableOptions.fsync``).
        """
        return self._write(RecordKind.ADD, data, fsync)

    def upsert(self, data: Any, *, fsync: bool | None = None) -> int:
        """Insert rows, replacing any live row with the same primary key."""
        return self._write(RecordKind.UPSERT, data, fsync)

    def insert(self, data: Any, *, fsync: bool | None = None) -> pa.Array:
        """Like :meth:`add`, but return the primary keys of the new rows (assigned or given)."""
        return self._write(RecordKind.ADD, data, fsync, keys=True)

    def _write(self, kind: RecordKind, data: Any, fsync: bool | None, keys: bool = False) -> Any:
        self._check_writable()
        raw = to_arrow_table(data, self.vector_column)
        self._wait_for_flush_room(raw.nbytes)
        with self._write_lock:
            self._check_open()
            # NaN and infinity are refused in _commit, from the norms it computes anyway.
            table = conform(raw, self._schema, id_column=self.id_column, vector_column=self.vector_column,
                            next_id=self._next_id, require_ids=kind is RecordKind.UPSERT, check_finite=False)
            if table.num_rows == 0:
                return table.column(self.id_column).combine_chunks() if keys else 0
            self._commit(kind, table, fsync)
        return table.column(self.id_column).combine_chunks() if keys else table.num_rows

    def _check_and_stage(self, kind: RecordKind, table: pa.Table) -> StagedRows | None:
        """Refuse repeated or (for add) existing keys and non-finite vectors; stage the rows.

        Runs while the change's WAL record goes to disk and before it is finished, so a
        refusal leaves no record behind.
        """
        if kind is RecordKind.DELETE:
            return None
        key_column = table.column(self.id_column)
        self._refuse_repeated_keys(key_column)
        if kind is RecordKind.ADD:
            existing = self._locate(keys_to_numpy(key_column))
            if existing:
                found = np.concatenate([idx for idx, _, _ in existing])
                sample = keys_to_numpy(key_column)[np.sort(found)[:5]].tolist()
                raise DuplicateKeyError(
                    f"{found.size} id(s) already exist in table {self.name!r}, e.g. {sample}; "
                    "use upsert() to replace rows")
        staged = self._memtable.stage(table)
        refuse_non_finite(staged.vectors, staged.norms, self.vector_column)
        return staged

    def _refuse_repeated_keys(self, keys: pa.ChunkedArray) -> None:
        if pc.count_distinct(keys).as_py() == len(keys):
            return
        counts = pc.value_counts(keys).flatten()
        repeated = pc.filter(counts[0], pc.greater(counts[1], 1)).to_pylist()[:5]
        raise DuplicateKeyError(f"id(s) repeated within the data: {repeated}")

    def delete(self, ids: Any = None, *, where: str | None = None, fsync: bool | None = None) -> int:
        """Delete rows by primary key, or every row matching the SQL predicate ``where``.

        Returns the number of rows deleted (ids that do not exist are ignored).
        """
        self._check_writable()
        if (ids is None) == (where is None):
            raise InvalidArgumentError("delete() takes ids or where=, exactly one of them")
        with self._write_lock:
            self._check_open()
            if ids is not None:
                keys = pc.unique(self._keys_array(ids))
                located = self._locate(keys_to_numpy(keys))
                keys = keys.take(pa.array(np.sort(np.concatenate([i for i, _, _ in located])))) \
                    if located else keys.slice(0, 0)
            else:
                keys = self._keys_where(where)
            if len(keys) == 0:
                return 0
            self._commit(RecordKind.DELETE, pa.table({self.id_column: keys}), fsync)
            return len(keys)

    def _keys_where(self, where: str) -> pa.Array:
        keys = []
        for part in self._snapshot_parts():
            allowed = allowed_rows(part, where, self.vector_column)
            mask = np.ones(part.table.num_rows, bool) if allowed is None else allowed
            if mask.any():
                keys.append(part.table.column(self.id_column).filter(pa.array(mask)))
        id_type = self._schema.field(self.id_column).type
        return pa.chunked_array(keys, id_type).combine_chunks() if keys else pa.array([], id_type)

    def _commit(self, kind: RecordKind, table: pa.Table, fsync: bool | None) -> None:
        """Log then apply one conformed change (caller holds the write lock).

        The WAL record's payload is written first; the change is checked and staged while
        the disk takes it; only then is the record's header written, which makes it a
        record. A refused change abandons it: the log is cut back, nothing changes.
        """
        if self._sealed_job is not None and self._sealed_job.error is not None:
            self._finish_sealed_locked()  # the background flush failed: retry it before logging more
        if (kind is not RecordKind.DELETE and len(self._memtable)
                and self._memtable.nbytes + table.nbytes > self._options.memtable_bytes):
            # Flush first rather than overfill: the memtable's buffers are sized for
            # ``memtable_bytes`` and growing them would copy every row held so far.
            self._flush_full_memtable()
        seq = self._seq + 1
        payload = encode_table(table)
        durable = self._wal.fsync if fsync is None else fsync
        # While a durable commit writes and syncs, a background segment or index write-back
        # holds back its next chunk (fileio.log_commit_in_progress).
        with log_commit_in_progress() if durable else contextlib.nullcontext():
            try:
                record = self._wal.begin(seq, kind, payload)  # the disk starts on the payload ...
            except OSError as exc:  # nothing was logged: the log is cut back to where it was
                raise storage_error(exc, f"writing to the write-ahead log of table {self.name!r}",
                                    self._wal.path) from None
            try:
                staged = self._check_and_stage(kind, table)  # ... while the change is checked and staged
            except BaseException:
                record.abandon()
                raise
            try:
                record.finish()
            except OSError as exc:
                raise storage_error(exc, f"writing to the write-ahead log of table {self.name!r}",
                                    self._wal.path) from None
            if durable:
                try:
                    self._wal.sync_data()
                except OSError as exc:
                    # The record may or may not be on disk, and the kernel may have dropped the
                    # pages it failed to write: writing on would build on a log of unknown state.
                    self._log_failure = f"syncing its write-ahead log failed ({exc})"
                    raise storage_error(exc, f"syncing the write-ahead log of table {self.name!r}",
                                        self._wal.path) from None
        self._seq = seq
        self._apply(kind, table, staged)
        if self._memtable.nbytes >= self._options.memtable_bytes:
            self._flush_full_memtable()

    def _apply(self, kind: RecordKind, table: pa.Table, staged: StagedRows | None = None) -> None:
        """Apply a logged change to memory (also used by WAL replay).

        ``staged``: the rows already copied in by ``Memtable.stage``. Holds the state
        lock throughout, so a reader sees an upsert's old rows or its new rows, never neither.
        """
        keys = table.column(self.id_column)
        with self._lock:
            if kind in (RecordKind.UPSERT, RecordKind.DELETE):
                self._delete_keys(keys_to_numpy(keys))
            if kind in (RecordKind.ADD, RecordKind.UPSERT):
                if staged is None:
                    self._memtable.append(table)
                else:
                    self._memtable.commit(staged)
        if kind is not RecordKind.DELETE and pa.types.is_integer(keys.type) and len(keys):
            self._next_id = max(self._next_id, int(pc.max(keys).as_py()) + 1)

    def _delete_keys(self, keys: np.ndarray) -> None:
        """Mark the live rows of ``keys`` deleted (caller holds the state lock)."""
        for _, where, positions in self._locate(keys):
            if isinstance(where, Memtable):
                where.delete_rows(positions)
            else:
                live = self._live[where.file]
                live = np.ones(where.entry.rows, bool) if live is None else live.copy()
                live[positions] = False
                self._live[where.file] = live
                self._dirty.add(where.file)
