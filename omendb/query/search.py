"""kNN over a snapshot: per-part filter + exact search, then one top-k merge.

A *part* is anything with aligned rows of vectors and Arrow columns: a memory-mapped
segment or the memtable. The caller (the table) builds the parts from a consistent
snapshot; this module never touches files or locks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..index.flat import exact_search
from ..index.hnsw import HnswIndex
from .filters import MaskCache, filter_mask

__all__ = ["SearchPart", "Hits", "knn", "knn_hits", "hits_table", "graph_knn", "result_schema", "allowed_rows",
           "search_part", "split_at_graph"]

DISTANCE = "_distance"
QUERY = "_query"


@dataclass(frozen=True)
class SearchPart:
    """Rows of one segment or of the memtable, as a search sees them."""

    table: pa.Table              # the part's columns, row-aligned with ``vectors``
    vectors: np.ndarray          # (N, d) float32
    norms: np.ndarray            # (N,) float32
    live: np.ndarray | None      # (N,) bool, None when no row is deleted
    index: HnswIndex | None = None
    cache_key: str | None = None  # set for immutable parts: their filter masks are cached
    ef: int | None = None         # this part's own candidate list size (from its recall calibration)


_MASKS = MaskCache()

#: With at most this many allowed rows, the exact scan over them beats a filtered graph walk.
EXACT_MAX_ALLOWED = 4_096
#: ... and likewise below this fraction of the segment's rows.
EXACT_MAX_FRACTION = 0.03
#: Largest widening of ``ef`` for a filtered graph walk (see ``search_part``).
FILTERED_EF_MAX_FACTOR = 16


def split_at_graph(part: SearchPart, graph: HnswIndex | None, ef: int) -> list[SearchPart]:
    """``part`` (rows without a graph of their own) as a part searched through ``graph``,
    which covers its first ``graph.rows`` rows, and an exact part over the rest.

    Without a graph, or one over too few rows to pay, ``part`` as it is.
    """
    rows = part.vectors.shape[0]
    covered = 0 if graph is None else graph.rows
    if covered <= EXACT_MAX_ALLOWED or covered > rows:
        return [part]
    live, key = part.live, part.cache_key
    head = SearchPart(part.table.slice(0, covered), part.vectors[:covered], part.norms[:covered],
                      None if live is None else live[:covered], graph, ef=ef,
                      cache_key=None if key is None else f"{key}[:{covered}]")
    if covered == rows:
        return [head]
    return [head, SearchPart(part.table.slice(covered), part.vectors[covered:], part.norms[covered:],
                             None if live is None else live[covered:],
                             cache_key=None if key is None else f"{key}[{covered}:]")]


def allowed_rows(part: SearchPart, where: str | None, vector_column: str) -> np.ndarray | None:
    """Mask of rows a query may return: live and matching ``where`` (None = all)."""
    if where is None:
        return part.live
    mask = _MASKS.get((part.cache_key, where)) if part.cache_key else None
    if mask is None:
        mask = filter_mask(part.table.drop_columns([vector_column]), where)
        if part.cache_key:
            _MASKS.put((part.cache_key, where), mask)
    return mask if part.live is None else mask & part.live


def search_part(part: SearchPart, queries: np.ndarray, k: int, metric: str,
                allowed: np.ndarray | None, *, exact: bool, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one part: its HNSW graph when it has one and it pays, else exact.

    Plan: exact scan when asked, when the part has no graph, or when the allowed rows
    are few (gathering them is cheaper and exact); otherwise a graph walk filtered by
    the allowed-row bitmap. Any query for which the walk found fewer than
    ``min(k, allowed)`` rows is redone exactly, so a search never comes back short.
    """
    rows = part.vectors.shape[0]
    n_allowed = rows if allowed is None else int(np.count_nonzero(allowed))
    if (exact or part.index is None or n_allowed <= EXACT_MAX_ALLOWED
            or n_allowed < EXACT_MAX_FRACTION * rows):
        return exact_search(part.vectors, part.norms, queries, k, metric, allowed)
    if part.ef is not None:
        ef = max(part.ef, k)
    if allowed is not None and n_allowed < rows:
        # A filtered walk reaches only this fraction of the candidates it visits: widen
        # the candidate list accordingly (up to 16x) to keep recall near the unfiltered one.
        ef = int(ef * min(rows / n_allowed, FILTERED_EF_MAX_FACTOR))
    dist, pos = part.index.search(queries, k, ef, allowed, vectors=part.vectors, norms=part.norms)
    want = min(k, n_allowed)
    # A walk fills its answer nearest first, so a short answer has a hole at position want-1.
    if pos.size and pos[:, want - 1].min() < 0:
        short = np.flatnonzero(pos[:, want - 1] < 0)
        exact_dist, exact_pos = exact_search(part.vectors, part.norms, queries[short], k, metric, allowed)
        dist[short], pos[short] = np.inf, -1
        dist[short, :exact_pos.shape[1]], pos[short, :exact_pos.shape[1]] = exact_dist, exact_pos
    return dist, pos


