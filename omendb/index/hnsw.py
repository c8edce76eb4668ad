"""HNSW graphs over one segment's vectors, built and searched with faiss.

Each segment gets its own graph; row ``i`` of the segment is id ``i`` in it. The graph
stores 8-bit scalar-quantized codes (``faiss.IndexHNSWSQ``, the default) or float32
vectors (``faiss.IndexHNSWFlat``). Cosine tables index unit-normalised rows with inner
product; ``dot`` uses inner product and ``l2`` squared Euclidean.

A quantized walk ranks by code distances; its best candidates are then re-scored
from the segment's own float32 vectors, which the caller hands in (the index holds no
second copy), so distances are exact either way and computed as the flat scan
computes them. Filtering (deleted rows, ``where``) happens inside the walk with an
``IDSelectorBitmap``, so a filtered search still returns ``k`` rows when ``k`` match
(the caller falls back to the exact scan in the rare case the walk finds fewer).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from ..errors import CorruptFileError, DiskFullError, StorageError, storage_error
from ..storage.fileio import publish_written, verify_file
from .configs import MAX_EF, HnswConfig, HnswFlat, HnswSq

__all__ = ["HnswIndex", "BuildCancelled", "build_hnsw", "extend_hnsw", "build_threads", "load_hnsw", "MAX_EF",
           "HnswConfig", "RERANK_FACTOR", "TRAIN_ROWS", "fresh_hnsw", "FRESH_EF_SEARCH"]

_FAISS_METRIC = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT, "dot": faiss.METRIC_INNER_PRODUCT}

#: A quantized walk hands over this many candidates per wanted row (at most ``ef``) for
#: exact re-scoring.
RERANK_FACTOR = 4
#: Rows a quantizer learns its ranges from (a sample of the segment).
TRAIN_ROWS = 65_536
#: Graphs over fresh rows (see :func:`fresh_hnsw`): links per node and build candidate list.
FRESH_M, FRESH_EF_CONSTRUCTION = 16, 16
#: The least ``ef`` a fresh graph is searched with (its weaker links need a longer list).
FRESH_EF_SEARCH = 128


def _prepare(vectors: np.ndarray, norms: np.ndarray | None, metric: str) -> np.ndarray:
    """Rows as faiss stores them: float32, C-contiguous, unit length for ``cosine``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric != "cosine":
        return vectors
    if norms is None:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    return vectors / np.maximum(norms, np.float32(1e-30))[:, None]


def _negative_inverse_norms(queries: np.ndarray) -> np.float32 | np.ndarray:
    """``-1/|q|`` per query as float32 (a scalar for one query), tiny norms clamped."""
    if queries.shape[0] == 1:
        return np.float32(-1.0 / max(math.sqrt(float(queries[0].dot(queries[0]))), 1e-30))
    norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
    return (-1.0 / np.maximum(norms, 1e-30)).astype(np.float32)[:, None]


