"""Table folder layout, options and the first manifest of a new table."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import pyarrow as pa

from ..index.flat import METRICS
from ..index.hnsw import HnswConfig
from ..storage.manifest import Manifest
from ..storage.segment import SUFFIXES

__all__ = ["MANIFESTS", "SEGMENTS", "WAL", "LOCK", "TableOptions", "CompactionPolicy",
           "schema_to_text", "schema_from_text", "new_table_manifest"]

MANIFESTS, SEGMENTS, WAL, LOCK = "manifests", "segments", "wal", "LOCK"


@dataclass(frozen=True)
class CompactionPolicy:
    """When the background compaction service merges segments (after each flush).

    Attributes:
        enabled: run compaction in the background (``Table.compact()`` works either way).
        min_segments: merge the small segments once there are at least this many.
        small_rows: a segment with fewer rows is "small" (a merge candidate).
        max_deleted_fraction: rewrite any segment with more deleted rows than this
            fraction, to give back disk and scan time.
        max_rows: never build a merged segment larger than this.

    The merged segment's HNSW index is built before the merge is published, so
    searches keep using the old segments' indexes until the new one is ready.
    """

    enabled: bool = True
    min_segments: int = 4
    small_rows: int = 250_000
    max_deleted_fraction: float = 0.2
    max_rows: int = 2_000_000

    def __post_init__(self) -> None:
        if self.min_segments < 2:
            raise ValueError(f"CompactionPolicy.min_segments must be >= 2, got {self.min_segments}")
        if not 0.0 < self.max_deleted_fraction <= 1.0:
            raise ValueError("CompactionPolicy.max_deleted_fraction must be in (0, 1]")


@dataclass(frozen=True)
class TableOptions:
    """Per-database options.

    Attributes:
        fsync: fsync every write's WAL record before returning (default). With
            ``False`` a write survives a crash of the process but not of the machine
            until the next ``flush()``/``close()``; use it for bulk loads.
        memtable_bytes: flush the memtable to a segment once it holds this many bytes.
        build_indexes: build HNSW indexes of large segments in the background.
        compaction: the background compaction policy.
        read_only: open tables without the writer lock, seeing published versions only.
        lock_timeout: seconds to wait for another process's writer lock (0: fail at once).
    """

    fsync: bool = True
    memtable_bytes: int = 64 << 20
    build_indexes: bool = True
    compaction: CompactionPolicy = field(default_factory=CompactionPolicy)
    read_only: bool = False
    lock_timeout: float = 0.0


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def new_table_manifest(schema: pa.Schema, *, id_column: str, vector_column: str, metric: str,
                       auto_ids: bool, index: HnswConfig | None = None, format: str = "arrow") -> Manifest:
    """Version 1 of a new, empty table."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if format not in SUFFIXES:
        raise ValueError(f"format must be one of {', '.join(SUFFIXES)}, got {format!r}")
    dim = schema.field(vector_column).type.list_size
    info = {"schema": schema_to_text(schema), "id_column": id_column, "vector_column": vector_column,
            "metric": metric, "dim": dim, "auto_ids": auto_ids, "format": format,
            "index": (index or HnswConfig()).to_dict()}
    return Manifest(version=1, table=info, created_at=time.time(), change="create")
