"""A table's options and the first manifest of a new table."""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..convert import infer_schema, to_arrow_table, vector_type
from ..errors import ArgumentTypeError, DimensionError, InvalidArgumentError, SchemaError
from ..index.flat import METRICS
from ..index.configs import HnswSq, IndexConfig
from ..storage.layout import SEGMENT_SUFFIXES, schema_to_text
from ..query.filters import unfilterable_columns
from ..storage.manifest import Manifest

__all__ = ["TableOptions", "CompactionPolicy", "new_table_manifest", "new_table_schema", "MAX_DIM",
           "MIN_MEMTABLE_BYTES"]

#: The largest vector dimension a table accepts (faiss and the memtable's buffers are
#: sized by it; real embeddings stay far below).
MAX_DIM = 65_536


@dataclass(frozen=True)
class CompactionPolicy:
    """When the background compaction service merges segments (after each flush).

    Segments below ``max_rows`` grow: the largest is the base the others join, at
    once while the base is small (< ``small_rows``; every segment costs a search one
    more graph walk), later once ``min_segments`` of them wait and their rows reach
    half the base's size (so a row is copied O(log N) times), or twice
    ``min_segments`` segments wait. The base keeps its row positions and its
    graph grows by the joining rows; the merged segment's graph is ready before the
    merge is published, so searches keep their indexes throughout.

    Attributes:
        enabled: run compaction in the background (``Table.compact()`` works either way).
        min_segments: once the base has ``small_rows``, merge when at least this many
            segments below ``max_rows`` wait (and their rows reach half the base's).
        small_rows: a base with fewer rows takes any other segment in at once.
        max_deleted_fraction: rewrite any segment with more deleted rows than this
            fraction, to give back disk and scan time.
        max_rows: the size cap: a merge never makes a segment larger than this (a
            merge holds its graph in memory, ~530 bytes per row at 384-d; each
            segment costs a search one more graph walk).
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
        keep_versions_for: seconds an old version is kept (for ``checkout()`` and for
            readers still on it) before the writer removes it, and the files only it
            references, in the background (default 60; ``None``: keep every version
            until ``Table.cleanup()``). The newest version is always kept.
    """

    fsync: bool = True
    memtable_bytes: int = 64 << 20
    build_indexes: bool = True
    compaction: CompactionPolicy = field(default_factory=CompactionPolicy)
    read_only: bool = False
    lock_timeout: float = 0.0
    keep_versions_for: float | dt.timedelta | None = 60.0

    def __post_init__(self) -> None:
        for name in ("fsync", "build_indexes", "read_only"):
            _check_flag(name, getattr(self, name))
        _check_int("memtable_bytes", self.memtable_bytes, MIN_MEMTABLE_BYTES, 1 << 40)
        if not isinstance(self.compaction, CompactionPolicy):
            raise ArgumentTypeError(f"compaction must be True, False or a CompactionPolicy, got {self.compaction!r}")
        timeout = self.lock_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
            raise InvalidArgumentError(f"lock_timeout must be a number of seconds >= 0, got {timeout!r}")
        keep = self.keep_versions_for
        if isinstance(keep, dt.timedelta):
            keep = keep.total_seconds()
            object.__setattr__(self, "keep_versions_for", keep)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep < math.inf):
            raise InvalidArgumentError(f"keep_versions_for must be a number of seconds >= 0, a timedelta or None, "
                                       f"got {self.keep_versions_for!r}")


#: The smallest memtable a table accepts (tests and tiny tables flush every few rows).
MIN_MEMTABLE_BYTES = 1024


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidArgumentError(f"{name} must be an integer {bounds}, got {value!r}")


def new_table_manifest(schema: pa.Schema, *, id_column: str, vector_column: str, metric: str,
                       auto_ids: bool, index: IndexConfig | None = None, format: str = "arrow",
                       embedding: dict[str, Any] | None = None) -> Manifest:
    """Version 1 of a new, empty table (``embedding``: its embedding function's record)."""
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if format not in SEGMENT_SUFFIXES:
        raise InvalidArgumentError(f"format must be one of {', '.join(SEGMENT_SUFFIXES)}, got {format!r}")
    dim = schema.field(vector_column).type.list_size
    if not 1 <= dim <= MAX_DIM:
        raise InvalidArgumentError(f"vector dimension {dim} is out of range: a table's vectors have 1 to {MAX_DIM:,} "
                                   "components")
    info = {"schema": schema_to_text(schema), "id_column": id_column, "vector_column": vector_column,
            "metric": metric, "dim": dim, "auto_ids": auto_ids, "format": format,
            "index": (index or HnswSq()).to_dict()}
    if embedding is not None:
        info["embedding"] = embedding
    return Manifest(version=1, table=info, created_at=time.time(), change="create")


def new_table_schema(data: Any, dim: int | None, schema: pa.Schema | None, id_column: str,
                     vector_column: str) -> tuple[pa.Schema, bool]:
    """The schema of a new table (from ``data``, ``schema`` or ``dim``) and whether omendb assigns its ids.

    Refuses column types DuckDB cannot read: ``where`` filters and SQL could not use them.
    """
    table_schema, auto_ids = _schema_of(data, dim, schema, id_column, vector_column)
    unreadable = unfilterable_columns(pa.schema([f for f in table_schema if f.name != vector_column]))
    if unreadable:
        types = ", ".join(f"{n!r} ({table_schema.field(n).type})" for n in unreadable)
        raise SchemaError(f"column(s) {types}: a type DuckDB cannot read, so `where` filters and SQL could not "
                          "use the table; cast them first (float16 to float32, decimal256 to decimal128 or "
                          "float64)")
    return table_schema, auto_ids


def _schema_of(data: Any, dim: int | None, schema: pa.Schema | None, id_column: str,
               vector_column: str) -> tuple[pa.Schema, bool]:
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))
                            or not 1 <= dim <= MAX_DIM):
        raise InvalidArgumentError(f"dim must be an integer from 1 to {MAX_DIM:,}, got {dim!r}")
    dim = None if dim is None else int(dim)
    if schema is not None:
        if not isinstance(schema, pa.Schema):
            raise ArgumentTypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
        if vector_column not in schema.names:
            raise SchemaError(f"schema has no vector column {vector_column!r}")
        kind = schema.field(vector_column).type
        if pa.types.is_fixed_size_list(kind):
            dim = dim or kind.list_size
            if kind.list_size != dim:
                raise DimensionError(f"schema's vector column {vector_column!r} has dim "
                                     f"{kind.list_size}, but dim={dim} was given")
        elif not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or dim is None:
            raise SchemaError(f"vector column {vector_column!r} must be fixed_size_list<float32, dim> "
                              f"(or a list type with dim=), got {kind}")
        empty = pa.table({f.name: pa.array([], f.type) for f in schema})
        inferred, auto_ids = infer_schema(empty, id_column=id_column, vector_column=vector_column, dim=dim)
        return inferred, auto_ids
    if data is not None:
        return infer_schema(to_arrow_table(data, vector_column), id_column=id_column,
                            vector_column=vector_column, dim=dim)
    if dim is None:
        raise InvalidArgumentError("create_table needs data=, dim= or schema=")
    return pa.schema([pa.field(id_column, pa.int64(), nullable=False),
                      pa.field(vector_column, vector_type(dim), nullable=False)]), True
