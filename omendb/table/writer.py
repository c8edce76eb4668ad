"""The write side of a table: WAL commit, apply to memory, flush to a segment."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..convert import conform, to_arrow_table
from ..errors import DuplicateKeyError, ReadOnlyError
from ..keys import keys_to_numpy
from ..memtable import Memtable, StagedRows
from ..query.search import allowed_rows
from ..segments import NORM_COLUMN
from ..storage.deletions import write_deletions
from ..storage.fileio import fsync_dir
from ..storage.manifest import SegmentEntry
from ..storage.segment import SUFFIXES, write_segment
from ..storage.wal import RecordKind, WalWriter, encode_table
from .layout import MANIFESTS, SEGMENTS, WAL

__all__ = ["WriteMixin"]


class WriteMixin:
    """add / upsert / delete / flush of the writable table (mixed into ``Table``)."""

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyError(f"table {self.name!r} is read-only ({self._read_only_reason}); "
                                "writes go through the writable table of the writer process")

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
        with self._write_lock:
            self._check_open()
            table = conform(raw, self._schema, id_column=self.id_column, vector_column=self.vector_column,
                            next_id=self._next_id, require_ids=kind is RecordKind.UPSERT)
            if table.num_rows == 0:
                return table.column(self.id_column).combine_chunks() if keys else 0
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
            self._commit(kind, table, fsync)
        return table.column(self.id_column).combine_chunks() if keys else table.num_rows

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
            raise ValueError("delete() takes ids or where=, exactly one of them")
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
        """Log then apply one validated change (caller holds the write lock)."""
        if (kind is not RecordKind.DELETE and len(self._memtable)
                and self._memtable.nbytes + table.nbytes > self._options.memtable_bytes):
            # Flush first rather than overfill: the memtable's buffers are sized for
            # ``memtable_bytes`` and growing them would copy every row held so far.
            self._flush_locked("flush")
        seq = self._seq + 1
        self._wal.write(seq, kind, encode_table(table))
        staged = None
        try:
            if kind is not RecordKind.DELETE:
                # Copy the vectors in while the record goes to disk; they stay invisible
                # until the record is durable and committed below.
                staged = self._memtable.stage(table)
        except Exception:
            staged = None  # _apply stages again once the record is durable, and fails there if it must
        if self._wal.fsync if fsync is None else fsync:
            self._wal.sync_data()
        self._seq = seq
        self._apply(kind, table, staged)
        if self._memtable.nbytes >= self._options.memtable_bytes:
            self._flush_locked("flush")

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
            if where is None:
                self._memtable.delete_rows(positions)
            else:
                live = self._live[where.file]
                live = np.ones(where.entry.rows, bool) if live is None else live.copy()
                live[positions] = False
                self._live[where.file] = live
                self._dirty.add(where.file)

    def flush(self) -> None:
        """Write the memtable out as a segment and publish a new version now."""
        self._check_writable()
        with self._write_lock:
            self._flush_locked("flush")

    def _flush_locked(self, change: str) -> None:
        memtable = self._memtable
        if not (memtable.live_rows or self._dirty or len(memtable)):
            return
        version = self._manifest.version + 1
        seg_dir = self._dir / SEGMENTS
        entries: list[SegmentEntry] = []
        for handle in self._segments:
            entry = handle.entry
            if handle.file in self._dirty:
                live = self._live[handle.file]
                deleted = int(entry.rows - live.sum())
                if deleted == entry.rows:
                    continue  # every row deleted: the segment leaves the table
                del_name = f"{Path(entry.file).stem}.{version:010d}.del"
                write_deletions(seg_dir / del_name, np.flatnonzero(~live))
                entry = replace(entry, deleted=deleted, deletions_file=del_name)
            entries.append(entry)
        new_handle = None
        if memtable.live_rows:
            rows = memtable.live_table()
            rows = rows.append_column(NORM_COLUMN, pa.array(memtable.live_norms()))
            name = f"seg-{version:010d}-{os.urandom(4).hex()}{SUFFIXES[self._format]}"
            info = write_segment(seg_dir, name, rows)
            entry = SegmentEntry(info.file, info.rows, info.bytes, info.crc32)
            entries.append(entry)
            new_handle = self._handle(entry, verified=True)
        manifest = self._manifest.evolve(segments=tuple(entries), wal_seq=self._seq, next_id=self._next_id,
                                         created_at=time.time(), change=change)
        self._store.publish(manifest)
        by_file = {e.file: e for e in entries}
        with self._lock:
            handles = []
            for handle in self._segments:
                if handle.file in by_file:
                    handle.entry = by_file[handle.file]  # same data; new deletion bookkeeping
                    handles.append(handle)
            if new_handle is not None:
                handles.append(new_handle)
                self._live[new_handle.file] = None
            self._segments = handles
            self._live = {h.file: self._live[h.file] for h in handles}
            self._dirty = set()
            self._manifest = manifest
            self._memtable = Memtable(self._schema, self.id_column, self.vector_column,
                                      self._options.memtable_bytes)
        old_wal = self._wal
        old_wal.close()
        self._start_new_wal(remove=[old_wal.path])
        if not self._closing:
            if new_handle is not None:
                self._schedule_index_builds()
            self._schedule_compaction()  # new segment or new deletions: the policy may apply

    def _start_new_wal(self, remove: Iterable[Path] = ()) -> None:
        self._wal = WalWriter(self._dir / WAL / f"{self._seq + 1:020d}.wal", fsync=self._options.fsync)
        for path in remove:
            if path != self._wal.path:
                path.unlink(missing_ok=True)
        fsync_dir(self._dir / WAL)

    def _remove_orphans(self) -> None:
        """Delete files no manifest references: leftovers of an interrupted flush."""
        referenced: set[str] = set()
        for version in self._store.versions():
            for entry in self._store.load(version).segments:
                referenced.update(f for f in (entry.file, entry.deletions_file, entry.index_file) if f)
        seg_dir = self._dir / SEGMENTS
        seg_dir.mkdir(exist_ok=True)
        for name in os.listdir(seg_dir):
            if name not in referenced:
                (seg_dir / name).unlink(missing_ok=True)
        for directory in (self._dir / MANIFESTS, self._dir / WAL):
            for name in os.listdir(directory):
                if name.startswith("."):
                    (directory / name).unlink(missing_ok=True)
