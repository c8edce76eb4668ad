"""``where`` predicates: SQL over a part's metadata columns, evaluated by DuckDB."""

from __future__ import annotations

import threading

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import FilterError

__all__ = ["filter_mask", "validate_predicate"]

_ROW = "__omendb_row"
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        # No file access: a predicate can only read the rows it is given.
        con = duckdb.connect(":memory:", config={"threads": 1, "enable_external_access": False})
        _local.con = con
    return con


def validate_predicate(where: str) -> str:
    """Reject what cannot be a single predicate before it is run."""
    if not isinstance(where, str) or not where.strip():
        raise FilterError("where must be a non-empty SQL predicate string")
    try:
        statements = _connection().extract_statements(f"SELECT 1 WHERE ({where})")
    except duckdb.Error as exc:
        raise FilterError(f"invalid where predicate {where!r}: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise FilterError(f"where must be one SQL predicate, not several statements: {where!r}")
    return where


def filter_mask(table: pa.Table, where: str) -> np.ndarray:
    """Boolean mask of the rows of ``table`` for which ``where`` is true (NULL is false)."""
    validate_predicate(where)
    numbered = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    con = _connection()
    con.register("t", numbered)
    try:
        rows = con.execute(f"SELECT {_ROW} FROM t WHERE ({where})").fetchnumpy()[_ROW]
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise FilterError(f"invalid where predicate {where!r}: {message}") from exc
    finally:
        con.unregister("t")
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask
