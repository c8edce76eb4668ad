"""One config class per index type; each docstring says what it trades.

A table stores its index config in its manifest (``formats/manifest.md``); every
segment with at least ``min_rows`` rows gets a graph of that type, built in the
background, and every search re-scores its final candidates exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["HnswSq", "HnswFlat", "HnswConfig", "IndexConfig", "index_config_from_dict", "check_index_config",
           "requested_index_config",
           "MAX_EF", "MIN_QUANTIZER_ROWS"]

#: The largest candidate list a search may ask for (``ef``).
MAX_EF = 100_000
#: A quantizer learns its value ranges from the rows: fewer rows than this teach it too little.
MIN_QUANTIZER_ROWS = 1_000

#: Accepted range of each integer parameter: beyond these a graph costs memory and time
#: out of all proportion (faiss itself overflows on some).
_LIMITS = {"m": (2, 256), "ef_construction": (1, 4096), "ef_search": (1, MAX_EF), "min_rows": (0, 1 << 40)}


@dataclass(frozen=True)
class _Hnsw:
    """What every HNSW config has (see the subclasses)."""

    kind: ClassVar[str]
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    min_rows: int = 10_000
    recall: float | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name, (low, high) in _LIMITS.items():
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgumentError(f"{name}.{field_name} must be an integer from {low} to {high:,}, "
                                           f"got {value!r}")
        recall = self.recall
        if recall is not None and (isinstance(recall, bool) or not isinstance(recall, (int, float))
                                   or not 0.0 < recall <= 1.0):
            raise InvalidArgumentError(f"{name}.recall must be a number in (0, 1], got {recall!r}")

    @property
    def quantized(self) -> bool:
        return False

    def build_params(self) -> dict[str, Any]:
        """The parameters that shape a built graph (an index is stale if they change)."""
        return {"m": self.m, "ef_construction": self.ef_construction}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HnswSq(_Hnsw):
    """HNSW over 8-bit scalar-quantized codes, final candidates re-scored exactly (the default).

    The graph stores one byte per component (a quarter of float32) and is walked by
    distances between codes; the best ``4 * k`` candidates (or ``ef``, if fewer) are
    then re-scored from the segment's own memory-mapped float32 vectors, so
    ``_distance`` is exact and the index file holds no second copy of the vectors.
    Measured on 100K x 384 sentence embeddings (``benchmarks/results/index_types.md``):
    builds in 0.9x the time of :class:`HnswFlat`, a third of its size, and reaches
    recall 0.95 about as fast (0.204 against 0.224 ms, both re-scored). The quantizer learns each component's range from the segment's rows,
    so it needs at least 1,000 of them (``min_rows``).

    Attributes:
        m, ef_construction, ef_search, min_rows: as :class:`HnswFlat`.
        recall: the recall@10 a search aims for when it names neither ``ef`` nor
            ``recall`` (default 0.95): each segment's build measures its own recall
            per ``ef`` on sampled queries against exact answers, and a search takes the
            smallest ``ef`` that reaches the target there. ``None``: use ``ef_search``.
    """

    kind: ClassVar[str] = "hnsw_sq8"
    recall: float | None = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_rows < MIN_QUANTIZER_ROWS:
            raise InvalidArgumentError(f"HnswSq.min_rows must be at least {MIN_QUANTIZER_ROWS:,}: the quantizer "
                                       f"learns its ranges from a segment's rows, got {self.min_rows:,}")

    @property
    def quantized(self) -> bool:
        return True

    def build_params(self) -> dict[str, Any]:
        return {"kind": self.kind, "m": self.m, "ef_construction": self.ef_construction}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class HnswFlat(_Hnsw):
    """HNSW over full float32 vectors (faiss ``IndexHNSWFlat``).

    The graph walk computes exact distances, at the price of a second float32 copy of
    every vector inside the index file (about as large as the segment) and slower
    builds than :class:`HnswSq`. Tables made before quantized graphs existed use it.

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
        recall: as :class:`HnswSq` (default ``None``: ``ef_search``).
    """

    kind: ClassVar[str] = "hnsw_flat"


#: The flat HNSW config under its original name (tables and code from before quantized graphs).
HnswConfig = HnswFlat

IndexConfig = HnswSq | HnswFlat

_KINDS: dict[str, type[_Hnsw]] = {HnswSq.kind: HnswSq, HnswFlat.kind: HnswFlat}


def index_config_from_dict(values: dict[str, Any] | None) -> HnswSq | HnswFlat:
    """The config a manifest (or a client) describes; no ``kind`` means flat HNSW (old tables)."""
    values = dict(values or {})
    kind = values.pop("kind", HnswFlat.kind)
    cls = _KINDS.get(kind)
    if cls is None:
        raise InvalidArgumentError(f"unknown index kind {kind!r}; omendb knows {', '.join(_KINDS)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown {cls.__name__} parameter(s): {', '.join(unknown)}")
    return cls(**values)


def requested_index_config(current: HnswSq | HnswFlat, m: Any, ef_construction: Any, *, ef_search: Any,
                           min_rows: Any, recall: Any, index: Any) -> HnswSq | HnswFlat:
    """The config ``create_index`` asks for: ``index`` whole, else ``current``'s type with the
    parameters given (``None``: ``current``'s)."""
    if index is not None:
        return check_index_config(index)
    if isinstance(m, _Hnsw):
        raise InvalidArgumentError(f"create_index(m=...) takes the graph's neighbours per node; pass an index "
                                   f"config as create_index(index={m!r})")
    return type(current)(m=m, ef_construction=ef_construction,
                         ef_search=current.ef_search if ef_search is None else ef_search,
                         min_rows=current.min_rows if min_rows is None else min_rows,
                         recall=current.recall if recall is None else recall)


def check_index_config(index: Any) -> HnswSq | HnswFlat:
    """``index`` if it is an index config, else a clear error."""
    if not isinstance(index, _Hnsw):
        raise ArgumentTypeError(f"index must be an omendb.HnswSq or omendb.HnswFlat (HnswConfig), "
                                f"got {type(index).__name__}")
    return index
