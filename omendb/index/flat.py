"""Exact nearest-neighbour search: one BLAS matrix product, in-place scoring, then top-k.

Distances (smaller is closer):

* ``l2``     — squared Euclidean, ``|x|² - 2 x·q + |q|²``
* ``cosine`` — ``1 - x·q / (|x| |q|)``
* ``dot``    — ``-x·q``

Ranking uses a cheaper monotone score (the constant ``|q|²`` and ``1 -`` terms are
left out) and the true distance is computed only for the ``k`` winners.

``l2`` alone subtracts large terms from each other, so in float32 the expansion can
drown the real distances of vectors far from the origin (a common offset of 3,000 in
16-d data ranks at random). Every ``l2`` search therefore re-ranks exactly: it keeps
every row whose score lies within a proven error bound of the ``k``-th best (on usual
data, a few rows more than ``k``) and computes ``|x - q|²`` for those directly, so
results and ``_distance`` are exact whatever the data's offset.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import numpy as np

from .blas import one_blas_thread

__all__ = ["METRICS", "Metric", "vector_norms", "exact_search", "SCORE_BLOCK_BYTES"]

Metric = Literal["l2", "cosine", "dot"]
METRICS: tuple[str, ...] = ("l2", "cosine", "dot")

#: Upper bound on the score matrix of one block of a batched search.
SCORE_BLOCK_BYTES = 64 << 20
#: Below this fraction of allowed rows, gathering them beats scanning everything.
GATHER_FRACTION = 0.25
#: Scans smaller than this (rows x queries x dim multiply-adds) run BLAS on one thread:
#: threading them costs more than it gains. Larger ones use the library's threads
#: (a 100K x 384 single-query scan is ~1.8x faster on 2 cores); the server pins BLAS to
#: one thread for everything, since its requests already run in parallel.
SINGLE_THREAD_WORK = 1 << 22


def _blas_threads(work: int):
    """One BLAS thread for small scans; the library default for large ones."""
    if work >= SINGLE_THREAD_WORK:
        return contextlib.nullcontext()
    return one_blas_thread()


_TINY = np.float32(1e-30)


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """L2 norm of every row, float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors)).astype(np.float32, copy=False)


def _scores(dots: np.ndarray, norms: np.ndarray, metric: str) -> np.ndarray:
    """Monotone ranking score (smaller is closer), computed in place over ``dots`` (Q, N).

    In-place NumPy: one pass per operation and no temporaries. (numexpr measured
    3-6x slower for these one-operation passes on 2 cores; see benchmarks/README.md.)
    """
    if metric == "dot":
        return np.negative(dots, out=dots)
    if metric == "cosine":
        inv = 1.0 / np.maximum(norms, _TINY)
        np.multiply(dots, inv, out=dots)
        return np.negative(dots, out=dots)
    np.multiply(dots, -2.0, out=dots)
    return np.add(dots, norms * norms, out=dots)


def _distances(score: np.ndarray, qnorm: np.ndarray, metric: str) -> np.ndarray:
    """True distance from the ranking score of the winners (qnorm broadcasts per query)."""
    if metric == "dot":
        return score
    if metric == "cosine":
        return np.clip(1.0 + score / np.maximum(qnorm, _TINY), 0.0, 2.0)
    return np.maximum(score + qnorm * qnorm, 0.0)


