"""The read side of a table: a snapshot of segments, masks and memtable, and the queries over it."""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from ..errors import (ClosedError, CorruptFileError, DimensionError, InvalidArgumentError, InvalidVectorError,
                      SchemaError)
from ..index.hnsw import MAX_EF, HnswConfig, HnswIndex
from ..convert import check_valid_arrow
from ..keys import keys_to_numpy
from ..memtable import Memtable
from ..query.search import SearchPart, graph_knn, knn, result_schema
from ..query.snapshot import Snapshot
from ..segments import SegmentHandle
from ..storage.manifest import Manifest, ManifestStore, SegmentEntry
from .layout import MANIFESTS, SEGMENTS, TableOptions, schema_from_text

__all__ = ["TableReader"]


def _retry_on_vanished_files(read: Callable) -> Callable:
    """A reader of the newest version may lose a race with the writer's cleanup(): a
    segment it has not mapped yet is gone. Then it adopts the newest version and
    reads once more (mapped files stay readable after they are removed)."""

    @functools.wraps(read)
    def wrapper(self: "TableReader", *args: Any, **kwargs: Any) -> Any:
        try:
            return read(self, *args, **kwargs)
        except CorruptFileError as exc:
            if not self._follows_latest() or "is missing" not in str(exc):
                raise
            self.refresh()
            return read(self, *args, **kwargs)

    return wrapper


