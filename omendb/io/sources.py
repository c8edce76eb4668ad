"""Read rows to ingest from files, folders and data frames, as a stream of record batches.

:func:`open_source` turns what a user points at into a :class:`Source`: its Arrow
schema, its row count when cheaply known, and an iterator of ``pa.RecordBatch`` of at
most ``batch_size`` rows. Nothing is read whole: files are read a batch at a time, so
a file larger than memory ingests in bounded memory.

Supported sources:

- Parquet files and folders of Parquet files (hive partitions included);
- Lance datasets, which is also what a LanceDB table is (``<db>/<table>.lance``);
- Arrow IPC files, file or stream format (``.arrow``, ``.arrows``, ``.ipc``, ``.feather``);
- CSV (``.csv``, ``.tsv``, gzip too) and JSON Lines (``.jsonl``, ``.ndjson``, ``.json``),
  read by DuckDB; the vector column may be a JSON array string like ``"[0.1, 0.2]"``;
- ``.npy`` files of a 2-D array of vectors (ids assigned);
- pandas and polars DataFrames, polars LazyFrames (streamed), pyarrow Tables,
  RecordBatches, RecordBatchReaders and datasets, DuckDB relations, NumPy arrays,
  omendb tables, and anything else ``Table.add`` accepts;
- ``"-"``: an Arrow IPC stream on standard input (or CSV / JSON Lines with ``format=``).

Loading a source into a table is :func:`omendb.io.ingest`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ..convert import to_arrow_table
from ..errors import MissingDependencyError, SchemaError, SourceError

__all__ = ["Source", "open_source", "FILE_FORMATS", "detect_format"]

#: File formats ``open_source`` reads, by the name ``format=`` takes.
FILE_FORMATS = ("parquet", "lance", "arrow", "csv", "jsonl", "npy")

_SUFFIXES = {
    ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet",
    ".lance": "lance",
    ".arrow": "arrow", ".arrows": "arrow", ".ipc": "arrow", ".feather": "arrow",
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".npy": "npy",
}
_COMPRESSED = (".gz", ".zst")


@dataclass
class Source:
    """A stream of record batches to ingest.

    Attributes:
        name: what it was opened from (a path or a type name), for messages.
        schema: the Arrow schema of the batches (the vector column may still be a
            list of any numbers, or JSON array strings; ``Table.add`` casts it).
        total_rows: number of rows, or None when it is not known without reading
            everything (CSV, JSON Lines, Arrow streams, lazy frames).
        format: the detected format (``"parquet"``, ``"csv"``, ``"pandas"``, ...).
    """

    name: str
    schema: pa.Schema
    total_rows: int | None
    format: str
    _batches: Callable[[], Iterator[pa.RecordBatch]] = field(repr=False)
    _close: Callable[[], None] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._batches()

    def close(self) -> None:
        """Release the files or connections the source holds."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` by its suffix or, for folders, by what they hold."""
    path = Path(path)
    if path.is_dir():
        return _folder_format(path)
    name = path.name.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    kind = _SUFFIXES.get(Path(name).suffix)
    if kind is None:
        raise SourceError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                         f"pass format= one of {', '.join(FILE_FORMATS)}")
    return kind


def _folder_format(path: Path) -> str:
    if path.suffix == ".lance" or (path / "_versions").is_dir():
        return "lance"
    tables = sorted(p.name for p in path.iterdir() if p.is_dir() and p.suffix == ".lance")
    kinds: set[str] = set()
    for file in path.rglob("*"):
        if file.is_file() and not file.name.startswith((".", "_")) \
                and not any(part.endswith(".lance") for part in file.relative_to(path).parts):
            try:
                kinds.add(detect_format(file))
            except ValueError:
                continue
    if not kinds and tables:
        raise SourceError(f"{path} is a LanceDB database (tables: {', '.join(tables)}); "
                         f"name one table's folder, e.g. {path / tables[0]}")
    if not kinds:
        raise SourceError(f"{path}: folder holds no Parquet, Arrow, CSV or JSON Lines files")
    if len(kinds) > 1:
        raise SourceError(f"{path}: folder mixes formats ({', '.join(sorted(kinds))}); "
                         "point at one file or pass format=")
    return kinds.pop()


