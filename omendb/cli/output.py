"""Input and output of the ``omendb`` commands: query files in, results and info out.

Kept apart from the command definitions in ``main.py``: parsing query vectors from
files, stdin or inline JSON, formatting search results as a table, JSON lines, CSV or
Parquet, and describing tables and the environment for ``omendb info``.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa

import omendb

from ..errors import InvalidVectorError

__all__ = ["load_queries", "parse_columns", "write_results", "environment", "table_info", "size_text",
           "json_default", "console", "RESULT_FORMATS", "result_format_of"]

def _json_queries(value: Any, vector_column: str) -> Any:
    if isinstance(value, dict):
        if vector_column not in value:
            raise InvalidVectorError(f"query JSON object has no {vector_column!r} key "
                                     f"(keys: {', '.join(value) or 'none'})")
        return value[vector_column]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_json_queries(v, vector_column) for v in value]
    return value


def load_queries(spec: str, vector_column: str = "vector") -> np.ndarray:
    """Query vectors from ``spec``: a file (.npy, .json, .jsonl, or a table file with a
    vector column: .parquet, .arrow, .lance, .csv), ``-`` (JSON on stdin) or an inline
    JSON array. Returns a 1-D array (one query) or a 2-D array (one per row)."""
    text = spec.strip()
    if spec == "-":
        value = _json_queries(json.loads(sys.stdin.read() or "null"), vector_column)
    elif text.startswith("["):
        value = json.loads(text)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(2, "no such query file", str(path))
        suffix = path.suffix.lower()
        if suffix == ".npy":
            value = np.load(path)
        elif suffix == ".json":
            value = _json_queries(json.loads(path.read_text()), vector_column)
        elif suffix in (".jsonl", ".ndjson"):
            value = [_json_queries(json.loads(line), vector_column)
                     for line in path.read_text().splitlines() if line.strip()]
        else:
            from ..convert import to_vector_array
            from ..io.sources import open_source

            with open_source(path, vector_column=vector_column) as source:
                batches = list(source)
            if not batches:
                raise InvalidVectorError(f"{path}: holds no query rows")
            column = pa.Table.from_batches(batches).column(vector_column)
            vectors = to_vector_array(column, None, vector_column)
            value = np.asarray(vectors.values.to_numpy(zero_copy_only=False)).reshape(len(vectors), -1)
    if value is None:
        raise InvalidVectorError("no query given (empty input)")
    try:
        queries = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"queries must be a list of numbers or a list of lists of numbers: {exc}") from None
    if queries.ndim not in (1, 2) or queries.size == 0:
        raise InvalidVectorError(f"queries must be one vector or a list of vectors, got shape {queries.shape}")
    return queries


def parse_columns(columns: str | None, table: omendb.Table) -> list[str]:
    if columns is None:  # everything but the (long) vectors
        return [n for n in table.schema.names if n != table.vector_column]
    if columns.strip() == "*":
        return list(table.schema.names)
    return [c.strip() for c in columns.split(",") if c.strip()]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value[:3])
        return f"[{shown}{', ...' if len(value) > 3 else ''}] ({len(value)})"
    return str(value)


def _flatten_lists(result: pa.Table) -> pa.Table:
    """List columns as JSON strings, for CSV."""
    for i, field in enumerate(result.schema):
        kind = field.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind) \
                or pa.types.is_struct(kind) or pa.types.is_map(kind):
            text = [None if v is None else json.dumps(v, default=json_default) for v in result.column(i).to_pylist()]
            result = result.set_column(i, field.name, pa.array(text, pa.string()))
    return result


#: Formats ``omendb search`` writes its results in.
RESULT_FORMATS = ("table", "json", "csv", "parquet")


def result_format_of(path: str | None) -> str:
    """The result format a file's suffix names (``table`` for stdout or another suffix)."""
    suffix = "" if path is None else Path(path).suffix.lower()
    return {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}.get(
        suffix, "table")


def write_results(result: pa.Table, output: str, out: str | None) -> None:
    """Write search results as a table, JSON Lines, CSV or Parquet, to ``out`` or stdout."""
    if output == "parquet":
        import pyarrow.parquet as pq

        if out is None and sys.stdout.isatty():
            raise click.UsageError("parquet output is binary: pass -o FILE or redirect standard output")
        pq.write_table(result, out if out is not None else pa.PythonFile(sys.stdout.buffer, mode="w"))
        if out is None:
            sys.stdout.buffer.flush()
        return
    stream = open(out, "w", newline="") if out is not None else sys.stdout
    try:
        if output == "json":
            for row in result.to_pylist():
                stream.write(json.dumps(row, default=json_default) + "\n")
        elif output == "csv":
            import pyarrow.csv as pcsv

            sink = pa.BufferOutputStream()
            pcsv.write_csv(_flatten_lists(result), sink)
            stream.write(sink.getvalue().to_pybytes().decode())
        else:
            from rich.table import Table as RichTable

            view = RichTable(show_lines=False)
            for name in result.column_names:
                view.add_column(name, justify="left" if pa.types.is_string(result.schema.field(name).type)
                                else "right")
            for row in result.to_pylist():
                view.add_row(*(_cell(row[n]) for n in result.column_names))
            console(file=stream).print(view)
        stream.flush()
    finally:
        if stream is not sys.stdout:
            stream.close()


def environment() -> dict[str, Any]:
    import os

    import duckdb

    info: dict[str, Any] = {"omendb": omendb.__version__, "python": platform.python_version(),
                            "pyarrow": pa.__version__, "numpy": np.__version__, "duckdb": duckdb.__version__}
    for module in ("faiss", "lance", "pandas", "polars"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    info["cpus"] = os.cpu_count()
    return info


def table_info(table: omendb.Table, *, detail: bool) -> dict[str, Any]:
    stats = table.stats()
    info = {"table": table.name, "rows": stats["rows"], "dim": stats["dim"], "metric": stats["metric"],
            "format": stats["format"], "segments": stats["segments"], "indexed_segments": stats["indexed_segments"],
            "unindexed_segments": stats["unindexed_segments"], "deleted_rows": stats["deleted_rows"],
            "bytes": stats["bytes"], "version": stats["version"]}
    if detail:
        info.update(id_column=table.id_column, vector_column=table.vector_column,
                    columns={f.name: str(f.type) for f in table.schema}, index=stats["index"],
                    indexed_rows=stats["indexed_rows"], unindexed_rows=stats["unindexed_rows"],
                    versions=len(table.versions()))
    return info


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def console(**kwargs: Any) -> Any:
    """A rich console; wide when writing to a pipe or file, so tables are not squeezed."""
    from rich.console import Console

    stream = kwargs.get("file", sys.stdout)
    if "width" not in kwargs and not stream.isatty():
        kwargs["width"] = 200
    return Console(**kwargs)