class HnswIndex:
    """One segment's graph: search it, save it atomically, load it memory-mapped."""

    def __init__(self, index: faiss.Index, metric: str) -> None:
        self._index = index
        self.metric = metric
        #: True for a graph over codes: its candidates need the segment's vectors to re-score.
        self.quantized = isinstance(index, faiss.IndexHNSWSQ)
        self._params: dict[int, faiss.SearchParametersHNSW] = {}  # unfiltered, per ef: read-only, shareable
        #: ``[[ef, recall@10], ...]`` measured on this graph or its kind (fresh graphs; a
        #: segment's own graph keeps its curve in the manifest instead).
        self.calibration: list[list[float]] | None = None

    @property
    def rows(self) -> int:
        return self._index.ntotal

    def _search_params(self, ef: int, allowed: np.ndarray | None) -> tuple[faiss.SearchParametersHNSW, Any]:
        """Parameters for one call (and the bitmap they point into, kept alive by the caller)."""
        if allowed is None:
            params = self._params.get(ef)
            if params is None:
                params = faiss.SearchParametersHNSW(efSearch=ef)
                if len(self._params) < 64:  # (callers choose ef: keep the cache small)
                    self._params[ef] = params
            return params, None
        bits = np.packbits(allowed, bitorder="little")
        params = faiss.SearchParametersHNSW(efSearch=ef)
        params.sel = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(bits))
        return params, (bits, params.sel)

    def search(self, queries: np.ndarray, k: int, ef: int, allowed: np.ndarray | None = None, *,
               vectors: np.ndarray | None = None, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k``: ``(distances, positions)`` (Q, k) float32 / int64, missing slots inf / -1.

        ``vectors``/``norms``: the segment's rows and norms, which a quantized graph
        needs to re-score its candidates exactly. A query's missing slots (fewer than
        ``k`` rows reachable or allowed) are its last ones.
        """
        if queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        wanted = k
        if self.quantized:
            if vectors is None or norms is None:
                raise ValueError("a quantized graph re-scores from the segment's vectors: pass vectors and norms")
            k = min(max(k, min(ef, RERANK_FACTOR * k)), max(self.rows, k))
        # A candidate list longer than the graph finds nothing more.
        params, _keep_alive = self._search_params(min(max(ef, k), max(self.rows, k)), allowed)
        n = queries.shape[0]
        scores = np.empty((n, k), dtype=np.float32)
        positions = np.empty((n, k), dtype=np.int64)
        # faiss' own ``search`` wrapper re-checks and re-allocates; a sub-millisecond
        # search feels those microseconds, so call the wrapped method directly.
        self._index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(positions),
                             params)
        if self.quantized:
            if n == 1:
                return _rescore_one(vectors, norms, queries[0], positions[0], wanted, self.metric)
            return _rescore(vectors, norms, queries, positions, wanted, self.metric)
        # Cosine: the stored rows are unit length, so an inner-product walk ranks them the
        # same for any positive scaling of the query; dividing the k scores by the query's
        # norm afterwards is cheaper than normalising the query first.
        if n == 1:
            self._finish_one(queries[0], scores[0], positions[0])
        elif self.metric == "cosine":  # 1 - similarity, kept in [0, 2] against rounding
            np.multiply(scores, _negative_inverse_norms(queries), out=scores)
            np.add(scores, np.float32(1.0), out=scores)
            np.maximum(scores, 0.0, out=scores)
            np.minimum(scores, 2.0, out=scores)
        elif self.metric == "dot":
            np.negative(scores, out=scores)
        else:
            np.maximum(scores, 0.0, out=scores)
        if n > 1 and k and positions[:, -1].min() < 0:
            scores[positions < 0] = np.inf
        return scores, positions

    def _finish_one(self, query: np.ndarray, scores: np.ndarray, positions: np.ndarray) -> None:
        """:meth:`search`'s score conversion for one query, in place, in as few NumPy calls as
        possible: after a graph walk each call costs microseconds (cold caches)."""
        if self.metric == "cosine":
            inverse = -1.0 / max(math.sqrt(float(query.dot(query))), 1e-30)
            np.multiply(scores, np.float32(inverse), out=scores)
            np.add(scores, np.float32(1.0), out=scores)
            clamp = (0.0, 2.0)
        elif self.metric == "dot":
            np.negative(scores, out=scores)
            clamp = None
        else:
            clamp = (0.0, None)
        if clamp is not None and len(scores):  # the scores ascend: only the ends can stray
            low, high = clamp
            if scores[0] < low:
                np.maximum(scores, low, out=scores)
            if high is not None and scores[-1] > high:
                np.minimum(scores, high, out=scores)
        if len(positions) and positions[-1] < 0:  # missing slots come last
            scores[positions < 0] = np.inf

    def add(self, vectors: np.ndarray, norms: np.ndarray | None, should_stop: Callable[[], bool] = lambda: False,
            chunk_rows: int = 8_192, threads: Callable[[], int] = lambda: build_threads()) -> None:
        """Insert rows after the ones the graph holds (ids continue from :attr:`rows`).

        Rows go in ``chunk_rows`` at a time, each chunk on ``threads()`` threads, one
        chunk at a time in the process (see :func:`build_threads`). Only for a graph
        built or loaded into memory (:func:`extend_hnsw`), never a memory-mapped one.
        """
        for start in range(0, vectors.shape[0], chunk_rows):
            if should_stop():
                raise BuildCancelled()
            stop = start + chunk_rows
            chunk = _prepare(vectors[start:stop], None if norms is None else norms[start:stop], self.metric)
            with _GRAPH_WORK:
                # OpenMP's thread count is per calling thread: this sets the build's
                # threads and leaves the foreground's searches alone.
                faiss.omp_set_num_threads(threads())
                self._index.add(chunk)

    def grown(self, vectors: np.ndarray, norms: np.ndarray | None) -> "HnswIndex":
        """A copy of this graph with ``vectors`` inserted after its rows, on the calling
        thread alone. This graph is left as it was: searches may be walking it (faiss
        cannot insert into a graph while it is searched)."""
        index = faiss.clone_index(self._index)
        faiss.omp_set_num_threads(1)  # (per calling thread)
        index.add(_prepare(vectors, norms, self.metric))
        return HnswIndex(index, self.metric)

    def save(self, path: Path) -> tuple[int, int]:
        """Write atomically (temp, fsync, rename, fsync dir); returns (bytes, crc32)."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            faiss.write_index(self._index, str(tmp))
            return publish_written(tmp, path)
        except (OSError, RuntimeError) as exc:  # (faiss reports a failed write as RuntimeError)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise storage_error(exc, "writing an index", path) from None
            try:
                full = not shutil.disk_usage(path.parent).free
            except OSError:  # (the folder itself is gone: its table was dropped)
                full = False
            if full:
                raise DiskFullError(f"{path}: no space left on the device while writing an index") from None
            raise StorageError(f"{path}: writing an index failed: {exc}") from None