@dataclass(frozen=True)
class Hits:
    """Flat kNN results: for every hit its query, part, row position in the part and distance.

    Grouped by query, nearest first within each query.
    """

    query_ids: np.ndarray   # int32
    part_ids: np.ndarray    # int32
    positions: np.ndarray   # int64
    distances: np.ndarray   # float32
    single_part: int | None  # the only part with hits, when there is one


def knn_hits(parts: list[SearchPart], queries: np.ndarray, k: int, metric: str, *, where: str | None,
             vector_column: str, exact: bool = False, ef: int | None = None) -> Hits:
    """Top-``k`` of every query over all parts (exact or through each part's graph)."""
    found: list[tuple[int, np.ndarray, np.ndarray]] = []
    for part_id, part in enumerate(parts):
        if part.vectors.shape[0] == 0:
            continue
        allowed = allowed_rows(part, where, vector_column)
        dist, pos = search_part(part, queries, k, metric, allowed, exact=exact, ef=ef)
        found.append((part_id, dist, pos))
    if where is not None and not found and parts:
        allowed_rows(parts[-1], where, vector_column)  # no rows: still report a bad predicate
    if not found:
        empty = np.zeros(0, np.int32)
        return Hits(empty, empty, empty.astype(np.int64), empty.astype(np.float32), None)
    if len(found) == 1:  # one part: its answer is already sorted
        part_id, dist, pos = found[0]
        pid = np.full(pos.shape, part_id, dtype=np.int32)
    else:
        dist = np.concatenate([d for _, d, _ in found], axis=1)
        pos = np.concatenate([p for _, _, p in found], axis=1)
        pid = np.concatenate([np.full(p.shape, i, dtype=np.int32) for i, _, p in found], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        dist = np.take_along_axis(dist, order, axis=1)
        pos = np.take_along_axis(pos, order, axis=1)
        pid = np.take_along_axis(pid, order, axis=1)
    query_ids = np.repeat(np.arange(queries.shape[0], dtype=np.int32), dist.shape[1])
    dist, pos, pid = dist.reshape(-1), pos.reshape(-1), pid.reshape(-1)
    if pos.size and pos.min() < 0:  # empty slots: fewer allowed rows than k
        hit = pos >= 0
        dist, pos, pid, query_ids = dist[hit], pos[hit], pid[hit], query_ids[hit]
    return Hits(query_ids, pid, pos, dist.astype(np.float32, copy=False),
                found[0][0] if len(found) == 1 else None)


def knn(parts: list[SearchPart], queries: np.ndarray, k: int, metric: str, *,
        where: str | None, columns: list[str], vector_column: str, batch: bool,
        empty_schema: pa.Schema, exact: bool = False, ef: int | None = None) -> pa.Table:
    """Top-``k`` of every query over all parts, as an Arrow table.

    Columns: ``_query`` (only when ``batch``), the requested ``columns``, ``_distance``;
    rows grouped by query and sorted by distance within each query.
    """
    hits = knn_hits(parts, queries, k, metric, where=where, vector_column=vector_column, exact=exact, ef=ef)
    return hits_table(parts, hits, columns, batch=batch, empty_schema=empty_schema)


def hits_table(parts: list[SearchPart], hits: Hits, columns: list[str], *, batch: bool, empty_schema: pa.Schema,
               score: str = DISTANCE) -> pa.Table:
    """``hits`` as an Arrow table: ``_query`` (only when ``batch``), ``columns``, then each
    hit's distance under the name ``score``."""
    if hits.distances.size == 0:
        arrays = [pa.array([], type=empty_schema.field(c).type) for c in columns]
    elif hits.single_part is not None:
        arrays = [_gather(parts[hits.single_part].table, c, hits.positions) for c in columns]
    else:
        arrays = [_gather_parts(parts, c, hits) for c in columns]
    arrays.append(pa.array(hits.distances, type=_FLOAT32))
    if batch:
        arrays.insert(0, pa.array(hits.query_ids))
    return pa.Table.from_arrays(arrays, schema=result_schema(empty_schema, columns, batch, score))


def graph_knn(part: SearchPart, queries: np.ndarray, k: int, *, ef: int, columns: list[str],
              result_schema: pa.Schema, batch: bool) -> pa.Table | None:
    """Top-``k`` from one segment's graph when it is the whole table, every row live.

    The common case of an unfiltered search, in one pass with no planning or merging:
    what it skips is a sizeable share of a sub-millisecond search. ``result_schema``
    is ``knn``'s output schema for ``columns`` (``_query`` first when ``batch``). Returns
    None when ``k`` exceeds the rows or the walk came back short (the caller then takes
    the general path, which redoes such queries exactly).
    """
    table = part.table
    if k > table.num_rows:
        return None
    dist, pos = part.index.search(queries, k, max(part.ef, k) if part.ef is not None else ef,
                                  vectors=part.vectors, norms=part.norms)
    if (pos[0, k - 1] < 0) if pos.shape[0] == 1 else (pos.size and pos[:, k - 1].min() < 0):
        return None  # (a walk's missing slots come last)
    positions = pos.reshape(-1)
    arrays = [_gather(table, c, positions) for c in columns]
    arrays.append(_as_arrow(dist.reshape(-1), _FLOAT32))
    if batch:
        arrays.insert(0, pa.array(np.repeat(np.arange(queries.shape[0], dtype=np.int32), pos.shape[1])))
    return pa.Table.from_arrays(arrays, schema=result_schema)


def result_schema(empty_schema: pa.Schema, columns: list[str], batch: bool, score: str = DISTANCE) -> pa.Schema:
    """Schema of a search result: ``_query`` (batch only), ``columns``, ``score`` (``_distance``)."""
    fields = [empty_schema.field(c) for c in columns] + [pa.field(score, pa.float32())]
    return pa.schema(([pa.field(QUERY, pa.int32())] if batch else []) + fields)


def _gather(table: pa.Table, name: str, positions: np.ndarray) -> pa.Array:
    """``table[name][positions]``; fixed-width columns without nulls gather straight from the mapped buffer."""
    fixed = _fixed_width_values(table, name)
    if fixed is not None:
        values, arrow_type = fixed
        return _as_arrow(values[positions], arrow_type)
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(positions))
    return column.take(pa.array(positions)).combine_chunks()


