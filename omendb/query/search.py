"""kNN over a snapshot: per-part filter + exact search, then one top-k merge.

A *part* is anything with aligned rows of vectors and Arrow columns: a memory-mapped
segment or the memtable. The caller (the table) builds the parts from a consistent
snapshot; this module never touches files or locks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..index.flat import exact_search
from ..index.hnsw import HnswIndex
from .filters import MaskCache, filter_mask

__all__ = ["SearchPart", "knn", "allowed_rows"]

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


_MASKS = MaskCache()

#: With at most this many allowed rows, the exact scan over them beats a filtered graph walk.
EXACT_MAX_ALLOWED = 4_096
#: ... and likewise below this fraction of the segment's rows.
EXACT_MAX_FRACTION = 0.03


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
    dist, pos = part.index.search(queries, k, ef, allowed)
    want = min(k, n_allowed)
    short = np.flatnonzero((pos[:, :want] < 0).any(axis=1))
    if short.size:
        exact_dist, exact_pos = exact_search(part.vectors, part.norms, queries[short], k, metric, allowed)
        dist[short], pos[short] = np.inf, -1
        dist[short, :exact_pos.shape[1]], pos[short, :exact_pos.shape[1]] = exact_dist, exact_pos
    return dist, pos


def knn(parts: list[SearchPart], queries: np.ndarray, k: int, metric: str, *,
        where: str | None, columns: list[str], vector_column: str, batch: bool,
        empty_schema: pa.Schema, exact: bool = False, ef: int | None = None) -> pa.Table:
    """Exact top-``k`` of every query over all parts, as an Arrow table.

    Columns: ``_query`` (only when ``batch``), the requested ``columns``, ``_distance``;
    rows grouped by query and sorted by distance within each query.
    """
    n_queries = queries.shape[0]
    dists, part_ids, positions = [], [], []
    for part_id, part in enumerate(parts):
        allowed = allowed_rows(part, where, vector_column)  # also checks `where` on empty parts
        if part.vectors.shape[0] == 0:
            continue
        dist, pos = search_part(part, queries, k, metric, allowed, exact=exact, ef=ef)
        dists.append(dist)
        positions.append(pos)
        part_ids.append(np.full(pos.shape, part_id, dtype=np.int32))
    if not dists:
        return _assemble([], np.zeros(0, np.int32), np.zeros(0, np.float32), columns, batch, empty_schema)
    dist = np.concatenate(dists, axis=1)
    pos = np.concatenate(positions, axis=1)
    pid = np.concatenate(part_ids, axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(dist, order, axis=1)
    pos = np.take_along_axis(pos, order, axis=1)
    pid = np.take_along_axis(pid, order, axis=1)
    query_ids = np.broadcast_to(np.arange(n_queries, dtype=np.int32)[:, None], dist.shape).reshape(-1)
    found = np.isfinite(dist.reshape(-1))  # graph walks may leave empty slots
    flat_pid, flat_pos = pid.reshape(-1)[found], pos.reshape(-1)[found]
    query_ids, flat_dist = query_ids[found], dist.reshape(-1)[found]
    pieces = []
    for part_id in np.unique(flat_pid):
        picked = np.flatnonzero(flat_pid == part_id)
        taken = parts[part_id].table.select(columns).take(pa.array(flat_pos[picked]))
        pieces.append((picked, taken))
    return _assemble(pieces, query_ids, flat_dist, columns, batch, empty_schema)


def _assemble(pieces: list[tuple[np.ndarray, pa.Table]], query_ids: np.ndarray, dist: np.ndarray,
              columns: list[str], batch: bool, empty_schema: pa.Schema) -> pa.Table:
    schema = pa.schema([empty_schema.field(c) for c in columns])
    if pieces:
        tables = [t.cast(schema) for _, t in pieces]
        combined = pa.concat_tables(tables)
        where_from = np.concatenate([picked for picked, _ in pieces])
        inverse = np.empty_like(where_from)
        inverse[where_from] = np.arange(where_from.size)
        rows = combined.take(pa.array(inverse))
    else:
        rows = schema.empty_table()
    rows = rows.append_column(pa.field(DISTANCE, pa.float32()), pa.array(dist.astype(np.float32)))
    if batch:
        rows = rows.add_column(0, pa.field(QUERY, pa.int32()), pa.array(query_ids.astype(np.int32)))
    return rows