def _rescore(vectors: np.ndarray, norms: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int,
             metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` among each query's ``candidates`` (Q, c; -1 = none), by the
    segment's float32 vectors: distances as the flat scan defines them."""
    n, width = candidates.shape
    valid = candidates >= 0
    rows = np.where(valid, candidates, 0)
    gathered = vectors[rows.reshape(-1)].reshape(n, width, -1)
    if metric == "l2":
        diff = gathered.astype(np.float64) - queries.astype(np.float64)[:, None, :]
        dist = np.einsum("qcd,qcd->qc", diff, diff)
    else:
        dots = np.einsum("qcd,qd->qc", gathered, queries)
        if metric == "dot":
            dist = -dots.astype(np.float64)
        else:
            qnorm = np.sqrt(np.einsum("ij,ij->i", queries, queries))
            denom = np.maximum(norms[rows] * qnorm[:, None], np.float32(1e-30))
            dist = np.clip(1.0 - dots / denom, 0.0, 2.0)
    dist = np.where(valid, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    out_dist = np.take_along_axis(dist, order, axis=1).astype(np.float32)
    out_pos = np.take_along_axis(np.where(valid, candidates, -1), order, axis=1)
    if out_pos.shape[1] < k:  # fewer candidates than k: pad with missing slots
        pad = k - out_pos.shape[1]
        out_dist = np.pad(out_dist, ((0, 0), (0, pad)), constant_values=np.inf)
        out_pos = np.pad(out_pos, ((0, 0), (0, pad)), constant_values=-1)
    return out_dist, out_pos


def _rescore_one(vectors: np.ndarray, norms: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int,
                 metric: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_rescore` for one query, in fewer NumPy calls (a third less time in a
    scratch test: after a sub-millisecond walk they count). Same arithmetic, same answer."""
    if (candidates < 0).any():
        candidates = candidates[candidates >= 0]
    gathered = vectors[candidates]
    if metric == "l2":
        diff = gathered.astype(np.float64) - query.astype(np.float64)
        dist = np.einsum("cd,cd->c", diff, diff)
    else:
        dots = gathered @ query
        if metric == "dot":
            dist = -dots.astype(np.float64)
        else:
            qnorm = np.sqrt(np.einsum("j,j->", query, query))
            dist = np.clip(1.0 - dots / np.maximum(norms[candidates] * qnorm, np.float32(1e-30)), 0.0, 2.0)
    order = np.argsort(dist, kind="stable")[:k]
    out_dist = np.full((1, k), np.inf, dtype=np.float32)
    out_pos = np.full((1, k), -1, dtype=np.int64)
    out_dist[0, :order.size] = dist[order]
    out_pos[0, :order.size] = candidates[order]
    return out_dist, out_pos


def build_threads(foreground_busy: bool = True) -> int:
    """Threads for one chunk of graph building: every core while the foreground is idle,
    all but one while it reads or writes (so its searches keep a core).

    Chunks of all builds in the process run one at a time (so concurrent builds never
    oversubscribe the cores: OpenMP threads spin). ``OMENDB_BUILD_THREADS`` fixes the count.
    """
    configured = os.environ.get("OMENDB_BUILD_THREADS")
    if configured:
        return max(1, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1) if foreground_busy else max(1, cores)


#: Held while a chunk of rows goes into a graph (see :func:`build_threads`).
_GRAPH_WORK = threading.Lock()


class BuildCancelled(Exception):
    """``build_hnsw`` was asked to stop (its table closed)."""


def _new_faiss_index(dim: int, metric: str, config: HnswSq | HnswFlat) -> faiss.Index:
    if config.quantized:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, config.m, _FAISS_METRIC[metric])
    else:
        index = faiss.IndexHNSWFlat(dim, config.m, _FAISS_METRIC[metric])
    index.hnsw.efConstruction = config.ef_construction
    return index


def fresh_hnsw(dim: int, metric: str) -> HnswIndex:
    """An empty graph for fresh rows, to grow with :meth:`HnswIndex.grown`.

    It serves rows that have no segment graph yet (a memtable's, then its segment's until
    that segment's own graph is published), so it is built for speed: float16 codes (no
    quantizer to train; candidates are re-scored exactly like any quantized graph's) and
    ``ef_construction`` 16. In a scratch test on one core over 43K sentence embeddings
    it took 37-44 us per row against 373 for ``HnswSq``'s defaults (ef_construction 32:
    50 us; m=8: 23 us but recall 0.79 at ef 128), and reached recall@10 0.889 at ``ef``
    64, 0.933 at 128, 0.958 at 256 (hence :data:`FRESH_EF_SEARCH`; a search for a recall
    uses the graph's calibration instead).
    """
    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, FRESH_M, _FAISS_METRIC[metric])
    index.hnsw.efConstruction = FRESH_EF_CONSTRUCTION
    return HnswIndex(index, metric)


def build_hnsw(vectors: np.ndarray, norms: np.ndarray | None, metric: str, config: HnswSq | HnswFlat,
               should_stop: Callable[[], bool] = lambda: False, chunk_rows: int = 8_192,
               threads: Callable[[], int] = lambda: build_threads()) -> HnswIndex:
    """Build a graph over ``vectors`` (row ``i`` becomes id ``i``).

    A quantized graph first learns its value ranges from a sample of the rows. Rows
    are added in chunks (memory beyond the graph stays one chunk) so that
    ``should_stop`` is checked every few seconds (it returning true raises
    :class:`BuildCancelled`) and ``threads()`` is asked again for each.
    """
    index = _new_faiss_index(vectors.shape[1], metric, config)
    faiss.omp_set_num_threads(build_threads())  # (training and calibration: per calling thread)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(0).choice(vectors.shape[0], min(vectors.shape[0], TRAIN_ROWS),
                                                         replace=False))
        index.train(_prepare(vectors[sample], None if norms is None else norms[sample], metric))
    graph = HnswIndex(index, metric)
    graph.add(vectors, norms, should_stop, chunk_rows, threads)
    return graph


def extend_hnsw(path: Path, *, metric: str, size: int, crc32: int, rows: int) -> HnswIndex:
    """Load a saved graph into memory (verified) so that :meth:`HnswIndex.add` can grow it."""
    verify_file(path, size=size, crc32=crc32, what="index")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise CorruptFileError(f"{path}: not a readable HNSW index: {exc}") from None
    if index.ntotal != rows:
        raise CorruptFileError(f"{path}: index has {index.ntotal} rows, segment has {rows}")
    return HnswIndex(index, metric)


def load_hnsw(path: Path, *, metric: str, size: int, crc32: int, rows: int) -> HnswIndex:
    """Verify size and checksum, then memory-map the index file."""
    verify_file(path, size=size, crc32=crc32, what="index")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise CorruptFileError(f"{path}: not a readable HNSW index: {exc}") from None
    if index.ntotal != rows:
        raise CorruptFileError(f"{path}: index has {index.ntotal} rows, segment has {rows}")
    if not isinstance(index, (faiss.IndexHNSWFlat, faiss.IndexHNSWSQ)):
        raise CorruptFileError(f"{path}: an index of type {type(index).__name__}, not one omendb writes")
    return HnswIndex(index, metric)
