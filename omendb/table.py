"""A table: durable writes through the WAL, a memtable, immutable segments, kNN search.

Write path: validate -> WAL record (fsynced) -> apply to the memtable (and deletion
masks) -> when the memtable is large, flush it to a segment and publish a manifest.
Read path: take a snapshot (segments + masks + memtable view) under a short lock,
then search it without holding any lock.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .convert import conform, to_arrow_table
from .builder import IndexBuilder
from .errors import (ClosedError, CorruptFileError, DimensionError, DuplicateKeyError,
                     InvalidVectorError, SchemaError)
from .index.flat import METRICS
from .index.hnsw import BuildCancelled, HnswConfig, HnswIndex, build_hnsw
from .keys import keys_to_numpy
from .locking import WriterLock
from .memtable import Memtable
from .query.search import SearchPart, allowed_rows, knn
from .segments import NORM_COLUMN, SegmentHandle
from .storage.deletions import write_deletions
from .storage.fileio import fsync_dir
from .storage.manifest import Manifest, ManifestStore, SegmentEntry
from .storage.segment import write_segment
from .storage.wal import RecordKind, WalWriter, encode_table, read_wal

__all__ = ["Table", "TableOptions", "new_table_manifest"]

MANIFESTS, SEGMENTS, WAL = "manifests", "segments", "wal"


@dataclass(frozen=True)
class TableOptions:
    """Per-database write options.

    Attributes:
        fsync: fsync every write's WAL record before returning (default). With
            ``False`` a write survives a crash of the process but not of the machine
            until the next ``flush()``/``close()``; use it for bulk loads.
        memtable_bytes: flush the memtable to a segment once it holds this many bytes.
        build_indexes: build HNSW indexes of large segments in the background.
    """

    fsync: bool = True
    memtable_bytes: int = 64 << 20
    build_indexes: bool = True


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


class Table:
    """One table of a database. Obtain it from ``Database.create_table``/``open_table``."""

    def __init__(self, name: str, directory: Path, options: TableOptions, builder: IndexBuilder) -> None:
        self.name = name
        self._dir = Path(directory)
        self._options = options
        self._builder = builder
        self._index_cond = threading.Condition()
        self._index_errors: dict[str, BaseException] = {}
        self._bad_indexes: set[str] = set()
        self._store = ManifestStore(self._dir / MANIFESTS)
        self._writer_lock = WriterLock(self._dir / "LOCK", name)
        self._write_lock = threading.RLock()
        self._lock = threading.Lock()
        self._closed = False
        self._closing = False
        try:
            self._open()
        except BaseException:
            self._writer_lock.release()
            raise

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        manifest = self._store.latest()
        if manifest is None:
            raise SchemaError(f"{self._dir}: table {self.name!r} has no manifest")
        info = manifest.table
        self._manifest = manifest
        self._schema = schema_from_text(info["schema"])
        self.id_column: str = info["id_column"]
        self.vector_column: str = info["vector_column"]
        self._metric: str = info["metric"]
        self._dim: int = int(info["dim"])
        self._index_config = HnswConfig(**info.get("index", {}))
        self._segments = [self._handle(e) for e in manifest.segments]
        self._live = {h.file: h.initial_live_mask() for h in self._segments}
        self._dirty: set[str] = set()
        self._next_id = manifest.next_id
        self._seq = manifest.wal_seq
        self._memtable = Memtable(self._schema, self.id_column, self.vector_column,
                                      self._options.memtable_bytes)
        (self._dir / WAL).mkdir(exist_ok=True)
        wal_files = sorted((self._dir / WAL).glob("*.wal"))
        for path in wal_files:
            for record in read_wal(path):
                if record.seq <= manifest.wal_seq:
                    continue
                self._apply(record.kind, record.payload)
                self._seq = record.seq
        self._remove_orphans()
        if wal_files and self._seq > manifest.wal_seq:
            self._wal = WalWriter(wal_files[-1], fsync=self._options.fsync)
            if self._memtable.nbytes >= self._options.memtable_bytes:
                self._flush_locked("flush")
        else:
            self._start_new_wal(remove=wal_files)
        self._schedule_index_builds()

    def _handle(self, entry: SegmentEntry, verified: bool = False) -> SegmentHandle:
        return SegmentHandle(self._dir / SEGMENTS, entry, vector_column=self.vector_column,
                             id_column=self.id_column, dim=self._dim, metric=self._metric, verified=verified)

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

    # --------------------------------------------------------------- properties
    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema (primary key, vector column, metadata columns)."""
        return self._schema

    @property
    def dim(self) -> int:
        """Number of components of every vector."""
        return self._dim

    @property
    def metric(self) -> str:
        """Distance metric fixed at creation: ``l2`` (squared), ``cosine`` or ``dot``."""
        return self._metric

    @property
    def version(self) -> int:
        """Number of the latest published manifest version."""
        return self._manifest.version

    def __repr__(self) -> str:
        return f"<omendb.Table {self.name!r} dim={self._dim} metric={self._metric} rows={self.count()}>"

    def __len__(self) -> int:
        return self.count()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.name!r} is closed")

    # ------------------------------------------------------------------- writes
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

    def _write(self, kind: RecordKind, data: Any, fsync: bool | None) -> int:
        self._check_open()
        raw = to_arrow_table(data, self.vector_column)
        with self._write_lock:
            self._check_open()
            table = conform(raw, self._schema, id_column=self.id_column, vector_column=self.vector_column,
                            next_id=self._next_id, require_ids=kind is RecordKind.UPSERT)
            if table.num_rows == 0:
                return 0
            keys = table.column(self.id_column)
            self._refuse_repeated_keys(keys)
            if kind is RecordKind.ADD:
                existing = self._locate(keys_to_numpy(keys))
                if existing:
                    found = np.concatenate([idx for idx, _, _ in existing])
                    sample = keys_to_numpy(keys)[np.sort(found)[:5]].tolist()
                    raise DuplicateKeyError(
                        f"{found.size} id(s) already exist in table {self.name!r}, e.g. {sample}; "
                        "use upsert() to replace rows")
            self._commit(kind, table, fsync)
        return table.num_rows

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
        self._check_open()
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

    def _keys_array(self, ids: Any) -> pa.Array:
        id_type = self._schema.field(self.id_column).type
        if isinstance(ids, (str, bytes, int, np.integer)):
            ids = [ids]
        try:
            array = pa.array(ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
                             if not isinstance(ids, np.ndarray) else ids)
            if pa.types.is_integer(id_type) and not pa.types.is_integer(array.type) and len(array):
                raise TypeError(array.type)
            return array.cast(id_type) if len(array) else pa.array([], id_type)
        except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"ids must be {id_type} values for table {self.name!r}: {exc}") from None

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
        seq = self._seq + 1
        self._wal.append(seq, kind, encode_table(table), fsync=fsync)
        self._seq = seq
        self._apply(kind, table)
        if self._memtable.nbytes >= self._options.memtable_bytes:
            self._flush_locked("flush")

    def _apply(self, kind: RecordKind, table: pa.Table) -> None:
        """Apply a logged change to memory (also used by WAL replay).

        Holds the state lock throughout, so a reader sees an upsert's old rows or its
        new rows, never neither.
        """
        keys = table.column(self.id_column)
        with self._lock:
            if kind in (RecordKind.UPSERT, RecordKind.DELETE):
                self._delete_keys(keys_to_numpy(keys))
            if kind in (RecordKind.ADD, RecordKind.UPSERT):
                self._memtable.append(table)
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

    def _locate(self, keys: np.ndarray) -> list[tuple[np.ndarray, SegmentHandle | None, np.ndarray]]:
        """Live rows holding ``keys``: (indices into keys, segment or None=memtable, positions)."""
        found = []
        for handle in self._segments:
            idx, pos = handle.keys().lookup(keys)
            live = self._live[handle.file]
            if live is not None and idx.size:
                alive = live[pos]
                idx, pos = idx[alive], pos[alive]
            if idx.size:
                found.append((idx, handle, pos))
        idx, pos = self._memtable.lookup(keys)
        if idx.size:
            found.append((idx, None, pos))
        return found

    # -------------------------------------------------------------------- flush
    def flush(self) -> None:
        """Write the memtable out as a segment and publish a new version now."""
        self._check_open()
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
            name = f"seg-{version:010d}-{os.urandom(4).hex()}.arrow"
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
        if new_handle is not None and not self._closing:
            self._schedule_index_builds()

    # ------------------------------------------------------------------ indexes
    def _needs_index(self, handle: SegmentHandle) -> bool:
        config = self._index_config
        entry = handle.entry
        return (entry.rows >= config.min_rows and handle.file not in self._index_errors
                and (entry.index_file is None or entry.index_params != config.build_params()
                     or handle.file in self._bad_indexes))

    def _schedule_index_builds(self) -> None:
        if not self._options.build_indexes:
            return
        with self._lock:
            todo = [h.file for h in self._segments if self._needs_index(h)]
        for file in todo:
            self._builder.submit(self, file)

    def _build_index(self, segment_file: str) -> None:
        """Builder thread: build one segment's graph, then publish it (never under the write lock)."""
        with self._lock:
            handle = next((h for h in self._segments if h.file == segment_file), None)
            config = self._index_config
        if handle is None or self._closed or self._closing or not self._needs_index(handle):
            return
        index = build_hnsw(handle.vectors, handle.norms, self._metric, config,
                           should_stop=lambda: self._closed or self._closing)
        name = f"{Path(segment_file).stem}.{os.urandom(4).hex()}.hnsw"
        path = self._dir / SEGMENTS / name
        size, crc = index.save(path)
        with self._write_lock:
            current = [e for e in self._manifest.segments if e.file == segment_file]
            if self._closed or not current or config != self._index_config:
                path.unlink(missing_ok=True)  # the segment or the parameters changed meanwhile
                return
            entry = replace(current[0], index_file=name, index_bytes=size, index_crc32=crc,
                            index_params=config.build_params())
            manifest = self._manifest.evolve(
                segments=tuple(entry if e.file == segment_file else e for e in self._manifest.segments),
                created_at=time.time(), change="index")
            self._store.publish(manifest)
            with self._lock:
                handle.adopt_index(entry, index)
                self._bad_indexes.discard(segment_file)
                self._manifest = manifest

    def _index_failed(self, segment_file: str, exc: BaseException) -> None:
        if isinstance(exc, BuildCancelled):
            return
        with self._index_cond:
            self._index_errors[segment_file] = exc
        warnings.warn(f"omendb: building the index of {segment_file} in table {self.name!r} failed: {exc}",
                      RuntimeWarning, stacklevel=1)

    def _index_progress(self) -> None:
        with self._index_cond:
            self._index_cond.notify_all()

    def _segment_index(self, handle: SegmentHandle) -> HnswIndex | None:
        """The graph to search in ``handle``, or None (unindexed, stale or damaged)."""
        if handle.file in self._bad_indexes or handle.entry.index_params != self._index_config.build_params():
            return None
        try:
            return handle.hnsw()
        except CorruptFileError as exc:
            warnings.warn(f"omendb: {exc}; searching that segment exactly and rebuilding its index",
                          RuntimeWarning, stacklevel=3)
            self._bad_indexes.add(handle.file)
            if self._options.build_indexes and not self._closed:
                self._builder.submit(self, handle.file)
            return None

    def create_index(self, m: int = 16, ef_construction: int = 200, *, ef_search: int | None = None,
                     min_rows: int | None = None) -> None:
        """Set the HNSW parameters and (re)build, in the background, every index they change.

        Segments with at least ``min_rows`` rows get an index; smaller ones (and rows
        not yet flushed) are searched exactly. Use :meth:`wait_for_index` to wait.
        See :class:`omendb.HnswConfig` for what each parameter trades.
        """
        self._check_open()
        current = self._index_config
        config = HnswConfig(m=m, ef_construction=ef_construction,
                            ef_search=current.ef_search if ef_search is None else ef_search,
                            min_rows=current.min_rows if min_rows is None else min_rows)
        with self._write_lock:
            self._check_open()
            if config != current:
                info = dict(self._manifest.table, index=config.to_dict())
                manifest = self._manifest.evolve(table=info, created_at=time.time(), change="create_index")
                self._store.publish(manifest)
                with self._lock:
                    self._manifest = manifest
                    self._index_config = config
                    self._index_errors.clear()
        if not self._options.build_indexes:
            for handle in list(self._segments):
                if self._needs_index(handle):
                    self._build_index(handle.file)
        self._schedule_index_builds()

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait until every segment that should have an index has a current one.

        Returns True when done, False on timeout. Raises the builder's error if a
        build failed.
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._index_cond:
            while True:
                if self._index_errors:
                    file, exc = next(iter(self._index_errors.items()))
                    raise RuntimeError(f"building the index of {file} failed: {exc}") from exc
                with self._lock:
                    missing = [h for h in self._segments if self._needs_index(h)]
                if not missing:
                    return True
                if not self._options.build_indexes:
                    return False
                for handle in missing:
                    self._builder.submit(self, handle.file)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._index_cond.wait(0.5 if remaining is None else min(0.5, remaining))

    @property
    def index_config(self) -> HnswConfig:
        """The table's HNSW parameters."""
        return self._index_config

    # -------------------------------------------------------------------- reads
    def _snapshot_parts(self, exact: bool = True) -> list[SearchPart]:
        with self._lock:
            segments = list(self._segments)
            live = dict(self._live)
            mem = self._memtable.view()
        parts = [SearchPart(h.table, h.vectors, h.norms, live[h.file], None if exact else self._segment_index(h),
                            cache_key=str(h.path)) for h in segments]
        parts.append(SearchPart(mem.table, mem.vectors, mem.norms, None if mem.live.all() else mem.live))
        return parts

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self._schema.names)
        if isinstance(columns, str):
            columns = [columns]
        unknown = [c for c in columns if c not in self._schema.names]
        if unknown:
            raise SchemaError(f"unknown column(s) {', '.join(map(repr, unknown))}; "
                              f"table {self.name!r} has {', '.join(self._schema.names)}")
        return list(columns)

    def _queries(self, q: Any) -> tuple[np.ndarray, bool]:
        try:
            if isinstance(q, (pa.Array, pa.ChunkedArray)):
                q = q.to_numpy(zero_copy_only=False)
                if q.dtype == object:
                    q = np.stack(q)
            queries = np.asarray(q, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise InvalidVectorError(f"query must be numeric vectors: {exc}") from None
        batch = queries.ndim == 2
        if queries.ndim not in (1, 2):
            raise InvalidVectorError(f"query must be 1-D (one vector) or 2-D (one per row), got shape {queries.shape}")
        queries = np.ascontiguousarray(queries.reshape(-1, queries.shape[-1]))
        if queries.shape[1] != self._dim:
            raise DimensionError(f"query has {queries.shape[1]} components; table {self.name!r} has dim {self._dim}")
        if not np.isfinite(queries).all():
            raise InvalidVectorError("query contains NaN or infinity")
        return queries, batch

    def search(self, q: Any, k: int = 10, *, where: str | None = None, columns: Sequence[str] | None = None,
               exact: bool = False, ef: int | None = None) -> pa.Table:
        """Nearest neighbours of ``q``.

        Args:
            q: one vector (1-D) -> up to ``k`` rows sorted by ``_distance``; or a 2-D
                array of queries -> up to ``k`` rows per query with a ``_query`` column
                (the query's row number), grouped by query.
            k: neighbours per query.
            where: SQL predicate over metadata columns, applied before ranking: when
                at least ``k`` rows match, ``k`` rows come back.
            columns: columns to return (default: all); ``_distance`` is always added.
            exact: force the exact flat scan, bypassing HNSW indexes.
            ef: HNSW candidate list size for this call (default
                ``index_config.ef_search``); larger is slower and more accurate.

        Returns:
            A ``pyarrow.Table`` (``.to_pandas()`` / ``polars.from_arrow`` to convert).
        """
        self._check_open()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries, batch = self._queries(q)
        names = self._columns(columns)
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1):
            raise ValueError(f"ef must be a positive integer, got {ef!r}")
        ef = self._index_config.ef_search if ef is None else int(ef)
        return knn(self._snapshot_parts(exact), queries, int(k), self._metric, where=where, columns=names,
                   vector_column=self.vector_column, batch=batch, empty_schema=self._schema,
                   exact=exact, ef=max(ef, int(k)))

    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows with the given primary keys, in the order asked; missing ids are skipped."""
        self._check_open()
        names = self._columns(columns)
        keys = keys_to_numpy(self._keys_array(ids))
        with self._lock:
            located = self._locate(keys)
            mem_table = self._memtable.view().table
        pieces, order = [], []
        for idx, handle, positions in located:
            source = mem_table if handle is None else handle.table
            pieces.append(source.select(names).cast(pa.schema([self._schema.field(n) for n in names])
                                                    ).take(pa.array(positions)))
            order.append(idx)
        if not pieces:
            return pa.schema([self._schema.field(n) for n in names]).empty_table()
        rows = pa.concat_tables(pieces)
        return rows.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def count(self) -> int:
        """Number of live rows."""
        self._check_open()
        with self._lock:
            total = self._memtable.live_rows
            for handle in self._segments:
                live = self._live[handle.file]
                total += handle.entry.rows if live is None else int(live.sum())
        return total

    def to_arrow(self) -> pa.Table:
        """Every live row as one Arrow table (segments memory-mapped, zero copy where possible)."""
        self._check_open()
        pieces = []
        for part in self._snapshot_parts():
            table = part.table.select(self._schema.names).cast(self._schema)
            pieces.append(table if part.live is None else table.filter(pa.array(part.live)))
        return pa.concat_tables(pieces)

    def to_pandas(self) -> Any:
        """Every live row as a pandas DataFrame."""
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        """Every live row as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def stats(self) -> dict[str, Any]:
        """Rows, deleted rows, segments, index state, bytes on disk and version."""
        self._check_open()
        with self._lock:
            segments = list(self._segments)
            live = dict(self._live)
            mem_rows = self._memtable.live_rows
        deleted = sum(h.entry.rows - int(live[h.file].sum()) for h in segments if live[h.file] is not None)
        seg_rows = sum(h.entry.rows for h in segments)
        indexed = [h for h in segments if h.entry.index_file and h.file not in self._bad_indexes
                   and h.entry.index_params == self._index_config.build_params()]
        disk = sum(p.stat().st_size for p in self._dir.rglob("*") if p.is_file())
        return {
            "rows": seg_rows - deleted + mem_rows,
            "deleted_rows": deleted,
            "segments": len(segments),
            "segment_rows": seg_rows,
            "indexed_segments": len(indexed),
            "unindexed_segments": len(segments) - len(indexed),
            "indexed_rows": sum(h.entry.rows for h in indexed),
            "unindexed_rows": seg_rows - sum(h.entry.rows for h in indexed) + mem_rows,
            "index": self._index_config.to_dict(),
            "memtable_rows": mem_rows,
            "bytes": disk,
            "version": self.version,
            "dim": self._dim,
            "metric": self._metric,
        }

    # -------------------------------------------------------------------- close
    def close(self) -> None:
        """Flush the memtable and release the table's files and writer lock."""
        if self._closed:
            return
        self._closing = True  # cancels an index build of this table in progress
        with self._write_lock:
            try:
                self._flush_locked("close")
            finally:
                self._closed = True
                self._wal.close()
                self._writer_lock.release()


def new_table_manifest(schema: pa.Schema, *, id_column: str, vector_column: str, metric: str,
                       auto_ids: bool, index: HnswConfig | None = None) -> Manifest:
    """Version 1 of a new, empty table."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    dim = schema.field(vector_column).type.list_size
    info = {"schema": schema_to_text(schema), "id_column": id_column, "vector_column": vector_column,
            "metric": metric, "dim": dim, "auto_ids": auto_ids, "format": "arrow",
            "index": (index or HnswConfig()).to_dict()}
    return Manifest(version=1, table=info, created_at=time.time(), change="create")

