"""A frozen view of a table's live rows, numbered 0..N-1, that kNN results can point into.

SQL glue registers :meth:`Snapshot.to_arrow` as a DuckDB view and answers kNN calls
from the same snapshot, so the row numbers a search returns (``_omen_row``) always
match the rows the view holds, whatever writes happen meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .search import SearchPart, knn_hits

__all__ = ["Snapshot", "ROW_NUMBER"]

#: Column numbering the live rows of a snapshot.
ROW_NUMBER = "_omen_row"


@dataclass
class Snapshot:
    """Search parts of one table state plus what a search needs to know of the table."""

    name: str
    parts: list[SearchPart]
    schema: pa.Schema
    metric: str
    vector_column: str
    ef_search: int
    _bases: list[np.ndarray | None] = field(default_factory=list, repr=False)
    _offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def __post_init__(self) -> None:
        counts = []
        for part in self.parts:
            if part.live is None:
                self._bases.append(None)
                counts.append(part.vectors.shape[0])
            else:  # the row number of live row i of the part is offset + rank among live rows
                self._bases.append(np.cumsum(part.live, dtype=np.int64) - 1)
                counts.append(int(np.count_nonzero(part.live)))
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    @property
    def dim(self) -> int:
        return self.schema.field(self.vector_column).type.list_size

    @property
    def rows(self) -> int:
        return int(self._offsets[-1])

    def to_arrow(self, *, row_numbers: bool = False) -> pa.Table:
        """Every live row; with ``row_numbers`` an extra ``_omen_row`` column (0..N-1)."""
        pieces = []
        for part in self.parts:
            table = pa.Table.from_arrays(part.table.select(self.schema.names).columns, schema=self.schema)
            pieces.append(table if part.live is None else table.filter(pa.array(part.live)))
        rows = pa.concat_tables(pieces) if pieces else pa.Table.from_batches([], schema=self.schema)
        if row_numbers:
            rows = rows.append_column(ROW_NUMBER, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        return rows

    def knn_rows(self, queries: np.ndarray, k: int, *, where: str | None, ef: int | None,
                 exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """kNN as ``(query_ids, row_numbers, distances)``, grouped by query, nearest first."""
        ef = self.ef_search if ef is None else ef
        hits = knn_hits(self.parts, queries, k, self.metric, where=where, vector_column=self.vector_column,
                        exact=exact, ef=max(ef, k))
        rows = np.empty(hits.positions.size, dtype=np.int64)
        for part_id in np.unique(hits.part_ids):
            picked = np.flatnonzero(hits.part_ids == part_id)
            base = self._bases[part_id]
            local = hits.positions[picked] if base is None else base[hits.positions[picked]]
            rows[picked] = self._offsets[part_id] + local
        return hits.query_ids, rows, hits.distances