def open_source(src: Any, *, vector_column: str | None = "vector", batch_size: int = 10_000,
                format: str | None = None) -> Source:
    """Open ``src`` for streaming ingest (see the module docstring for what it may be).

    Args:
        src: a path (file or folder, ``str`` or ``PathLike``), ``"-"`` for standard
            input, or an in-memory object (DataFrame, LazyFrame, Arrow data, ...).
        vector_column: the column that must be present (None: do not check).
        batch_size: the most rows per batch.
        format: force a file format (one of :data:`FILE_FORMATS`) instead of
            detecting it from the suffix; for ``"-"`` the default is an Arrow stream.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown or undetectable format.
        SchemaError: the vector column is missing (the message lists the columns).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SourceError(f"batch_size must be a positive integer, got {batch_size!r}")
    if format is not None and format not in FILE_FORMATS:
        raise SourceError(f"unknown source format {format!r}; use one of {', '.join(FILE_FORMATS)}")
    if isinstance(src, Source):
        source = src
    elif isinstance(src, (str, os.PathLike)):
        source = _open_path(src, batch_size, format, vector_column)
    else:
        source = _open_object(src, batch_size, vector_column or "vector")
    if vector_column is not None and vector_column not in source.schema.names:
        source.close()
        raise SchemaError(f"{source.name}: no vector column {vector_column!r} "
                          f"(columns: {', '.join(source.schema.names) or 'none'}); "
                          "name it with vector_column= (CLI: --vector-column)")
    return source


# --------------------------------------------------------------------- files
def _open_path(src: str | os.PathLike, batch_size: int, format: str | None, vector_column: str | None) -> Source:
    if str(src) == "-":
        return _open_stdin(batch_size, format or "arrow")
    path = Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = format or detect_format(path)
    if kind in ("csv", "jsonl"):
        return _open_duckdb(path, batch_size, kind)
    if kind == "npy":
        return _open_npy(path, batch_size, vector_column or "vector")
    return {"parquet": _open_parquet, "lance": _open_lance, "arrow": _open_ipc}[kind](path, batch_size)


def _open_parquet(path: Path, batch_size: int) -> Source:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    try:  # the dataset lists the files and hive partition keys; each file is then read on its own
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive" if path.is_dir() else None)
        fragments = list(dataset.get_fragments())
        total = sum(f.metadata.num_rows for f in fragments)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: not readable as Parquet: {exc}") from None
    schema = dataset.schema

    def batches() -> Iterator[pa.RecordBatch]:
        for fragment in fragments:
            keys = ds.get_partition_keys(fragment.partition_expression)
            # no pre-buffering, small read buffer: memory is about one batch, whatever the row groups' size
            reader = pq.ParquetFile(fragment.path, pre_buffer=False, buffer_size=1 << 20)
            try:
                for batch in reader.iter_batches(batch_size=batch_size):
                    yield _with_partition_keys(batch, keys, schema)
            finally:
                reader.close()

    return Source(str(path), schema, total, "parquet", lambda: _rebatch(batches(), batch_size))


def _with_partition_keys(batch: pa.RecordBatch, keys: dict[str, Any], schema: pa.Schema) -> pa.RecordBatch:
    """Add a hive-partitioned file's ``key=value`` folders as columns, in the dataset's column order."""
    if not keys and batch.schema.names == schema.names:
        return batch
    columns = []
    for field_ in schema:
        if field_.name in keys:
            columns.append(pa.repeat(pa.scalar(keys[field_.name], field_.type), batch.num_rows))
        elif field_.name in batch.schema.names:
            columns.append(batch.column(field_.name))
        else:
            columns.append(pa.nulls(batch.num_rows, field_.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _open_lance(path: Path, batch_size: int) -> Source:
    try:
        import lance
    except ImportError:
        raise MissingDependencyError("reading Lance datasets needs pylance: pip install 'omendb[lance]'") from None
    try:
        dataset = lance.dataset(str(path))
        schema, total = dataset.schema, dataset.count_rows()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{path}: not readable as a Lance dataset: {exc}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        return _rebatch(dataset.to_batches(batch_size=batch_size), batch_size)

    return Source(str(path), schema, total, "lance", batches)


def _open_ipc(path: Path, batch_size: int) -> Source:
    if path.is_dir():
        import pyarrow.dataset as ds

        dataset = ds.dataset(str(path), format="ipc")
        return Source(str(path), dataset.schema, dataset.count_rows(), "arrow",
                      lambda: _rebatch(dataset.to_batches(batch_size=batch_size, batch_readahead=2,
                                                          fragment_readahead=1), batch_size))
    try:  # the random-access file format: row count known up front
        with pa.OSFile(str(path)) as probe:
            reader = pa.ipc.open_file(probe)
            schema = reader.schema
            total = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        try:
            with pa.OSFile(str(path)) as probe:
                schema = pa.ipc.open_stream(probe).schema
        except pa.ArrowInvalid as exc:
            raise SourceError(f"{path}: not an Arrow IPC file or stream: {exc}") from None

        def stream_batches() -> Iterator[pa.RecordBatch]:
            with pa.OSFile(str(path)) as handle:  # read, not mapped: memory stays bounded
                yield from _rebatch(pa.ipc.open_stream(handle), batch_size)

        return Source(str(path), schema, None, "arrow", stream_batches)

    def file_batches() -> Iterator[pa.RecordBatch]:
        with pa.OSFile(str(path)) as handle:
            reader = pa.ipc.open_file(handle)
            yield from _rebatch((reader.get_batch(i) for i in range(reader.num_record_batches)), batch_size)

    return Source(str(path), schema, total, "arrow", file_batches)


def _open_duckdb(path: Path | str, batch_size: int, kind: str, *, name: str | None = None) -> Source:
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = true")
    target = str(path)
    if isinstance(path, Path) and path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
                       and detect_format(p) == kind)
        target = files  # type: ignore[assignment]
    try:
        relation = con.read_csv(target) if kind == "csv" else \
            con.read_json(target, format="newline_delimited")
        schema = relation.limit(0).to_arrow_table().schema
    except duckdb.Error as exc:
        con.close()
        raise SourceError(f"{name or path}: cannot read as {'CSV' if kind == 'csv' else 'JSON Lines'}: "
                         f"{str(exc).splitlines()[0]}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from _rebatch(relation.to_arrow_reader(batch_size), batch_size)
        except duckdb.Error as exc:
            raise SourceError(f"{name or path}: {str(exc).splitlines()[0]}") from None

    return Source(name or str(path), schema, None, kind, batches, con.close)


def _open_npy(path: Path, batch_size: int, vector_column: str) -> Source:
    array = np.load(path, mmap_mode="r")
    if array.ndim != 2:
        raise SourceError(f"{path}: a .npy source must be a 2-D array of vectors, got shape {array.shape}")
    return _numpy_source(str(path), array, batch_size, vector_column)


def _open_stdin(batch_size: int, kind: str) -> Source:
    if kind in ("csv", "jsonl"):
        return _open_duckdb("/dev/stdin", batch_size, kind, name="<stdin>")
    if kind != "arrow":
        raise SourceError(f"standard input can be an Arrow IPC stream, CSV or JSON Lines, not {kind!r}")
    try:
        reader = pa.ipc.open_stream(sys.stdin.buffer)
    except pa.ArrowInvalid as exc:
        raise SourceError(f"<stdin>: not an Arrow IPC stream ({exc}); for CSV or JSON Lines "
                         "pass format='csv' / 'jsonl' (CLI: --source-format)") from None
    return Source("<stdin>", reader.schema, None, "arrow", lambda: _rebatch(reader, batch_size))


# ------------------------------------------------------------- in-memory data
def _numpy_source(name: str, array: np.ndarray, batch_size: int, vector_column: str) -> Source:
    dim = array.shape[1]
    schema = pa.schema([pa.field(vector_column, pa.list_(pa.float32(), dim))])

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, array.shape[0], batch_size):
            yield to_arrow_table(np.asarray(array[start:start + batch_size]), vector_column).to_batches()[0]

    return Source(name, schema, int(array.shape[0]), "numpy", batches)


def _open_object(src: Any, batch_size: int, vector_column: str) -> Source:
    kind = type(src).__name__
    module = type(src).__module__.split(".")[0]
    if isinstance(src, np.ndarray):
        if src.ndim != 2:
            raise SourceError(f"a NumPy source must be a 2-D array of vectors, got shape {src.shape}")
        return _numpy_source("numpy array", src, batch_size, vector_column)
    if isinstance(src, pa.RecordBatchReader):
        return Source(kind, src.schema, None, "arrow", lambda: _rebatch(src, batch_size))
    if isinstance(src, (pa.Table, pa.RecordBatch)):
        table = pa.Table.from_batches([src]) if isinstance(src, pa.RecordBatch) else src
        return Source(kind, table.schema, table.num_rows, "arrow",
                      lambda: _rebatch(table.to_batches(max_chunksize=batch_size), batch_size))
    if module == "pyarrow" and hasattr(src, "to_batches") and hasattr(src, "count_rows"):  # a dataset
        return Source(kind, src.schema, src.count_rows(), "arrow",
                      lambda: _rebatch(src.to_batches(batch_size=batch_size, batch_readahead=2,
                                                      fragment_readahead=1), batch_size))
    if module == "pandas" and hasattr(src, "columns"):
        return _pandas_source(src, batch_size, vector_column)
    if module == "polars":
        return _polars_source(src, batch_size, vector_column)
    if module == "duckdb" and hasattr(src, "to_arrow_reader"):
        schema = src.limit(0).to_arrow_table().schema
        return Source("duckdb relation", schema, None, "duckdb",
                      lambda: _rebatch(src.to_arrow_reader(batch_size), batch_size))
    if hasattr(src, "snapshot") and hasattr(src, "vector_column"):  # an omendb table
        from ..table.export import snapshot_batches

        snapshot = src.snapshot()
        return Source(f"table {src.name!r}", snapshot.schema, snapshot.rows, "omendb",
                      lambda: snapshot_batches(snapshot, batch_size))
    table = to_arrow_table(src, vector_column)  # list of dicts, dict of columns, ...
    return Source(kind, table.schema, table.num_rows, "python",
                  lambda: _rebatch(table.to_batches(max_chunksize=batch_size), batch_size))


def _pandas_source(frame: Any, batch_size: int, vector_column: str) -> Source:
    schema = to_arrow_table(frame.iloc[:1], vector_column).schema

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(frame), batch_size):
            yield from to_arrow_table(frame.iloc[start:start + batch_size], vector_column).to_batches()

    return Source("pandas DataFrame", schema, len(frame), "pandas", lambda: _rebatch(batches(), batch_size))


def _polars_source(frame: Any, batch_size: int, vector_column: str) -> Source:
    if hasattr(frame, "collect") and not hasattr(frame, "to_arrow"):  # a LazyFrame: stream it
        schema = frame.head(0).collect().to_arrow().schema

        def lazy_batches() -> Iterator[pa.RecordBatch]:
            if hasattr(frame, "collect_batches"):
                chunks: Iterable[Any] = frame.collect_batches(chunk_size=batch_size, lazy=True)
            else:  # older polars: collect with the streaming engine, then slice
                chunks = frame.collect(engine="streaming").iter_slices(batch_size)
            for chunk in chunks:
                yield from chunk.to_arrow().to_batches()

        return Source("polars LazyFrame", schema, None, "polars", lambda: _rebatch(lazy_batches(), batch_size))
    schema = frame.head(0).to_arrow().schema

    def batches() -> Iterator[pa.RecordBatch]:
        for chunk in frame.iter_slices(batch_size):
            yield from chunk.to_arrow().to_batches()

    return Source("polars DataFrame", schema, frame.height, "polars", lambda: _rebatch(batches(), batch_size))


def _rebatch(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``batch_size`` rows (the last may be shorter), never empty.

    Small input batches (row-group ends, CSV chunks) are gathered so each ingest
    commit carries a full batch; large ones are sliced without copying.
    """
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None or batch.num_rows == 0:
            continue
        offset = 0
        while offset < batch.num_rows:
            take = min(batch_size - pending_rows, batch.num_rows - offset)
            pending.append(batch.slice(offset, take))
            pending_rows += take
            offset += take
            if pending_rows == batch_size:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending_rows:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    schema = batches[0].schema
    return pa.concat_batches([b if b.schema == schema else b.cast(schema) for b in batches])
