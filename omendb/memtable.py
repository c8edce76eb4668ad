"""The memtable: rows acknowledged since the last flush, searchable at once.

Vectors live in one growing float32 buffer (amortised doubling) so a search sees a
contiguous matrix without concatenating; metadata stays as Arrow batches,
concatenated lazily and cached until the next write. Rows deleted or replaced while
still in the memtable are masked out and dropped when it is flushed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .convert import vectors_view
from .index.flat import vector_norms
from .keys import keys_to_numpy

__all__ = ["Memtable", "MemtableView"]


@dataclass(frozen=True)
class MemtableView:
    """An immutable snapshot of the memtable's first ``rows`` rows."""

    table: pa.Table          # user columns, ``rows`` rows
    vectors: np.ndarray      # (rows, dim) float32
    norms: np.ndarray        # (rows,) float32
    live: np.ndarray         # (rows,) bool


class Memtable:
    """Rows written since the last flush. The owning table serialises writers."""

    def __init__(self, schema: pa.Schema, id_column: str, vector_column: str) -> None:
        self.schema = schema
        self.id_column = id_column
        self.vector_column = vector_column
        self.dim = schema.field(vector_column).type.list_size
        self._batches: list[pa.Table] = []
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._rows = 0
        self._key_rows: dict = {}
        self._table_cache: pa.Table | None = None
        self.nbytes = 0

    def __len__(self) -> int:
        return self._rows

    @property
    def live_rows(self) -> int:
        return len(self._key_rows)

    def append(self, table: pa.Table) -> None:
        """Append conformed rows (keys must not be live here already)."""
        n = table.num_rows
        vectors = vectors_view(table.column(self.vector_column), self.dim)
        need = self._rows + n
        if need > self._vectors.shape[0]:
            capacity = max(need, 2 * self._vectors.shape[0], 1024)
            grown = np.empty((capacity, self.dim), dtype=np.float32)
            grown[: self._rows] = self._vectors[: self._rows]
            norms = np.empty(capacity, dtype=np.float32)
            norms[: self._rows] = self._norms[: self._rows]
            live = np.zeros(capacity, dtype=bool)
            live[: self._rows] = self._live[: self._rows]
            self._vectors, self._norms, self._live = grown, norms, live
        self._vectors[self._rows:need] = vectors
        self._norms[self._rows:need] = vector_norms(vectors)
        live = self._live.copy()  # copy-on-write: open snapshots keep their mask
        live[self._rows:need] = True
        self._live = live
        for offset, key in enumerate(keys_to_numpy(table.column(self.id_column)).tolist()):
            self._key_rows[key] = self._rows + offset
        self._batches.append(table)
        self._rows = need
        self._table_cache = None
        self.nbytes += table.nbytes

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``keys`` that are live here, their memtable rows)."""
        found, rows = [], []
        for i, key in enumerate(keys.tolist()):
            row = self._key_rows.get(key)
            if row is not None:
                found.append(i)
                rows.append(row)
        return np.asarray(found, np.int64), np.asarray(rows, np.int64)

    def delete_rows(self, rows: np.ndarray) -> None:
        """Mark memtable rows dead (copy-on-write)."""
        if len(rows) == 0:
            return
        live = self._live.copy()
        live[rows] = False
        self._live = live
        keys = keys_to_numpy(self.table().column(self.id_column).take(pa.array(rows)))
        for key in keys.tolist():
            self._key_rows.pop(key, None)

    def table(self) -> pa.Table:
        if self._table_cache is None:
            if self._batches:
                self._table_cache = pa.concat_tables(self._batches)
                self._batches = [self._table_cache]
            else:
                self._table_cache = self.schema.empty_table()
        return self._table_cache

    def view(self) -> MemtableView:
        rows = self._rows
        return MemtableView(self.table(), self._vectors[:rows], self._norms[:rows], self._live[:rows])

    def live_table(self) -> pa.Table:
        """Live rows only, in insertion order (what a flush writes)."""
        table = self.table()
        live = self._live[: self._rows]
        return table if live.all() else table.filter(pa.array(live))

    def live_norms(self) -> np.ndarray:
        return self._norms[: self._rows][self._live[: self._rows]]
