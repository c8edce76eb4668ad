"""Write a table's live rows to Parquet, a Lance dataset or an Arrow IPC file.

:func:`export_table` streams one snapshot of the table part by part (segment by
segment, then the unflushed rows), a slice at a time, so exporting a table larger
than memory needs only a slice's worth of it. The output is written under a temporary
name and renamed into place when complete: a reader never sees a half-written export,
and a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ..errors import InvalidArgumentError, MissingDependencyError
from ..query.snapshot import Snapshot

__all__ = ["export_table", "snapshot_batches", "ExportResult", "EXPORT_FORMATS"]

#: Formats :func:`export_table` writes.
EXPORT_FORMATS = ("parquet", "lance", "arrow")


@dataclass
class ExportResult:
    """What :func:`export_table` wrote."""

    path: str
    format: str
    rows: int
    bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot_batches(snapshot: Snapshot, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """The live rows of ``snapshot`` as record batches of at most ``batch_size`` rows.

    Memory-mapped segments are sliced without copying; only parts with deleted rows
    are filtered, a slice at a time.
    """
    schema = snapshot.schema
    for part in snapshot.parts:
        table = pa.Table.from_arrays(part.table.select(schema.names).columns, schema=schema)
        for start in range(0, table.num_rows, batch_size):
            piece = table.slice(start, batch_size)
            if part.live is not None:
                piece = piece.filter(pa.array(part.live[start:start + batch_size]))
            for batch in piece.to_batches():
                if batch.num_rows:
                    yield batch


def export_table(table: Any, path: str | os.PathLike, format: str = "parquet", *, overwrite: bool = False,
                 batch_size: int = 65_536) -> ExportResult:
    """Write every live row of ``table`` (one consistent snapshot) to ``path``.

    Args:
        table: an omendb ``Table`` (also a read-only one or a ``checkout()``).
        path: the file (``parquet``, ``arrow``) or folder (``lance``) to create.
        format: ``"parquet"``, ``"lance"`` (a Lance dataset, which LanceDB opens as a
            table when the folder is named ``<db>/<name>.lance``) or ``"arrow"`` (an
            Arrow IPC file).
        overwrite: replace ``path`` if it exists (default: refuse).
        batch_size: rows per written batch (Parquet: per row group).

    The columns are the table's schema: primary key, ``fixed_size_list<float32>``
    vectors and metadata columns.
    """
    if format not in EXPORT_FORMATS:
        raise InvalidArgumentError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder to export into")
    start = time.perf_counter()
    snapshot = table.snapshot()
    tmp = path.parent / f".{path.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        rows = _WRITERS[format](tmp, snapshot.schema, snapshot_batches(snapshot, batch_size))
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return ExportResult(str(path), format, rows, _size(path), time.perf_counter() - start)


def _write_parquet(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> int:
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_arrow(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> int:
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_lance(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> int:
    try:
        import lance
    except ImportError:
        raise MissingDependencyError("exporting to Lance needs pylance: pip install 'omendb[lance]'") from None
    counted = [0]

    def counting() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            counted[0] += batch.num_rows
            yield batch

    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, counting()), str(path), schema=schema,
                        mode="create")
    return counted[0]


_WRITERS = {"parquet": _write_parquet, "arrow": _write_arrow, "lance": _write_lance}


def _replace(tmp: Path, path: Path) -> None:
    """Move the finished export into place, replacing what was there."""
    if not path.exists() or (path.is_file() and tmp.is_file()):
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(tmp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
