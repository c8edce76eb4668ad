"""Table folder layout, options and the first manifest of a new table."""

from __future__ import annotations

import base64
import math
import re
import time
from dataclasses import dataclass, field

import pyarrow as pa

from ..errors import ArgumentTypeError, InvalidArgumentError
from ..index.flat import METRICS
from ..index.hnsw import HnswConfig
from ..storage.manifest import Manifest
from ..storage.segment import SUFFIXES

__all__ = ["MANIFESTS", "SEGMENTS", "WAL", "LOCK", "SALVAGE", "TableOptions", "CompactionPolicy",
           "schema_to_text", "schema_from_text", "new_table_manifest", "is_omendb_segment_file", "MAX_DIM"]

MANIFESTS, SEGMENTS, WAL, LOCK, SALVAGE = "manifests", "segments", "wal", "LOCK", "salvage"

#: The largest vector dimension a table accepts (faiss and the memtable's buffers are
#: sized by it; real embeddings stay far below).
MAX_DIM = 65_536

# Names omendb gives the files of a table's segments folder: flushed segments
# (seg-<seq>-<random>), merged ones (seg-m<random>), their deletion files (<segment>.<version>.del)
# and indexes (<segment>.<random>.hnsw), and the temporary names they are written under.
_SEGMENT_STEM = r"seg-(?:\d{10}-[0-9a-f]{8}|m[0-9a-f]{12})"
_SEGMENT_FILE = re.compile(
    rf"\.?(?:{_SEGMENT_STEM}\.(?:arrow|lance)|{_SEGMENT_STEM}\.\d{{10}}\.del|{_SEGMENT_STEM}\.[0-9a-f]{{8}}\.hnsw)"
    r"(?:\.tmp(?:-\d+)?)?")


def is_omendb_segment_file(name: str) -> bool:
    """True for a name omendb gives files in ``segments/`` (a user's stray file is never one)."""
    match = _SEGMENT_FILE.fullmatch(name)
    return match is not None and (name.startswith(".") == (".tmp" in name))


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
        _check_flag("CompactionPolicy.enabled", self.enabled)
        _check_int("CompactionPolicy.min_segments", self.min_segments, 2)
        _check_int("CompactionPolicy.small_rows", self.small_rows, 1)
        _check_int("CompactionPolicy.max_rows", self.max_rows, 1)
        fraction = self.max_deleted_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise InvalidArgumentError(f"CompactionPolicy.max_deleted_fraction must be a number in (0, 1], "
                                       f"got {fraction!r}")


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

    def __post_init__(self) -> None:
        for name in ("fsync", "build_indexes", "read_only"):
            _check_flag(name, getattr(self, name))
        _check_int("memtable_bytes", self.memtable_bytes, MIN_MEMTABLE_BYTES, 1 << 40)
        if not isinstance(self.compaction, CompactionPolicy):
            raise ArgumentTypeError(f"compaction must be True, False or a CompactionPolicy, got {self.compaction!r}")
        timeout = self.lock_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
            raise InvalidArgumentError(f"lock_timeout must be a number of seconds >= 0, got {timeout!r}")


#: The smallest memtable a table accepts (tests and tiny tables flush every few rows).
MIN_MEMTABLE_BYTES = 1024


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidArgumentError(f"{name} must be an integer {bounds}, got {value!r}")


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def new_table_manifest(schema: pa.Schema, *, id_column: str, vector_column: str, metric: str,
                       auto_ids: bool, index: HnswConfig | None = None, format: str = "arrow") -> Manifest:
    """Version 1 of a new, empty table."""
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if format not in SUFFIXES:
        raise InvalidArgumentError(f"format must be one of {', '.join(SUFFIXES)}, got {format!r}")
    dim = schema.field(vector_column).type.list_size
    if not 1 <= dim <= MAX_DIM:
        raise InvalidArgumentError(f"vector dimension {dim} is out of range: a table's vectors have 1 to {MAX_DIM:,} "
                                   "components")
    info = {"schema": schema_to_text(schema), "id_column": id_column, "vector_column": vector_column,
            "metric": metric, "dim": dim, "auto_ids": auto_ids, "format": format,
            "index": (index or HnswConfig()).to_dict()}
    return Manifest(version=1, table=info, created_at=time.time(), change="create")
