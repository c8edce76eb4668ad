"""The memtable: rows acknowledged since the last flush, searchable at once.

Vectors live in one float32 buffer, preallocated for the flush threshold (untouched
pages cost no memory, and a helper thread faults the next few MiB in ahead of the
writer: ``prefault.py``) and grown by doubling only when one write is larger, so a
search sees a contiguous matrix and an append copies each vector once. Metadata stays
as Arrow batches; the vector column of :meth:`Memtable.table` is a zero-copy view of
the buffer. Rows deleted or replaced while still here are masked out and dropped
when the memtable is flushed.

Committed rows never change, so a background thread (``fresh.py``) can grow a graph
over a prefix of them: :attr:`Memtable.graph`, replaced whole by a grown copy. A view
carries the graph of its time, which never covers more rows than the view holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..convert import vectors_view
from ..index.flat import vector_norms
from ..index.hnsw import HnswIndex
from ..index.keys import keys_to_numpy
from ..index.text import Postings, TextIndexConfig, analyze_rows
from .prefault import AheadOfUse

if TYPE_CHECKING:
    from .segments import SegmentHandle

__all__ = ["Memtable", "MemtableView", "StagedRows"]


@dataclass(frozen=True)
class MemtableView:
    """An immutable snapshot of the memtable's first ``rows`` rows."""

    table: pa.Table          # user columns, ``rows`` rows
    vectors: np.ndarray      # (rows, dim) float32
    norms: np.ndarray        # (rows,) float32
    live: np.ndarray         # (rows,) bool
    graph: HnswIndex | None = None  # over the first ``graph.rows`` rows


@dataclass(frozen=True)
class StagedRows:
    """Rows copied into the memtable's buffers by :meth:`Memtable.stage`, not yet visible."""

    start: int
    vectors: np.ndarray      # (rows, dim) float32: the staged slots of the buffer
    norms: np.ndarray        # (rows,) float32
    keys: list               # primary keys as Python values
    metadata: pa.Table       # every column but the vectors
    nbytes: int              # the rows' Arrow size, counted against the flush threshold


