"""The read side of a table: queries over one consistent state, never holding a lock.

The writable table, the read-only tables of reader processes and checkouts of old
versions all read through :class:`TableReader`; only the writer's memtables are ever
non-empty.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import pyarrow as pa

from ..convert import check_valid_arrow
from ..errors import CorruptFileError, DimensionError, InvalidArgumentError, InvalidVectorError, SchemaError
from ..index.calibration import ef_for_recall
from ..index.blas import one_blas_thread
from ..index.configs import MAX_EF
from ..index.hnsw import FRESH_EF_SEARCH, HnswIndex
from ..index.keys import keys_to_numpy
from ..query.search import SearchPart, graph_knn, knn, result_schema, split_at_graph
from ..query.snapshot import Snapshot
from .fresh import needs_own_graph
from .memtable import Memtable, MemtableView
from .segments import SegmentHandle
from .state import TableCore, TableState
from .workers import background_running

__all__ = ["TableReader", "Located", "folder_bytes", "check_k"]

#: Where live rows of some keys are: (indices into the keys, segment or memtable, row positions).
Located = list[tuple[np.ndarray, "SegmentHandle | Memtable", np.ndarray]]


class TableReader:
    """Searches, lookups and scans over a :class:`TableCore`'s current state.

    ``on_bad_index(handle)`` is told of a segment whose index failed verification (the
    writer rebuilds it); the segment is searched exactly meanwhile.
    """

    def __init__(self, core: TableCore, on_bad_index: Callable[[SegmentHandle], None] = lambda handle: None,
                 on_exact_scan: Callable[[SegmentHandle], None] = lambda handle: None) -> None:
        """``on_bad_index(handle)``: its index file failed to load. ``on_exact_scan(handle)``:
        a search scans that segment exactly although it qualifies for a graph (it has none yet)."""
        self._core = core
        self._on_bad_index = on_bad_index
        self._on_exact_scan = on_exact_scan
        self._plans: dict[tuple[Any, bool], tuple[list[str], pa.Schema]] = {}
        self._plans_lock = threading.Lock()

    # ------------------------------------------------------------------ parts
    def segment_index(self, handle: SegmentHandle, state: TableState) -> HnswIndex | None:
        """The graph to search in ``handle``, or None (unindexed, stale or damaged)."""
        core = self._core
        if handle.file in core.bad_indexes or handle.entry.index_params != state.info.index.build_params():
            return None
        try:
            return handle.hnsw()
        except CorruptFileError as exc:
            warnings.warn(f"omendb: {exc}; searching that segment exactly and rebuilding its index",
                          RuntimeWarning, stacklevel=4)
            with core.changing():
                core.bad_indexes.add(handle.file)
            self._on_bad_index(handle)
            return None

    def parts(self, exact: bool = True, *, k: int = 10, recall: float | None = None,
              ef: int | None = None) -> tuple[TableState, list[SearchPart]]:
        """The current state as search parts: its segments, then its non-empty memtables.

        Each indexed segment gets the ``ef`` its calibration says reaches ``recall``
        (default: the index config's), unless ``ef`` is given. Rows with no segment graph
        yet are searched through their fresh graph (``fresh.py``) as far as it reaches, and
        exactly past it.
        """
        state, views = self.capture()
        return state, self._parts_of(state, views, exact, k, recall, ef)

    def capture(self) -> tuple[TableState, list[tuple[Memtable, MemtableView]]]:
        """The current state and a view of each of its memtables, taken in one step.

        An empty memtable adds nothing, unless it is all there is (it gives the schema).
        """
        with self._core.changing() as state:
            views = [(m, m.view()) for m in state.memtables() if len(m)] or (
                [] if state.segments else [(state.memtable, state.memtable.view())])
        return state, views

    def _parts_of(self, state: TableState, views: list[tuple[Memtable, MemtableView]], exact: bool, k: int,
                  recall: float | None, ef: int | None) -> list[SearchPart]:
        parts = []
        for handle in state.segments:
            part = self._segment_part(handle, state, exact, k, recall, ef)
            provisional = handle.provisional  # (rows the segment's own graph does not serve yet)
            if exact or part.index is not None or not needs_own_graph(handle, state):
                parts.append(part)
            elif provisional is None:
                self._on_exact_scan(handle)
                parts.append(part)
            else:
                parts += split_at_graph(part, provisional, _fresh_ef(provisional, state, k, recall, ef))
        for _, v in views:
            part = SearchPart(v.table, v.vectors, v.norms, None if v.live.all() else v.live)
            if exact or v.graph is None or v.vectors.shape[0] < state.info.index.min_rows:
                parts.append(part)
            else:
                parts += split_at_graph(part, v.graph, _fresh_ef(v.graph, state, k, recall, ef))
        return parts

    def _segment_part(self, handle: SegmentHandle, state: TableState, exact: bool, k: int, recall: float | None,
                      ef: int | None) -> SearchPart:
        index = None if exact else self.segment_index(handle, state)
        part_ef = None
        if index is not None and ef is None:
            config = state.info.index
            target = config.recall if recall is None else recall
            if target is not None:
                part_ef = ef_for_recall(handle.entry.index_calibration, target, default=config.ef_search, k=k)
        return SearchPart(handle.table, handle.vectors, handle.norms, state.deletions[handle.file].live, index,
                          cache_key=handle.cache_key, ef=part_ef)

    # ----------------------------------------------------------------- queries
    def queries(self, q: Any, dim: int, name: str) -> tuple[np.ndarray, bool]:
        """``q`` as a C-contiguous (Q, dim) float32 matrix, and whether it was a batch."""
        if type(q) is np.ndarray and q.dtype == np.float32 and q.shape == (dim,) and q.flags.c_contiguous:
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
            raise DimensionError(f"query has no components; table {name!r} has dim {dim}")
        queries = np.ascontiguousarray(queries.reshape(-1, queries.shape[-1]))
        if queries.shape[1] != dim:
            raise DimensionError(f"query has {queries.shape[1]} components; table {name!r} has dim {dim}")
        if not np.isfinite(queries).all():
            raise InvalidVectorError("query contains NaN or infinity")
        return queries, batch

    def search(self, q: Any, k: int, *, where: str | None, columns: Sequence[str] | None, exact: bool,
               ef: int | None, recall: float | None = None,
               captured: tuple[TableState, list[tuple[Memtable, MemtableView]]] | None = None) -> pa.Table:
        """Nearest neighbours (see ``Table.search``); ``captured``: search that state and
        those memtable views (from :meth:`capture`) rather than the current ones."""
        state = self._core.state if captured is None else captured[0]
        info = state.info
        check_k(k)
        queries, batch = self.queries(q, info.dim, self._core.name)
        names, schema = self._result_plan(columns, batch, state)
        if ef is not None and not (type(ef) is int and 1 <= ef <= MAX_EF) and (
                isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or not 1 <= ef <= MAX_EF):
            raise InvalidArgumentError(f"ef must be an integer from 1 to {MAX_EF:,}, got {ef!r}")
        if recall is not None:
            if ef is not None:
                raise InvalidArgumentError("give ef (a candidate list size) or recall (a target), not both")
            if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < recall <= 1.0:
                raise InvalidArgumentError(f"recall must be a number in (0, 1], got {recall!r}")
        asked_ef = None if ef is None else int(ef)
        k = min(int(k), _rows_at_most(state))  # (memory follows k: never past the rows there are)
        ef = max(info.index.ef_search if ef is None else int(ef), k)
        if where is None and not exact and captured is None:
            part = self._whole_table_graph(k, recall, asked_ef)
            if part is not None:
                found = graph_knn(part, queries, k, ef=ef, columns=names, result_schema=schema, batch=batch)
                if found is not None:
                    return found
        state, views = self.capture() if captured is None else captured
        parts = self._parts_of(state, views, exact, k, recall, asked_ef)
        with _scan_threads(queries.shape[0]):
            return knn(parts, queries, k, info.metric, where=where, columns=names,
                       vector_column=info.vector_column, batch=batch, empty_schema=info.schema, exact=exact, ef=ef)

    def _result_plan(self, columns: Sequence[str] | None, batch: bool,
                     state: TableState) -> tuple[list[str], pa.Schema]:
        """(column names, result schema) of a search asking for ``columns`` (checked once per
        distinct ask: the schema never changes)."""
        try:
            key = (columns if columns is None or isinstance(columns, str) else tuple(columns), batch)
            return self._plans[key]
        except (KeyError, TypeError):  # (TypeError: not names at all; columns() deals with it)
            names = self.columns(columns, state)
            plan = names, result_schema(state.info.schema, names, batch)
            with self._plans_lock:
                if len(self._plans) < 256:
                    self._plans[key] = plan
            return plan

    def _whole_table_graph(self, k: int, recall: float | None, ef: int | None) -> SearchPart | None:
        """The table as one part when it is one indexed segment with no deleted and no unflushed rows."""
        with self._core.changing() as state:
            if len(state.segments) != 1 or state.sealed is not None or len(state.memtable):
                return None
        handle = state.segments[0]
        if state.deletions[handle.file].live is not None:
            return None
        part = self._segment_part(handle, state, False, k, recall, ef)
        return None if part.index is None else part

    def columns(self, columns: Sequence[str] | None, state: TableState | None = None) -> list[str]:
        """``columns`` checked against the schema (None: all of them)."""
        schema = (state or self._core.state).info.schema
        if columns is None:
            return list(schema.names)
        asked = columns
        try:
            columns = [columns] if isinstance(columns, str) else list(columns)
        except TypeError:
            columns = [None]
        if not all(isinstance(c, str) for c in columns):
            raise SchemaError(f"columns must be a column name or a list of column names, got {asked!r}")
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise SchemaError(f"unknown column(s) {', '.join(map(repr, unknown))}; "
                              f"table {self._core.name!r} has {', '.join(schema.names)}")
        return list(columns)

    def get(self, ids: Any, columns: Sequence[str] | None) -> pa.Table:
        """Rows with the given primary keys, in the order asked; missing ids are skipped."""
        names = self.columns(columns)
        keys = keys_to_numpy(self.keys_array(ids))
        self.load_key_indexes(self._core.state)
        with self._core.changing() as state:  # (memtable positions must match the views taken)
            located = self.locate(keys, state, state.memtables())
            tables = {id(m): m.view().table for m in state.memtables()}
        schema = state.info.schema
        pieces, order = [], []
        for idx, where, positions in located:
            source = where.table if isinstance(where, SegmentHandle) else tables[id(where)]
            pieces.append(source.select(names).cast(pa.schema([schema.field(n) for n in names]))
                          .take(pa.array(positions)))
            order.append(idx)
        if not pieces:
            return pa.Table.from_batches([], schema=pa.schema([schema.field(n) for n in names]))
        rows = pa.concat_tables(pieces)
        return rows.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def count(self) -> int:
        """Number of live rows."""
        with self._core.changing() as state:
            total = sum(m.live_rows for m in state.memtables())
        for handle in state.segments:
            live = state.deletions[handle.file].live
            total += handle.entry.rows if live is None else int(live.sum())
        return total

    def to_arrow(self) -> pa.Table:
        """Every live row as one Arrow table (segments memory-mapped, zero copy where possible)."""
        state, parts = self.parts()
        schema = state.info.schema
        pieces = []
        for part in parts:
            table = part.table.select(schema.names).cast(schema)
            pieces.append(table if part.live is None else table.filter(pa.array(part.live)))
        return pa.concat_tables(pieces)

    def snapshot_of(self, state: TableState, views: list[tuple[Memtable, MemtableView]]) -> Snapshot:
        """A frozen view of the live rows of ``state`` and ``views`` (from :meth:`capture`)."""
        info = state.info
        return Snapshot(self._core.name, self._parts_of(state, views, False, 10, None, None), info.schema,
                        info.metric, info.vector_column, info.index.ef_search)

    def stats(self) -> dict[str, Any]:
        """Rows, deleted rows, segments, index state, bytes on disk and version."""
        with self._core.changing() as state:
            mem_rows = sum(m.live_rows for m in state.memtables())
        info = state.info
        segments, live = state.segments, {f: d.live for f, d in state.deletions.items()}
        deleted = sum(h.entry.rows - int(live[h.file].sum()) for h in segments if live[h.file] is not None)
        seg_rows = sum(h.entry.rows for h in segments)
        indexed = [h for h in segments if h.entry.index_file and h.file not in self._core.bad_indexes
                   and h.entry.index_params == info.index.build_params()]
        return {
            "rows": seg_rows - deleted + mem_rows,
            "deleted_rows": deleted,
            "segments": len(segments),
            "segment_rows": seg_rows,
            "indexed_segments": len(indexed),
            "unindexed_segments": len(segments) - len(indexed),
            "indexed_rows": sum(h.entry.rows for h in indexed),
            "unindexed_rows": seg_rows - sum(h.entry.rows for h in indexed) + mem_rows,
            "index": info.index.to_dict(),
            "text_index": None if info.text is None else info.text.to_dict(),
            "embedding": info.embedding,
            "text_indexed_segments": 0 if info.text is None else sum(
                h.entry.text_file is not None and h.entry.text_params == info.text.build_params()
                and h.entry.text_file not in self._core.bad_texts for h in segments),
            "memtable_rows": mem_rows,
            "bytes": folder_bytes(self._core.directory),
            "version": state.version,
            "dim": info.dim,
            "metric": info.metric,
            "format": info.format,
        }

    # -------------------------------------------------------------------- keys
    @staticmethod
    def load_key_indexes(state: TableState) -> None:
        """Load every segment's key index now: a first load reads the segment's key column,
        which must not happen under the state lock (searches take it)."""
        for handle in state.segments:
            handle.keys()

    @staticmethod
    def locate(keys: np.ndarray, state: TableState, memtables: list[Memtable]) -> Located:
        """Live rows holding ``keys``: (indices into keys, segment or memtable, positions).

        ``memtables``: the state's memtables, looked up as they are now (the caller holds
        the write lock, or accepts a view that moves on).
        """
        found = []
        for handle in state.segments:
            idx, pos = handle.keys().lookup(keys)
            live = state.deletions[handle.file].live
            if live is not None and idx.size:
                alive = live[pos]
                idx, pos = idx[alive], pos[alive]
            if idx.size:
                found.append((idx, handle, pos))
        for memtable in memtables:
            idx, pos = memtable.lookup(keys)
            if idx.size:
                found.append((idx, memtable, pos))
        return found

    def keys_array(self, ids: Any) -> pa.Array:
        """``ids`` (one key or many) as an Arrow array of the key column's type; keys of
        another kind (``5`` for a string key, ``"5"`` for an integer key) are refused."""
        info = self._core.state.info
        name = self._core.name
        id_type = info.schema.field(info.id_column).type
        if isinstance(ids, (str, bytes, int, np.integer)):
            ids = [ids]
        try:
            if isinstance(ids, pa.ChunkedArray):
                ids = ids.combine_chunks()
            if isinstance(ids, pa.Array):
                check_valid_arrow(pa.table({info.id_column: ids}))
                array = ids
            else:
                array = pa.array(ids if isinstance(ids, np.ndarray) else list(ids))
            if len(array) == 0:
                return pa.array([], id_type)
            numeric = pa.types.is_integer(id_type)
            if numeric != pa.types.is_integer(array.type) or not (numeric or pa.types.is_string(array.type)
                                                                   or pa.types.is_large_string(array.type)):
                raise SchemaError(f"ids must be {id_type} values for table {name!r}, got {array.type}")
            if array.null_count:
                raise SchemaError(f"ids must not be null (table {name!r})")
            return array.cast(id_type)
        except OverflowError:
            raise SchemaError(f"ids must be {id_type} values for table {name!r}: an id is too large "
                              "for 64 bits") from None
        except (TypeError, UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"ids must be {id_type} values for table {name!r}: {exc}") from None

    def state_token(self) -> tuple:
        """Changes whenever the table's visible rows may have changed (cheap to compute)."""
        with self._core.changing() as state:
            return (id(state.manifest), tuple((id(m), len(m), m.live_rows) for m in state.memtables()),
                    tuple(id(d) for d in state.deletions.values()))