_FLOAT32 = pa.float32()


def _as_arrow(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A contiguous NumPy array as an Arrow array of ``arrow_type``, zero-copy.

    ``pa.array`` would infer the type first; skipping that is felt by sub-millisecond searches.
    """
    return pa.Array.from_buffers(arrow_type, values.size, [None, pa.py_buffer(values)])


#: NumPy views of fixed-width columns and their Arrow types, by table identity and
#: column (dropped with the table).
_VALUES: dict[tuple[int, str], tuple[np.ndarray, pa.DataType] | None] = {}


def _fixed_width_values(table: pa.Table, name: str) -> tuple[np.ndarray, pa.DataType] | None:
    """NumPy view of a column that is one chunk of int32/int64/float32/float64 with no nulls, and its type."""
    key = (id(table), name)
    try:
        return _VALUES[key]
    except KeyError:
        pass
    column = table.column(name)
    fixed = None
    if column.num_chunks == 1:
        chunk = column.chunk(0)
        width = _NUMPY_GATHER.get(chunk.type.id)
        if width is not None and chunk.null_count == 0:
            values = np.frombuffer(chunk.buffers()[1], dtype=width, count=chunk.offset + len(chunk))
            fixed = (values[chunk.offset:], chunk.type)
    _VALUES[key] = fixed
    weakref.finalize(table, _VALUES.pop, key, None)
    return fixed


#: Arrow type ids whose values buffer is a plain NumPy array of this dtype.
_NUMPY_GATHER = {pa.int64().id: np.int64, pa.int32().id: np.int32, pa.float32().id: np.float32,
                 pa.float64().id: np.float64}


def _gather_parts(parts: list[SearchPart], column: str, hits: Hits) -> pa.Array:
    """One column of hits spread over several parts, in hit order."""
    pieces, picked_all = [], []
    for part_id in np.unique(hits.part_ids):
        picked = np.flatnonzero(hits.part_ids == part_id)
        pieces.append(_gather(parts[part_id].table, column, hits.positions[picked]))
        picked_all.append(picked)
    where_from = np.concatenate(picked_all)
    inverse = np.empty_like(where_from)
    inverse[where_from] = np.arange(where_from.size)
    return pa.concat_arrays(pieces).take(pa.array(inverse))
