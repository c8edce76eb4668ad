"""Full-text and hybrid search over a snapshot's parts.

Text ranking is BM25 with corpus statistics over every part (``index/text.py``). A
hybrid search runs the vector search and the text search over one state of the table
(the table layer takes it once) with the same ``where``, and fuses the two rankings, keyed
by primary key, by reciprocal rank fusion: a row's
relevance is ``sum over the rankings it is in of weight / (RRF_K + rank)`` (rank from
1), as LanceDB's ``RRFReranker`` and the original paper (Cormack et al., 2009) define it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import numbers
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError
from ..index.text import MAX_QUERY_CHARS, Postings, TextIndexConfig, TextPart, bm25_top
from .search import DISTANCE, Hits, SearchPart, allowed_rows, hits_table

__all__ = ["query_terms", "check_weights", "text_parts", "text_hits", "text_table", "fuse_rrf", "hybrid_table",
           "SCORE", "RELEVANCE", "RRF_K", "HYBRID_DEPTH"]

SCORE = "_score"
RELEVANCE = "_relevance_score"
#: Reciprocal rank fusion's constant: larger values flatten the difference between ranks.
RRF_K = 60
#: Each side of a hybrid search ranks at least this many rows (or ``2 * k``) before fusing.
HYBRID_DEPTH = 20


def query_terms(text: Any, config: TextIndexConfig) -> list[str]:
    """The terms of a text query (it must be a non-blank string of at most
    :data:`MAX_QUERY_CHARS` characters; it may have no terms, e.g. only stop words)."""
    if not isinstance(text, str):
        raise ArgumentTypeError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidArgumentError("text query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgumentError(f"text query is {len(text):,} characters; at most {MAX_QUERY_CHARS:,} are allowed")
    return config.analyze([text])[0]


def check_weights(vector_weight: Any, text_weight: Any) -> None:
    """Refuse hybrid fusion weights that are not numbers from 0 to 1e6."""
    for name, weight in (("vector_weight", vector_weight), ("text_weight", text_weight)):
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight <= 1e6:
            raise InvalidArgumentError(f"{name} must be a number from 0 to 1e6, got {weight!r}")


def text_parts(parts: list[SearchPart], postings: list[Postings], *, where: str | None,
               vector_column: str) -> list[TextPart]:
    """``parts`` as text searches see them (``postings[i]`` holds ``parts[i]``'s terms),
    with the rows ``where`` allows: made once for any number of queries."""
    return [TextPart(p, part.live, None if where is None else allowed_rows(part, where, vector_column))
            for part, p in zip(parts, postings)]


def text_hits(parts: list[TextPart], terms: list[str], k: int, *, k1: float, b: float) -> Hits:
    """Top-``k`` rows by BM25 score for one query's ``terms`` over all ``parts``;
    ``Hits.distances`` holds the scores, best first."""
    found = bm25_top(parts, terms, k, k1=k1, b=b)
    scores = np.concatenate([s for s, _ in found]) if found else np.zeros(0, np.float32)
    positions = np.concatenate([p for _, p in found]) if found else np.zeros(0, np.int64)
    part_ids = np.concatenate([np.full(p.shape[0], i, np.int32) for i, (_, p) in enumerate(found)]) \
        if found else np.zeros(0, np.int32)
    order = np.lexsort((positions, part_ids, -scores))[:k]  # (ties: the earlier part and row)
    with_hits = np.unique(part_ids[order])
    return Hits(np.zeros(order.shape[0], np.int32), part_ids[order], positions[order], scores[order],
                int(with_hits[0]) if with_hits.shape[0] == 1 else None)


def text_table(parts: list[SearchPart], hits: Hits, columns: list[str], empty_schema: pa.Schema) -> pa.Table:
    """Text search hits as an Arrow table: ``columns``, then ``_score`` (descending)."""
    return hits_table(parts, hits, columns, batch=False, empty_schema=empty_schema, score=SCORE)


def fuse_rrf(rankings: list[list], k: int, weights: list[float]) -> list[tuple[object, float]]:
    """The best ``k`` keys of several rankings (each a list of keys, best first) by
    weighted reciprocal rank fusion: ``(key, relevance)``, most relevant first (ties: the
    key ranked first by the earlier ranking)."""
    relevance: dict[object, float] = {}
    first_seen: dict[object, tuple[int, int]] = {}
    for which, (ranking, weight) in enumerate(zip(rankings, weights)):
        for rank, key in enumerate(ranking, start=1):
            relevance[key] = relevance.get(key, 0.0) + weight / (RRF_K + rank)
            first_seen.setdefault(key, (which, rank))
    best = sorted(relevance, key=lambda key: (-relevance[key], first_seen[key]))[:k]
    return [(key, relevance[key]) for key in best]


def hybrid_table(vector: pa.Table, text: pa.Table, id_column: str, columns: list[str], k: int, *,
                 vector_weight: float = 1.0, text_weight: float = 1.0) -> pa.Table:
    """Fuse a vector search result (with ``_distance``) and a text search result (with
    ``_score``), both holding ``id_column`` and ``columns``: ``columns``,
    ``_relevance_score`` (descending), ``_distance`` and ``_score`` (null where that side
    did not rank the row)."""
    vector_ids, text_ids = vector.column(id_column).to_pylist(), text.column(id_column).to_pylist()
    fused = fuse_rrf([vector_ids, text_ids], k, [vector_weight, text_weight])
    in_vector = {key: i for i, key in enumerate(vector_ids)}
    in_text = {key: i for i, key in enumerate(text_ids)}
    both = pa.concat_tables([vector.select(columns), text.select(columns)])
    picked = [in_vector[key] if key in in_vector else len(vector_ids) + in_text[key] for key, _ in fused]
    rows = both.take(pa.array(picked, pa.int64()))
    distances = vector.column(DISTANCE).to_pylist()
    scores = text.column(SCORE).to_pylist()
    extra = {RELEVANCE: pa.array([r for _, r in fused], pa.float32()),
             DISTANCE: pa.array([distances[in_vector[key]] if key in in_vector else None for key, _ in fused],
                                pa.float32()),
             SCORE: pa.array([scores[in_text[key]] if key in in_text else None for key, _ in fused], pa.float32())}
    for name, values in extra.items():
        rows = rows.append_column(name, values)
    return rows
