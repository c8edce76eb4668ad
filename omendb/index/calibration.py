"""Recall calibration: what recall a segment's graph reaches at each ``ef``.

A graph is measured on rows it does not hold yet. The last rows of a segment (see
:func:`held_out`) go into its graph only after the graph holding the others has been
searched, at each ``ef`` of a ladder, with a sample of them as queries, and each answer
compared with the exact top-10 over the rows the graph holds. Such queries come from the
data's own distribution and, like real queries, are not nodes of the graph. (A row that
is a node is found through its own links, which makes it far easier: on 100K sentence
embeddings rows left out of their own answers read recall 0.99 at ``ef=64`` where the
dataset's real queries reach 0.965; held-out rows read 0.967-0.971. Midpoints of pairs
of rows, used before, read 0.93 there and 0.87 at 1M rows, where mixture queries reach
0.945.) The curve is stored with the index (in the manifest), so a search can ask for a
recall and get, per segment, the smallest ``ef`` measured to reach it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .flat import exact_search
from .hnsw import HnswIndex

__all__ = ["EF_LADDER", "calibrate", "add_calibrated", "held_out", "ef_for_recall", "CALIBRATION_QUERIES",
           "RECALL_MARGIN"]

#: The ``ef`` values a calibration measures.
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Sampled queries per calibration (the standard error of a recall@10 near 0.95 is ~0.005).
CALIBRATION_QUERIES = 300
#: Most rows of a segment held out of its graph until it has been measured.
HOLDOUT_MAX = 8_192
#: Fewest held-out rows worth measuring on (fewer: a grown graph keeps its earlier curve).
MIN_HELD_OUT = 50
#: Memory the exact answers of a calibration may take at a time (scores and their sort).
CALIBRATION_BYTES = 32 << 20
#: A search aims this much above the recall asked for, for the sampling error.
RECALL_MARGIN = 0.015
_K = 10
Curve = list[list[float]]


def held_out(rows: int, queries: int = CALIBRATION_QUERIES) -> int:
    """How many of a segment's last ``rows`` its graph is measured on before it takes them:
    a twentieth, at least ``queries`` and at most :data:`HOLDOUT_MAX`, never over half."""
    return min(HOLDOUT_MAX, max(queries, rows // 20), rows // 2)


def add_calibrated(index: HnswIndex, vectors: np.ndarray, norms: np.ndarray, metric: str,
                   add: Callable[[int, int], None], *, queries: int = CALIBRATION_QUERIES) -> Curve | None:
    """Insert rows ``index.rows`` to the last of ``vectors`` through ``add(start, stop)``,
    measuring the graph on the last :func:`held_out` rows before they go in: its curve.

    None when fewer than :data:`MIN_HELD_OUT` of the rows are new (a graph grown by a few
    rows keeps the curve it had).
    """
    rows, have = vectors.shape[0], index.rows
    cut = max(have, rows - held_out(rows, queries))
    if cut > have:
        add(have, cut)
    curve = calibrate(index, vectors[:cut], norms[:cut], metric, vectors[cut:], queries=queries)
    if rows > cut:
        add(cut, rows)
    return curve


def calibrate(index: HnswIndex, vectors: np.ndarray, norms: np.ndarray, metric: str, candidates: np.ndarray, *,
              queries: int = CALIBRATION_QUERIES, seed: int = 0) -> Curve | None:
    """``[[ef, recall@10], ...]`` of ``index``, which holds ``vectors``, ascending in ``ef``:
    measured with up to ``queries`` rows sampled from ``candidates`` (rows it does not hold).

    None with fewer than :data:`MIN_HELD_OUT` candidates; ``[[10, 1.0]]`` for a graph of at
    most 10 rows. Stops early once a rung reaches recall 1.0 (more ``ef`` cannot do better).
    """
    rows = vectors.shape[0]
    if candidates.shape[0] < MIN_HELD_OUT:
        return None
    if rows <= _K:
        return [[float(EF_LADDER[0]), 1.0]]
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(candidates.shape[0], size=min(queries, candidates.shape[0]), replace=False))
    sample = np.ascontiguousarray(candidates[picked], dtype=np.float32)
    truth = _exact_top(vectors, norms, sample, _K, metric)
    curve: list[list[float]] = []
    for ef in EF_LADDER:
        if ef > max(rows // 4, 64) and curve:  # (a list past a quarter of the rows is a scan)
            break
        _, found = index.search(sample, _K, max(ef, _K), vectors=vectors, norms=norms)
        recall = float(np.mean([np.intersect1d(f[f >= 0], t).size / _K for f, t in zip(found, truth)]))
        curve.append([float(ef), round(recall, 4)])
        if recall >= 1.0:
            break
    return curve


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