def _scan_threads(n_queries: int) -> ContextManager[None]:
    """BLAS on one thread for a single query's exact scans while background work runs.

    A large scan splits over the cores when they are free (~1.8x faster on 2); while a
    build, merge or fresh graph holds a core, a split scan waits for its slower half. In
    a scratch A/B on 2 cores (a 20K indexed table of the dataset, 20K rows/s streamed in
    for 10 s while one thread searched back to back; three alternated pairs, the 10M
    benchmark building at nice 10 meanwhile) split scans gave p99 81 / 53 / 48 ms and max
    166 / 117 / 144 ms, one thread p99 38 / 47 / 33 ms and max 81 / 80 / 60 ms; p50 moved
    either way (14.0 / 1.9 / 1.9 against 2.4 / 6.7 / 2.7 ms).
    """
    return one_blas_thread() if n_queries == 1 and background_running() else contextlib.nullcontext()


def _fresh_ef(graph: HnswIndex, state: TableState, k: int, recall: float | None, ef: int | None) -> int:
    """``ef`` for a fresh graph: at least :data:`FRESH_EF_SEARCH` when the caller names an
    ``ef`` (or the config has no recall target), else what its calibration says reaches the
    recall asked for (or the config's)."""
    config = state.info.index
    target = config.recall if recall is None else recall
    if ef is not None or target is None:
        return max(FRESH_EF_SEARCH, config.ef_search if ef is None else ef, k)
    return ef_for_recall(graph.calibration, target, default=FRESH_EF_SEARCH, k=k)


def check_k(k: Any) -> None:
    """Refuse a ``k`` that is not a positive integer."""
    if not (type(k) is int and k >= 1) and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")


def _rows_at_most(state: TableState) -> int:
    """An upper bound of the live rows (deleted ones counted), at least 1; cheap."""
    return max(1, sum(h.entry.rows for h in state.segments) + sum(len(m) for m in state.memtables()))


def folder_bytes(folder: Path) -> int:
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
                total += folder_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total