class Memtable:
    """Rows written since the last flush. The owning table serialises writers."""

    def __init__(self, schema: pa.Schema, id_column: str, vector_column: str, capacity_bytes: int = 0) -> None:
        self.schema = schema
        self.id_column = id_column
        self.vector_column = vector_column
        self.dim = schema.field(vector_column).type.list_size
        self._vector_index = schema.get_field_index(vector_column)
        self._metadata_schema = schema.remove(self._vector_index)
        capacity = min(max(1024, capacity_bytes // (4 * self.dim)), 1 << 18)
        self._vectors = np.empty((capacity, self.dim), dtype=np.float32)
        self._ahead = AheadOfUse(self._vectors)  # faults pages in before stage() copies into them
        self._norms = np.empty(capacity, dtype=np.float32)
        self._live = np.zeros(capacity, dtype=bool)
        self._batches: list[pa.Table] = []
        self._rows = 0
        self._key_rows: dict = {}
        self._deleted_at: dict[int, int] = {}  # row -> seq of the log record that deleted it
        self._table_cache: pa.Table | None = None
        self._text = _TextCache()
        self.nbytes = 0
        #: A graph over the first ``graph.rows`` committed rows (set by ``fresh.py``).
        self.graph: HnswIndex | None = None
        #: The segment its rows went to at the same positions (set by the flusher), which
        #: graphs grown after the flush serve instead.
        self.segment: SegmentHandle | None = None

    def __len__(self) -> int:
        return self._rows

    @property
    def live_rows(self) -> int:
        return len(self._key_rows)

    def _reserve(self, rows: int) -> None:
        if rows <= self._vectors.shape[0]:
            return
        capacity = max(rows, 2 * self._vectors.shape[0])
        grown = np.empty((capacity, self.dim), dtype=np.float32)
        grown[: self._rows] = self._vectors[: self._rows]
        norms = np.empty(capacity, dtype=np.float32)
        norms[: self._rows] = self._norms[: self._rows]
        live = np.zeros(capacity, dtype=bool)
        live[: self._rows] = self._live[: self._rows]
        self._vectors, self._norms, self._live = grown, norms, live
        self._ahead = AheadOfUse(grown)

    def append(self, table: pa.Table) -> None:
        """Append conformed rows (keys must not be live here already)."""
        self.commit(self.stage(table))

    def stage(self, table: pa.Table) -> StagedRows:
        """Copy ``table``'s vectors and norms into the slots after the last row.

        Nothing is visible until :meth:`commit`; staging may run before the rows are
        durable (the writer overlaps it with the WAL's disk write). Only the latest
        staging may be committed; a staging never committed is overwritten by the next.
        """
        start = self._rows
        need = start + table.num_rows
        self._reserve(need)
        vectors = self._vectors[start:need]
        vectors[:] = vectors_view(table.column(self.vector_column), self.dim)
        self._ahead.used(need * self._vectors.strides[0])
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite input is refused by the caller
            self._norms[start:need] = vector_norms(vectors)
        self._live[start:need] = True  # snapshots only see rows before ``self._rows``
        return StagedRows(start, vectors, self._norms[start:need],
                          keys_to_numpy(table.column(self.id_column)).tolist(),
                          table.remove_column(self._vector_index), table.nbytes)

    def commit(self, staged: StagedRows) -> None:
        """Make staged rows visible (the writer calls it once they are durable)."""
        start = staged.start
        if start != self._rows:
            raise RuntimeError("memtable changed between stage() and commit()")
        self._key_rows.update(zip(staged.keys, range(start, start + len(staged.keys))))
        self._batches.append(staged.metadata)
        self._rows = start + len(staged.keys)
        self._table_cache = None
        self.nbytes += staged.nbytes

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``keys`` that are live here, their memtable rows)."""
        listed = keys.tolist()
        if self._key_rows.keys().isdisjoint(listed):  # the common case of add(): hashed in C, no loop
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        found, rows = [], []
        for i, key in enumerate(listed):
            row = self._key_rows.get(key)
            if row is not None:
                found.append(i)
                rows.append(row)
        return np.asarray(found, np.int64), np.asarray(rows, np.int64)

    def delete_rows(self, rows: np.ndarray, seq: int) -> None:
        """Mark memtable rows dead, deleted by log record ``seq`` (the mask is copy-on-write)."""
        if len(rows) == 0:
            return
        live = self._live.copy()  # copy-on-write: open snapshots keep their mask
        live[rows] = False
        self._live = live
        self._deleted_at.update(dict.fromkeys(np.asarray(rows).tolist(), seq))
        keys = keys_to_numpy(self.table().column(self.id_column).take(pa.array(rows)))
        for key in keys.tolist():
            self._key_rows.pop(key, None)

    def table(self) -> pa.Table:
        """All rows (live and dead) with every column; vectors are a view of the buffer."""
        if self._table_cache is None:
            metadata = (pa.concat_tables(self._batches) if self._batches
                        else pa.Table.from_batches([], schema=self._metadata_schema))  # no pandas import
            self._batches = [metadata] if self._batches else []
            flat = self._vectors[: self._rows].reshape(-1)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
            self._table_cache = metadata.add_column(self._vector_index, self.schema.field(self.vector_column),
                                                    pa.chunked_array([vectors]))
        return self._table_cache

    def live_as_of(self, seq: int) -> np.ndarray:
        """Mask of the rows live once the log's records up to ``seq`` are applied (rows a
        later record deleted count as live: a version at ``seq`` still holds them)."""
        live = self._live[: self._rows].copy()
        later = [row for row, at in self._deleted_at.items() if at > seq and row < self._rows]
        live[later] = True
        return live

    def deletions_after(self, seq: int) -> list[tuple[int, int]]:
        """``(row, seq)`` of the rows deleted by records after ``seq``."""
        return [(row, at) for row, at in self._deleted_at.items() if at > seq]

    def view(self) -> MemtableView:
        graph = self.graph  # (read first: it never covers rows committed after it)
        rows = self._rows
        return MemtableView(self.table(), self._vectors[:rows], self._norms[:rows], self._live[:rows], graph)

    def text_postings(self, config: TextIndexConfig, table: pa.Table) -> list[tuple[int, int, Postings]]:
        """Full-text postings of ``table`` (a view of this memtable's first rows) under
        ``config``, as ``(start, stop, postings)`` over consecutive row ranges. Each row is
        analysed once (a memtable's rows never change) and new rows get postings of their
        own, merged with their neighbours as they grow, so a search after a write gathers
        only what is new (and, now and then, a merge: log-many ranges in all)."""
        return self._text.postings(config, table)

    def adopt_graph(self, graph: HnswIndex) -> None:
        """Search ``graph`` (over the first ``graph.rows`` committed rows) from now on,
        unless the graph already here covers as many."""
        if graph.rows > len(self) or graph.rows < 0:
            raise ValueError(f"a graph over {graph.rows} rows for a memtable of {len(self)}")
        if self.graph is None or graph.rows > self.graph.rows:
            self.graph = graph


class _TextCache:
    """The terms of a memtable's rows, analysed as searches first see them, and postings
    over consecutive ranges of them: a range at most as large as the one before it, so
    there are log-many (two neighbours are merged once the later is at least half the
    earlier)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: dict | None = None  # the build params the terms were analysed under
        self._terms: list[list[str]] = []
        self._ranges: list[tuple[int, int, Postings]] = []

    def postings(self, config: TextIndexConfig, table: pa.Table) -> list[tuple[int, int, Postings]]:
        rows = table.num_rows
        with self._lock:
            if config.build_params() != self._config:
                self._config, self._terms, self._ranges = config.build_params(), [], []
            if len(self._terms) < rows:
                self._terms.extend(analyze_rows(config, table.slice(len(self._terms))))
            covered = self._ranges[-1][1] if self._ranges else 0
            if covered < rows:
                self._ranges.append((covered, rows, Postings.build(self._terms[covered:rows])))
                while len(self._ranges) > 1 and (self._ranges[-1][1] - self._ranges[-1][0]
                                                 >= (self._ranges[-2][1] - self._ranges[-2][0]) // 2):
                    start, stop = self._ranges[-2][0], self._ranges[-1][1]
                    self._ranges[-2:] = [(start, stop, Postings.build(self._terms[start:stop]))]
            ranges, terms = list(self._ranges), self._terms
        # an older view (a search that took its rows before another one took more) ends sooner
        clipped = [r for r in ranges if r[1] <= rows]
        for start, stop, _ in ranges:
            if start < rows < stop:
                clipped.append((start, rows, Postings.build(terms[start:rows])))
        return clipped
