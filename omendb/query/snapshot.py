"""A frozen view of a table's live rows, numbered 0..N-1, that kNN results can point into.

SQL glue registers :meth:`Snapshot.to_arrow` as a DuckDB view and answers kNN calls
from the same snapshot, so the row numbers a search returns (``_omen_row``) always
match the rows the view holds, whatever writes happen meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from ..errors import InvalidArgumentError
from ..index.text import Postings, TextIndexConfig
from .search import SearchPart, knn_hits
from .text import HYBRID_DEPTH, fuse_rrf, query_terms, text_hits, text_parts

__all__ = ["Snapshot", "SnapshotText", "ROW_NUMBER"]

#: Column numbering the live rows of a snapshot.
ROW_NUMBER = "_omen_row"


class _Numbering:
    """Row numbers of the live rows of parts taken in order: live row ``i`` of part ``p``
    is row ``offsets[p] + (rank of i among p's live rows)``."""

    def __init__(self, parts: list[SearchPart]) -> None:
        self.bases: list[np.ndarray | None] = []
        counts = []
        for part in parts:
            if part.live is None:
                self.bases.append(None)
                counts.append(part.vectors.shape[0])
            else:
                self.bases.append(np.cumsum(part.live, dtype=np.int64) - 1)
                counts.append(int(np.count_nonzero(part.live)))
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def rows(self, part_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        rows = np.empty(positions.size, dtype=np.int64)
        for part_id in np.unique(part_ids):
            picked = np.flatnonzero(part_ids == part_id)
            base = self.bases[part_id]
            local = positions[picked] if base is None else base[positions[picked]]
            rows[picked] = self.offsets[part_id] + local
        return rows


class SnapshotText:
    """The text side of a snapshot: its text index config and, made on first use, the
    same rows as parts with postings (``make()``), in the same order (so their row
    numbers are the snapshot's)."""

    def __init__(self, config: TextIndexConfig,
                 make: Callable[[], tuple[list[SearchPart], list[Postings]]]) -> None:
        self.config = config
        self._make = make
        self._made: tuple[list[SearchPart], list[Postings], _Numbering] | None = None
        self._lock = threading.Lock()

    def parts(self) -> tuple[list[SearchPart], list[Postings], _Numbering]:
        with self._lock:
            if self._made is None:
                parts, postings = self._make()
                self._made = parts, postings, _Numbering(parts)
            return self._made


@dataclass
class Snapshot:
    """Search parts of one table state plus what a search needs to know of the table."""

    name: str
    parts: list[SearchPart]
    schema: pa.Schema
    metric: str
    vector_column: str
    ef_search: int
    text: SnapshotText | None = None
    _numbering: _Numbering = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._numbering = _Numbering(self.parts)

    @property
    def dim(self) -> int:
        return self.schema.field(self.vector_column).type.list_size

    @property
    def rows(self) -> int:
        return int(self._numbering.offsets[-1])

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
        return hits.query_ids, self._numbering.rows(hits.part_ids, hits.positions), hits.distances

    def text_rows(self, texts: list[str], k: int, *, where: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text query: ``(row_numbers, scores)``, best BM25 score first (as
        ``Table.search(text=...)`` ranks them)."""
        parts, postings, numbering = self._text_side().parts()
        config = self.text.config
        searched = text_parts(parts, postings, where=where, vector_column=self.vector_column)
        out = []
        for text in texts:
            hits = text_hits(searched, query_terms(text, config), k, k1=config.k1, b=config.b)
            out.append((numbering.rows(hits.part_ids, hits.positions), hits.distances))
        return out

    def hybrid_rows(self, queries: np.ndarray, texts: list[str], k: int, *, where: str | None, ef: int | None,
                    exact: bool, vector_weight: float, text_weight: float
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per (vector, text) pair: ``(row_numbers, relevance, distances, scores)``, most
        relevant first, fused as ``Table.search(q, text=...)`` fuses them (a NaN distance
        or score: that side did not rank the row)."""
        self._text_side()
        depth = max(2 * k, HYBRID_DEPTH)
        query_ids, rows, distances = self.knn_rows(queries, depth, where=where, ef=ef, exact=exact)
        bounds = np.searchsorted(query_ids, np.arange(queries.shape[0] + 1))
        out = []
        for i, (text_rows, scores) in enumerate(self.text_rows(texts, depth, where=where)):
            vector_rows = rows[bounds[i]:bounds[i + 1]]
            fused = fuse_rrf([vector_rows.tolist(), text_rows.tolist()], k, [vector_weight, text_weight])
            distance_of = dict(zip(vector_rows.tolist(), distances[bounds[i]:bounds[i + 1]].tolist()))
            score_of = dict(zip(text_rows.tolist(), scores.tolist()))
            picked = [row for row, _ in fused]
            out.append((np.array(picked, np.int64), np.array([r for _, r in fused], np.float32),
                        np.array([distance_of.get(row, np.nan) for row in picked], np.float32),
                        np.array([score_of.get(row, np.nan) for row in picked], np.float32)))
        return out

    def _text_side(self) -> SnapshotText:
        if self.text is None:
            raise InvalidArgumentError(f"table {self.name!r} has no text index: create one with "
                                       "create_text_index(columns)")
        return self.text
