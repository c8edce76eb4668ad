"""HNSW graphs over one segment's vectors, built and searched with faiss.

Each segment gets its own ``faiss.IndexHNSWFlat``; row ``i`` of the segment is id ``i``
in the graph. Cosine tables index unit-normalised copies with inner product; ``dot``
uses inner product and ``l2`` squared Euclidean, so faiss' scores convert to omendb's
distances (smaller is closer) exactly as the exact scan computes them.

Filtering (deleted rows, ``where``) happens inside the graph walk with an
``IDSelectorBitmap``, so a filtered search still returns ``k`` rows when ``k`` match
(the caller falls back to the exact scan in the rare case the walk finds fewer).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from ..errors import CorruptFileError, DiskFullError, InvalidArgumentError, StorageError, storage_error
from ..storage.fileio import publish_written, verify_file

__all__ = ["HnswConfig", "HnswIndex", "BuildCancelled", "build_hnsw", "build_threads", "load_hnsw", "MAX_EF"]

#: The largest candidate list a search may ask for (``ef``).
MAX_EF = 100_000

_FAISS_METRIC = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT, "dot": faiss.METRIC_INNER_PRODUCT}


@dataclass(frozen=True)
class HnswConfig:
    """Parameters of the per-segment HNSW indexes (faiss ``IndexHNSWFlat``).

    Attributes:
        m: graph degree (links per node; layer 0 has ``2*m``). Higher ``m`` gives
            better recall at a given ``ef`` and handles hard data better, at the cost
            of a larger index (about ``8*m`` bytes per row on top of the vectors) and
            slower builds. 16 is a good default for 100-1000 dimensions.
        ef_construction: candidate list size while building. Higher builds a better
            graph, linearly slower. 200 builds near-best graphs; 64-100 builds ~2x
            faster for a small recall loss.
        ef_search: default candidate list size at query time (``search(ef=...)``
            overrides it per call). It must be >= ``k``; raising it trades latency for
            recall. 64 gives recall@10 >= 0.95 on 384-d sentence embeddings (see
            ``benchmarks/``).
        min_rows: segments with fewer rows are searched by the exact scan, which is
            as fast as the graph at that size and needs no build.
    """

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    min_rows: int = 10_000

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgumentError(f"HnswConfig.{name} must be an integer from {low} to {high:,}, "
                                           f"got {value!r}")

    def build_params(self) -> dict[str, int]:
        """The parameters that shape a built graph (an index is stale if they change)."""
        return {"m": self.m, "ef_construction": self.ef_construction}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Accepted range of each parameter: beyond these a graph costs memory and time out of
#: all proportion (faiss itself overflows on some).
_LIMITS = {"m": (2, 256), "ef_construction": (1, 4096), "ef_search": (1, MAX_EF), "min_rows": (0, 1 << 40)}


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
        self._params: dict[int, faiss.SearchParametersHNSW] = {}  # unfiltered, per ef: read-only, shareable

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

    def search(self, queries: np.ndarray, k: int, ef: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k``: ``(distances, positions)`` (Q, k) float32 / int64, missing slots inf / -1.

        A query's missing slots (fewer than ``k`` rows reachable or allowed) are its last ones.
        """
        if queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        # A candidate list longer than the graph finds nothing more.
        params, _keep_alive = self._search_params(min(max(ef, k), max(self.rows, k)), allowed)
        n = queries.shape[0]
        scores = np.empty((n, k), dtype=np.float32)
        positions = np.empty((n, k), dtype=np.int64)
        # faiss' own ``search`` wrapper re-checks and re-allocates; a sub-millisecond
        # search feels those microseconds, so call the wrapped method directly.
        self._index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(positions),
                             params)
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
            if not shutil.disk_usage(path.parent).free:
                raise DiskFullError(f"{path}: no space left on the device while writing an index") from None
            raise StorageError(f"{path}: writing an index failed: {exc}") from None


def build_threads() -> int:
    """Threads for one index build: all cores but one, so searches keep a core.

    ``OMENDB_BUILD_THREADS`` overrides it.
    """
    configured = os.environ.get("OMENDB_BUILD_THREADS")
    if configured:
        return max(1, int(configured))
    return max(1, (os.cpu_count() or 2) - 1)


class BuildCancelled(Exception):
    """``build_hnsw`` was asked to stop (its table closed)."""


def build_hnsw(vectors: np.ndarray, norms: np.ndarray | None, metric: str, config: HnswConfig,
               should_stop: Callable[[], bool] = lambda: False, chunk_rows: int = 8_192) -> HnswIndex:
    """Build a graph over ``vectors`` (row ``i`` becomes id ``i``).

    Rows are added in chunks so that ``should_stop`` is checked every few seconds;
    it returning true raises :class:`BuildCancelled`.
    """
    index = faiss.IndexHNSWFlat(vectors.shape[1], config.m, _FAISS_METRIC[metric])
    index.hnsw.efConstruction = config.ef_construction
    # OpenMP thread count is per calling thread: this limits builds (run on background
    # threads) and leaves the foreground's searches alone.
    faiss.omp_set_num_threads(build_threads())
    for start in range(0, vectors.shape[0], chunk_rows):
        if should_stop():
            raise BuildCancelled()
        stop = start + chunk_rows
        index.add(_prepare(vectors[start:stop], None if norms is None else norms[start:stop], metric))
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
    return HnswIndex(index, metric)