class TableReader:
    """Queries over one table state: the segments of a manifest version plus a memtable.

    The writable :class:`~omendb.Table`, read-only tables of reader processes and
    checked-out old versions all share this code; only the writer's memtable is ever
    non-empty.
    """

    name: str
    _dir: Path
    _options: TableOptions
    _closed: bool
    _read_only: bool

    def _init_reader(self, name: str, directory: Path, options: TableOptions) -> None:
        self.name = name
        self._dir = Path(directory)
        self._options = options
        self._store = ManifestStore(self._dir / MANIFESTS)
        self._lock = threading.Lock()
        self._closed = False
        self._bad_indexes: set[str] = set()
        self._segments: list[SegmentHandle] = []
        self._live: dict[str, np.ndarray | None] = {}
        self._result_plans: dict[tuple[Any, bool], tuple[list[str], pa.Schema]] = {}

    def _load_manifest(self, manifest: Manifest) -> None:
        """Adopt ``manifest`` as the table's state, reusing already mapped segments."""
        info = manifest.table
        self._schema = schema_from_text(info["schema"])
        self._schema_names = frozenset(self._schema.names)
        self.id_column: str = info["id_column"]
        self.vector_column: str = info["vector_column"]
        self._metric: str = info["metric"]
        self._dim: int = int(info["dim"])
        self._format: str = info.get("format", "arrow")
        known = {h.file: h for h in self._segments}
        handles = []
        for entry in manifest.segments:
            handle = known.get(entry.file)
            if handle is None:
                handle = self._handle(entry)
            else:
                handle.entry = entry
            handles.append(handle)
        live = {h.file: h.initial_live_mask() for h in handles}
        with self._lock:
            self._manifest = manifest
            self._index_config = HnswConfig(**info.get("index", {}))
            self._segments = handles
            self._live = live
            if not hasattr(self, "_memtable"):
                self._memtable = Memtable(self._schema, self.id_column, self.vector_column,
                                          self._options.memtable_bytes)
                self._sealed_job: Any = None  # a full memtable being flushed in the background (flushing.py)

    def _handle(self, entry: SegmentEntry, verified: bool = False) -> SegmentHandle:
        return SegmentHandle(self._dir / SEGMENTS, entry, vector_column=self.vector_column,
                             id_column=self.id_column, dim=self._dim, metric=self._metric, verified=verified)

    def _before_read(self) -> None:
        """Hook run before every read: checks the table is open (readers also refresh)."""
        if self._closed:
            raise ClosedError(f"table {self.name!r} is closed")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.name!r} is closed")

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

    @property
    def index_config(self) -> HnswConfig:
        """The table's HNSW parameters."""
        return self._index_config

    @property
    def format(self) -> str:
        """Segment file format fixed at creation: ``"arrow"`` (Arrow IPC) or ``"lance"``."""
        return self._format

    @property
    def read_only(self) -> bool:
        """True for checked-out versions and tables of a database opened ``read_only``."""
        return self._read_only

    # -------------------------------------------------------------------- reads
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
            self._on_bad_index(handle)
            return None

    def _memtables(self) -> list[Memtable]:
        """Unflushed rows: the memtable being flushed (if any), then the current one (state lock held)."""
        sealed = self._sealed_job
        return [self._memtable] if sealed is None else [sealed.memtable, self._memtable]

    def _snapshot_parts(self, exact: bool = True) -> list[SearchPart]:
        with self._lock:
            segments = list(self._segments)
            live = dict(self._live)
            # An empty memtable adds nothing (unless it is all there is: it gives the schema).
            mems = [m.view() for m in self._memtables() if len(m)] or ([] if segments else [self._memtable.view()])
        parts = [SearchPart(h.table, h.vectors, h.norms, live[h.file], None if exact else self._segment_index(h),
                            cache_key=h.cache_key) for h in segments]
        for mem in mems:
            parts.append(SearchPart(mem.table, mem.vectors, mem.norms, None if mem.live.all() else mem.live))
        return parts

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self._schema.names)
        asked = columns
        try:
            columns = [columns] if isinstance(columns, str) else list(columns)
        except TypeError:
            columns = [None]
        if not all(isinstance(c, str) for c in columns):
            raise SchemaError(f"columns must be a column name or a list of column names, got {asked!r}")
        names = self._schema_names
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise SchemaError(f"unknown column(s) {', '.join(map(repr, unknown))}; "
                              f"table {self.name!r} has {', '.join(self._schema.names)}")
        return list(columns)

    def _queries(self, q: Any) -> tuple[np.ndarray, bool]:
        if type(q) is np.ndarray and q.dtype == np.float32 and q.shape == (self._dim,) and q.flags.c_contiguous:
            # one pass: a NaN or infinity makes the sum non-finite (a float64 sum of float32s cannot overflow)
            if not math.isfinite(np.add.reduce(q, dtype=np.float64)) and not np.isfinite(q).all():
                raise InvalidVectorError("query contains NaN or infinity")
            return q.reshape(1, -1), False
        try:
            if isinstance(q, (pa.Array, pa.ChunkedArray)):
                q = q.to_numpy(zero_copy_only=False)
                if q.dtype == object:
                    q = np.stack(q)
            given = np.asarray(q)
            if given.dtype.kind not in "biuf":  # complex (its imaginary part), strings, objects
                raise InvalidVectorError(f"query must be numeric vectors of real numbers, got {given.dtype} values")
            queries = given.astype(np.float32, copy=False)
        except (ValueError, TypeError) as exc:
            raise InvalidVectorError(f"query must be numeric vectors: {exc}") from None
        batch = queries.ndim == 2
        if queries.ndim not in (1, 2):
            raise InvalidVectorError(f"query must be 1-D (one vector) or 2-D (one per row), got shape {queries.shape}")
        if queries.shape[-1] == 0:
            raise DimensionError(f"query has no components; table {self.name!r} has dim {self._dim}")
        queries = np.ascontiguousarray(queries.reshape(-1, queries.shape[-1]))
        if queries.shape[1] != self._dim:
            raise DimensionError(f"query has {queries.shape[1]} components; table {self.name!r} has dim {self._dim}")
        if not np.isfinite(queries).all():
            raise InvalidVectorError("query contains NaN or infinity")
        return queries, batch

    @_retry_on_vanished_files
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
        self._before_read()
        if not (type(k) is int and k >= 1) and (isinstance(k, bool) or not isinstance(k, (int, np.integer))
                                                or k < 1):
            raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")
        queries, batch = self._queries(q)
        names, schema = self._result_plan(columns, batch)
        if ef is not None and not (type(ef) is int and 1 <= ef <= MAX_EF) and (
                isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or not 1 <= ef <= MAX_EF):
            raise InvalidArgumentError(f"ef must be an integer from 1 to {MAX_EF:,}, got {ef!r}")
        k = min(int(k), self._rows_at_most())  # (memory follows k: never past the rows there are)
        ef = max(self._index_config.ef_search if ef is None else int(ef), k)
        if where is None and not exact:
            graph = self._whole_table_graph()
            if graph is not None:
                found = graph_knn(graph[0], graph[1], queries, int(k), ef=ef, columns=names, result_schema=schema,
                                  batch=batch)
                if found is not None:
                    return found
        return knn(self._snapshot_parts(exact), queries, int(k), self._metric, where=where, columns=names,
                   vector_column=self.vector_column, batch=batch, empty_schema=self._schema,
                   exact=exact, ef=ef)

    def _rows_at_most(self) -> int:
        """An upper bound of the live rows (deleted ones counted), at least 1; cheap."""
        with self._lock:
            rows = sum(h.entry.rows for h in self._segments) + sum(len(m) for m in self._memtables())
        return max(1, rows)

    def _result_plan(self, columns: Sequence[str] | None, batch: bool) -> tuple[list[str], pa.Schema]:
        """(column names, result schema) of a search asking for ``columns`` (checked once per
        distinct ask: the schema never changes)."""
        try:
            key = (columns if columns is None or isinstance(columns, str) else tuple(columns), batch)
            return self._result_plans[key]
        except (KeyError, TypeError):  # (TypeError: not names at all; _columns() deals with it)
            names = self._columns(columns)
            plan = names, result_schema(self._schema, names, batch)
            if len(self._result_plans) < 256:
                self._result_plans[key] = plan
            return plan

    def _whole_table_graph(self) -> tuple[pa.Table, HnswIndex] | None:
        """(rows, graph) when the table is one indexed segment with no deleted and no unflushed rows."""
        with self._lock:
            if len(self._segments) != 1 or len(self._memtable) or self._sealed_job is not None:
                return None
            handle = self._segments[0]
            if self._live[handle.file] is not None:
                return None
        index = self._segment_index(handle)
        return None if index is None else (handle.table, index)

    @_retry_on_vanished_files
    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows with the given primary keys, in the order asked; missing ids are skipped."""
        self._before_read()
        names = self._columns(columns)
        keys = keys_to_numpy(self._keys_array(ids))
        with self._lock:
            located = self._locate(keys)
            mem_tables = {id(m): m.view().table for m in self._memtables()}
        pieces, order = [], []
        for idx, where, positions in located:
            source = where.table if isinstance(where, SegmentHandle) else mem_tables[id(where)]
            pieces.append(source.select(names).cast(pa.schema([self._schema.field(n) for n in names])
                                                    ).take(pa.array(positions)))
            order.append(idx)
        if not pieces:
            return pa.Table.from_batches([], schema=pa.schema([self._schema.field(n) for n in names]))
        rows = pa.concat_tables(pieces)
        return rows.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    @_retry_on_vanished_files
    def count(self) -> int:
        """Number of live rows."""
        self._before_read()
        with self._lock:
            total = sum(m.live_rows for m in self._memtables())
            for handle in self._segments:
                live = self._live[handle.file]
                total += handle.entry.rows if live is None else int(live.sum())
        return total

    @_retry_on_vanished_files
    def to_arrow(self) -> pa.Table:
        """Every live row as one Arrow table (segments memory-mapped, zero copy where possible)."""
        self._before_read()
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
        self._before_read()
        with self._lock:
            segments = list(self._segments)
            live = dict(self._live)
            mem_rows = sum(m.live_rows for m in self._memtables())
        deleted = sum(h.entry.rows - int(live[h.file].sum()) for h in segments if live[h.file] is not None)
        seg_rows = sum(h.entry.rows for h in segments)
        indexed = [h for h in segments if h.entry.index_file and h.file not in self._bad_indexes
                   and h.entry.index_params == self._index_config.build_params()]
        disk = _folder_bytes(self._dir)
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
            "format": self._format,
        }

    def _locate(self, keys: np.ndarray) -> list[tuple[np.ndarray, SegmentHandle | Memtable, np.ndarray]]:
        """Live rows holding ``keys``: (indices into keys, segment or memtable, positions)."""
        found = []
        for handle in self._segments:
            idx, pos = handle.keys().lookup(keys)
            live = self._live[handle.file]
            if live is not None and idx.size:
                alive = live[pos]
                idx, pos = idx[alive], pos[alive]
            if idx.size:
                found.append((idx, handle, pos))
        for memtable in self._memtables():
            idx, pos = memtable.lookup(keys)
            if idx.size:
                found.append((idx, memtable, pos))
        return found

    def _keys_array(self, ids: Any) -> pa.Array:
        """``ids`` (one key or many) as an Arrow array of the key column's type; keys of
        another kind (``5`` for a string key, ``"5"`` for an integer key) are refused."""
        id_type = self._schema.field(self.id_column).type
        if isinstance(ids, (str, bytes, int, np.integer)):
            ids = [ids]
        try:
            if isinstance(ids, pa.ChunkedArray):
                ids = ids.combine_chunks()
            if isinstance(ids, pa.Array):
                check_valid_arrow(pa.table({self.id_column: ids}))
                array = ids
            else:
                array = pa.array(ids if isinstance(ids, np.ndarray) else list(ids))
            if len(array) == 0:
                return pa.array([], id_type)
            numeric = pa.types.is_integer(id_type)
            if numeric != pa.types.is_integer(array.type) or not (numeric or pa.types.is_string(array.type)
                                                                   or pa.types.is_large_string(array.type)):
                raise SchemaError(f"ids must be {id_type} values for table {self.name!r}, got {array.type}")
            if array.null_count:
                raise SchemaError(f"ids must not be null (table {self.name!r})")
            return array.cast(id_type)
        except OverflowError:
            raise SchemaError(f"ids must be {id_type} values for table {self.name!r}: an id is too large "
                              "for 64 bits") from None
        except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"ids must be {id_type} values for table {self.name!r}: {exc}") from None

    @_retry_on_vanished_files
    def snapshot(self) -> Snapshot:
        """A frozen view of the live rows now (unflushed rows included), for SQL glue."""
        self._before_read()
        return Snapshot(self.name, self._snapshot_parts(exact=False), self._schema, self._metric,
                        self.vector_column, self._index_config.ef_search)

    def export(self, path: str | os.PathLike, format: str = "parquet", *, overwrite: bool = False) -> Any:
        """Write every live row (one consistent snapshot) to ``path`` as ``"parquet"``,
        ``"lance"`` (a Lance dataset folder, which LanceDB opens) or ``"arrow"`` (IPC file).
        Returns what was written (path, format, rows, bytes)."""
        from ..export import export_table

        return export_table(self, path, format, overwrite=overwrite)

    def _state_token(self) -> tuple:
        """Changes whenever the table's visible rows may have changed (cheap to compute)."""
        self._before_read()
        with self._lock:
            return (id(self._manifest), tuple((id(m), len(m), m.live_rows) for m in self._memtables()),
                    tuple(id(m) for m in self._live.values()))

    def _follows_latest(self) -> bool:
        """True for tables of a read-only database (not checkouts, not the writer)."""
        return False

    def _on_bad_index(self, handle: SegmentHandle) -> None:
        """A segment's index failed verification (the writer rebuilds it)."""


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``; files removed meanwhile (WAL rotation,
    cleanup, compaction) are skipped rather than failing the caller."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _folder_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total