def _top_k(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row top ``k`` (ascending) of a 2-D score matrix: (scores, columns)."""
    n = score.shape[1]
    if k < n:
        part = np.argpartition(score, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(score, part, axis=1)
    else:
        part = np.broadcast_to(np.arange(n), score.shape)
        part_scores = score
    order = np.argsort(part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(
    vectors: np.ndarray,
    norms: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of every query over ``vectors``.

    Args:
        vectors: (N, d) float32, C-contiguous (a memory-mapped view is fine).
        norms: (N,) float32 row norms from :func:`vector_norms`.
        queries: (Q, d) float32.
        k: results per query.
        metric: ``"l2"``, ``"cosine"`` or ``"dot"``.
        allowed: optional boolean mask (N,) of rows that may be returned.

    Returns:
        ``(distances, positions)``, both (Q, min(k, candidates)), nearest first;
        positions index ``vectors``. Rows with an infinite distance never appear.
    """
    n_queries = queries.shape[0]
    if allowed is not None:
        candidates = np.flatnonzero(allowed)
        if candidates.size < GATHER_FRACTION * vectors.shape[0]:
            dist, pos = exact_search(vectors[candidates], norms[candidates], queries, k, metric)
            return dist, candidates[pos] if pos.size else pos.astype(np.int64)
        blocked = ~allowed
    else:
        candidates = None
        blocked = None
    n_rows = vectors.shape[0] if candidates is None else candidates.size
    k = min(k, n_rows)
    if k == 0:
        empty = np.zeros((n_queries, 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    qnorm = vector_norms(queries)[:, None]
    block = max(1, SCORE_BLOCK_BYTES // (4 * max(1, vectors.shape[0])))
    out_dist = np.empty((n_queries, k), dtype=np.float32)
    out_pos = np.empty((n_queries, k), dtype=np.int64)
    for start in range(0, n_queries, block):
        stop = min(n_queries, start + block)
        with _blas_threads(vectors.shape[0] * (stop - start) * vectors.shape[1]):
            if stop - start == 1:
                dots = (vectors @ queries[start])[None, :]
            else:
                dots = queries[start:stop] @ vectors.T
        score = _scores(dots, norms, metric)
        if blocked is not None:
            score[:, blocked] = np.inf
        if metric == "l2":  # a few candidates more than k, for the exact re-ranking
            top_score, top_pos = _top_k(score, min(k + RERANK_EXTRA, score.shape[1]))
            top_score, top_pos = _rerank_l2(vectors, norms, queries[start:stop], score, top_score, top_pos, k)
            out_dist[start:stop] = top_score
        else:
            top_score, top_pos = _top_k(score, k)
            out_dist[start:stop] = _distances(top_score, qnorm[start:stop], metric)
        out_pos[start:stop] = top_pos
    return out_dist, out_pos


#: Candidates taken beyond ``k`` for the ``l2`` re-ranking: on usual data the error band
#: ends inside them, so no second pass over the scores is needed.
RERANK_EXTRA = 16
_EPS32 = float(np.finfo(np.float32).eps)


def _rerank_l2(vectors: np.ndarray, norms: np.ndarray, queries: np.ndarray, score: np.ndarray,
               top_score: np.ndarray, top_pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``l2`` top-``k`` from the float32 expansion's ``score`` (Q, N) and its best
    ``top_*`` (Q, k + a few), ascending.

    The expansion's error per row is below ``err = (d + 4) eps (M² + 2 M |q|)``
    (``M``: the largest row norm): the worst case of float32 sums of ``d`` products,
    and of the stored norm squared. A true top-``k`` row scores at most the computed
    ``k``-th score plus ``2 err``, so the rows in that band hold the true top-``k``;
    their distances are computed directly, in float64, and ranked.
    """
    dim = vectors.shape[1]
    finite = norms[np.isfinite(norms)]
    biggest = float(finite.max()) if finite.size else 0.0
    q64 = queries.astype(np.float64)
    qnorm = np.sqrt(np.einsum("ij,ij->i", q64, q64))
    err = (dim + 4) * _EPS32 * (biggest * biggest + 2.0 * biggest * qnorm)
    bound = top_score[:, k - 1].astype(np.float64) + 2.0 * err
    out_dist = np.empty((queries.shape[0], k), dtype=np.float32)
    out_pos = np.empty((queries.shape[0], k), dtype=np.int64)
    # Usually the band ends among the candidates already taken (or they are all the rows).
    inside = (top_score[:, -1] > bound) | (top_score.shape[1] == score.shape[1])
    if inside.all():
        exact = _direct_l2(vectors, top_pos, queries)
        exact[top_score > bound[:, None]] = np.inf  # (past the band: never among the k)
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, axis=1).astype(np.float32), np.take_along_axis(top_pos, order, 1)
    for i in range(queries.shape[0]):  # a wide band (data far from the origin): every row in it
        candidates = np.flatnonzero(score[i] <= bound[i]) if not inside[i] else top_pos[i]
        exact = np.concatenate([_direct_l2(vectors, candidates[None, j:j + 8192], queries[i:i + 1])[0]
                                for j in range(0, candidates.size, 8192)])
        order = np.argsort(exact, kind="stable")[:k]
        out_dist[i], out_pos[i] = exact[order], candidates[order]
    return out_dist, out_pos


def _direct_l2(vectors: np.ndarray, candidates: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``|x - q|²`` in float64 for ``candidates`` (Q, c) of each query (Q, d)."""
    diff = vectors[candidates].astype(np.float64)
    diff -= queries.astype(np.float64)[:, None, :]
    return np.einsum("qcd,qcd->qc", diff, diff)
