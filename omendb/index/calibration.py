"""Recall calibration: what recall a segment's graph reaches at each ``ef``.

At build time a segment's graph is searched with a ladder of ``ef`` values and each
answer is compared with the exact top-10 of the same segment. Half the sampled
queries are rows of the segment, each left out of its own answer (as easy as a query
from the data's own distribution gets); the other half are midpoints of random pairs
of rows (far from any row: harder than most real queries). On 100K sentence
embeddings their mean stays just below the recall of real queries at every ``ef``
(``benchmarks/``). The curve is stored with the index (in the manifest), so a search
can ask for a recall and get, per segment, the smallest ``ef`` measured to reach it.
"""

from __future__ import annotations

import numpy as np

from .flat import exact_search
from .hnsw import HnswIndex

__all__ = ["EF_LADDER", "calibrate", "ef_for_recall", "CALIBRATION_QUERIES", "RECALL_MARGIN"]

#: The ``ef`` values a calibration measures.
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Sampled queries per calibration (the standard error of a recall@10 near 0.95 is ~0.005).
CALIBRATION_QUERIES = 200
#: Memory the exact answers of a calibration may take at a time (scores and their sort).
CALIBRATION_BYTES = 32 << 20
#: A search aims this much above the recall asked for, for the sampling error.
RECALL_MARGIN = 0.01
_K = 10


def calibrate(index: HnswIndex, vectors: np.ndarray, norms: np.ndarray, metric: str, *,
              queries: int = CALIBRATION_QUERIES, seed: int = 0) -> list[list[float]]:
    """``[[ef, recall@10], ...]`` of ``index`` over its segment's ``vectors``, ascending in ``ef``.

    Stops early once a rung reaches recall 1.0 (higher ``ef`` cannot do better).
    """
    rows = vectors.shape[0]
    if rows <= _K + 1:
        return [[float(EF_LADDER[0]), 1.0]]
    rng = np.random.default_rng(seed)
    half = max(1, min(queries, rows) // 2)
    picked = rng.choice(rows, size=half, replace=False)
    a, b = rng.integers(0, rows, size=(2, half))
    between = vectors[a].astype(np.float32) + vectors[b].astype(np.float32)
    between /= 2  # (for cosine only the direction counts)
    sample = np.ascontiguousarray(np.concatenate([vectors[picked].astype(np.float32), between]))
    left_out = np.concatenate([picked, np.full(half, -1)])
    truth = _exact_top(vectors, norms, sample, _K + 1, metric)
    truth_sets = [_without(t, row) for t, row in zip(truth, left_out)]
    curve: list[list[float]] = []
    for ef in EF_LADDER:
        if ef > max(rows // 4, 64) and curve:  # (a list past a quarter of the rows is a scan)
            break
        _, found = index.search(sample, _K + 1, max(ef, _K + 1), vectors=vectors, norms=norms)
        recall = float(np.mean([np.intersect1d(_without(f, row), t).size / _K
                                for f, t, row in zip(found, truth_sets, left_out)]))
        curve.append([float(ef), round(recall, 4)])
        if recall >= 1.0:
            break
    return curve


def _without(answer: np.ndarray, row: int) -> np.ndarray:
    """The first 10 rows of ``answer`` that are not ``row`` (the query itself; -1: none)."""
    return answer[answer != row][:_K]


def _exact_top(vectors: np.ndarray, norms: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Positions of every query's exact top-``k``, in one pass over the rows: blocks of
    rows whose scores for all the queries (and their sort) stay within CALIBRATION_BYTES."""
    n = queries.shape[0]
    step = max(k, CALIBRATION_BYTES // (12 * n))
    best_dist = np.full((n, 0), np.inf, dtype=np.float32)
    best_pos = np.zeros((n, 0), dtype=np.int64)
    for start in range(0, vectors.shape[0], step):
        dist, pos = exact_search(vectors[start:start + step], norms[start:start + step], queries, k, metric)
        dist = np.concatenate([best_dist, dist], axis=1)
        pos = np.concatenate([best_pos, pos + start], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # (ties: the earlier row, as one scan ranks them)
        best_dist, best_pos = np.take_along_axis(dist, order, axis=1), np.take_along_axis(pos, order, axis=1)
    return best_pos


def ef_for_recall(curve: list[list[float]] | None, recall: float, *, default: int, k: int) -> int:
    """The smallest calibrated ``ef`` reaching ``recall`` (plus :data:`RECALL_MARGIN`), at least ``k``.

    Without a curve (an index from before calibrations) ``default``; when no rung
    reaches the target, the largest one measured.
    """
    if not curve:
        return max(default, k)
    target = min(1.0, recall + RECALL_MARGIN)
    for ef, reached in curve:
        if reached >= target:
            return max(int(ef), k)
    return max(int(curve[-1][0]), k)

