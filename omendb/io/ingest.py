"""Load sources into tables: :func:`ingest` adds a source batch by batch.

Each batch is one atomic, durable ``add`` (or ``upsert``), so a crash part way keeps a
prefix of whole batches and loses none of the batches acknowledged before it. Reading
the sources is :mod:`omendb.io.sources`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import pyarrow as pa

from ..errors import InvalidArgumentError, OmenError, SchemaError, TableExistsError, TableNotFoundError
from .sources import Source, open_source

__all__ = ["ingest", "IngestResult"]


@dataclass
class IngestResult:
    """What :func:`ingest` did."""

    table: str
    rows: int
    batches: int
    seconds: float
    created: bool
    version: int
    sources: list[str]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


def ingest(target: Any, source: Any, *, table: str | None = None, mode: str = "auto",
           vector_column: str = "vector", id_column: str = "id", metric: str = "l2", format: str = "arrow",
           batch_size: int = 10_000, upsert: bool = False, fsync: bool | None = None,
           source_format: str | None = None, on_batch: Callable[[int], None] | None = None) -> IngestResult:
    """Add every row of ``source`` (or of several) to a table, one batch at a time.

    Each batch is one atomic, durable ``add`` (``upsert`` with ``upsert=True``): after
    a crash mid-ingest the table holds a prefix of whole batches, in source order, and
    every batch acknowledged before the crash. Memory stays bounded by a few batches
    plus the table's memtable, whatever the source's size.

    Args:
        target: an omendb ``Table``, or a ``Database`` together with ``table=``.
        source: anything :func:`open_source` accepts, an open :class:`Source`, or a
            list of them (ingested in order).
        table: the table's name when ``target`` is a database.
        mode: with a database: ``"auto"`` (create the table if missing, else append),
            ``"create"`` (it must not exist) or ``"append"`` (it must exist).
        vector_column: the vector column of the source (and of a table created here;
            the schema is inferred from the first batch).
        id_column: the primary key of a table created here (ids are assigned when the
            source has no such column).
        metric: the metric of a table created here.
        format: the segment format of a table created here (``"arrow"`` or ``"lance"``).
        batch_size: rows per batch (and per commit).
        upsert: replace rows whose ids exist instead of refusing them; makes a
            re-run after a crash safe.
        fsync: per-batch fsync (None: the database's setting).
        source_format: force the file format of path sources.
        on_batch: called with the row count of each batch once it is durable.
    """
    if mode not in ("auto", "create", "append"):
        raise InvalidArgumentError(f"mode must be 'auto', 'create' or 'append', got {mode!r}")
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    opened = [open_source(s, vector_column=vector_column, batch_size=batch_size, format=source_format)
              if not isinstance(s, Source) else s for s in sources]
    start = time.perf_counter()
    tbl, created = _target_table(target, table, mode)
    rows = batches = 0
    try:
        for src in opened:
            offset = 0  # rows of this source so far, for error messages
            for batch in src:
                if tbl is None:  # create the table from the first batch: its schema is inferred from it
                    tbl = _create(target, table, batch, src.name, offset, vector_column=vector_column,
                                  id_column=id_column, metric=metric, format=format)
                    created = True
                else:
                    _add(tbl, batch, src.name, offset, upsert, fsync)
                offset += batch.num_rows
                rows += batch.num_rows
                batches += 1
                if on_batch is not None:
                    on_batch(batch.num_rows)
    finally:
        for src in opened:
            src.close()
    if tbl is None:  # empty sources: nothing to infer a schema from
        names = ", ".join(s.name for s in opened)
        raise SchemaError(f"{names}: no rows to ingest, so table {table!r} cannot be created from them")
    return IngestResult(tbl.name, rows, batches, time.perf_counter() - start, created, tbl.version,
                        [s.name for s in opened])


def _target_table(target: Any, name: str | None, mode: str) -> tuple[Any, bool]:
    """(table or None when it is to be created from the first batch, created)."""
    if hasattr(target, "create_table"):
        if name is None:
            raise InvalidArgumentError("ingest into a database needs table=")
        exists = name in target
        if mode == "create" and exists:
            raise TableExistsError(f"table {name!r} already exists in {target.path}; "
                                   "append to it instead (CLI: --append)")
        if mode == "append" and not exists:
            raise TableNotFoundError(f"table {name!r} does not exist in {target.path} (CLI: --create)")
        return (target.open_table(name) if exists else None), False
    if name is not None and name != getattr(target, "name", name):
        raise InvalidArgumentError(f"table={name!r} given, but the target is table {target.name!r}")
    return target, False


def _create(db: Any, name: str | None, batch: pa.RecordBatch, where: str, offset: int, **options: Any) -> Any:
    try:
        return db.create_table(name, batch, **options)
    except OmenError as exc:
        raise _located(exc, where, offset, batch.num_rows) from exc


def _add(tbl: Any, batch: pa.RecordBatch, where: str, offset: int, upsert: bool, fsync: bool | None) -> None:
    try:
        (tbl.upsert if upsert else tbl.add)(batch, fsync=fsync)
    except OmenError as exc:
        raise _located(exc, where, offset, batch.num_rows) from exc


def _located(exc: OmenError, where: str, offset: int, rows: int) -> OmenError:
    """The same error, its message prefixed with the source and the batch's rows."""
    return type(exc)(f"{where}, in the batch of rows {offset:,}-{offset + rows - 1:,}: {exc}")
