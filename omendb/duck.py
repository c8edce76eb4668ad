"""omendb inside DuckDB: ``omen_knn`` and ``omen_scan`` table macros.

DuckDB has no Python table functions, so kNN is a vectorised Arrow scalar UDF,
``omen_knn_rows(table, query, k, filter, ef, exact)``, returning for each query row a
``LIST<STRUCT(_omen_row, _distance, _rank)>``; the ``omen_knn`` macro (``sql/omendb.sql``)
unnests it and joins the row numbers back to the table's registered Arrow view. A query
over N rows of queries reaches the UDF as chunks of up to 2,048 rows, each answered by
one batched search.

A connection sees each table as of the moment it was registered (one consistent
snapshot per table); ``Database.sql`` re-registers tables that changed before every
statement, and ``duckdb_connect(db, con)`` can be called again to refresh a connection.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .blas import one_blas_thread
from .errors import DimensionError, InvalidVectorError, TableNotFoundError
from .query.snapshot import ROW_NUMBER, Snapshot

__all__ = ["duckdb_connect", "SqlSession", "definitions_sql"]

_UDF = "omen_knn_rows"
_RESULT = pa.struct([(ROW_NUMBER, pa.int64()), ("_distance", pa.float32()), ("_rank", pa.int32())])


def _view_name(table: str) -> str:
    return f"omen_scan__{table}"


def definitions_sql() -> str:
    """The SQL that defines omendb's macros (``sql/omendb.sql``, shipped as package data)."""
    return resources.files("omendb.sql").joinpath("omendb.sql").read_text()


class SqlSession:
    """The snapshots registered on one DuckDB connection, and the UDF answering from them."""

    def __init__(self, db: Any, con: duckdb.DuckDBPyConnection) -> None:
        self.db = db
        self.con = con
        self._snapshots: dict[str, Snapshot] = {}
        self._tokens: dict[str, tuple] = {}
        self._lock = threading.Lock()
        for name in (_UDF, "omen_vector"):
            try:
                con.remove_function(name)
            except (duckdb.InvalidInputException, duckdb.CatalogException):
                pass
        con.create_function("omen_vector", _blob_vectors, [duckdb.sqltype("BLOB")], duckdb.sqltype("FLOAT[]"),
                            type="arrow", side_effects=False)
        con.create_function(_UDF, self._knn_rows,
                            [duckdb.sqltype("VARCHAR"), duckdb.sqltype("FLOAT[]"), duckdb.sqltype("BIGINT"),
                             duckdb.sqltype("VARCHAR"), duckdb.sqltype("BIGINT"), duckdb.sqltype("BOOLEAN")],
                            duckdb.sqltype(f"STRUCT({ROW_NUMBER} BIGINT, _distance FLOAT, _rank INTEGER)[]"),
                            type="arrow", null_handling="special", exception_handling="default",
                            side_effects=False)
        con.execute(definitions_sql())
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Re-register every table whose rows changed since it was last registered."""
        names = set(self.db.table_names())
        with self._lock:
            for gone in set(self._snapshots) - names:
                self.con.unregister(_view_name(gone))
                del self._snapshots[gone], self._tokens[gone]
            for name in sorted(names):
                table = self.db.open_table(name)
                token = table._state_token()
                if not force and self._tokens.get(name) == token:
                    continue
                snapshot = table.snapshot()
                self.con.register(_view_name(name), snapshot.to_arrow(row_numbers=True))
                self._snapshots[name], self._tokens[name] = snapshot, token

    # ------------------------------------------------------------------ the UDF
    def _knn_rows(self, tables: pa.ChunkedArray, queries: pa.ChunkedArray, ks: pa.ChunkedArray,
                  filters: pa.ChunkedArray, efs: pa.ChunkedArray, exacts: pa.ChunkedArray) -> pa.Array:
        columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                   for c in (tables, queries, ks, filters, efs, exacts)]
        tables, queries, ks, filters, efs, exacts = columns
        n = len(tables)
        keys = list(zip(tables.to_pylist(), ks.to_pylist(), filters.to_pylist(), efs.to_pylist(),
                        exacts.to_pylist()))
        results: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * n
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        with one_blas_thread():  # DuckDB runs UDFs on its own threads
            for (table, k, where, ef, exact), rows in groups.items():
                rows_with_query = [r for r in rows if queries[r].is_valid]
                if not rows_with_query:
                    continue
                snapshot = self._snapshot(table)
                if k is None or k < 1:
                    raise ValueError(f"omen_knn: k must be a positive integer, got {k!r}")
                matrix = _query_matrix(queries, rows_with_query, snapshot)
                query_ids, row_numbers, distances = snapshot.knn_rows(
                    matrix, int(k), where=where, ef=None if ef is None else int(ef), exact=bool(exact))
                bounds = np.searchsorted(query_ids, np.arange(len(rows_with_query) + 1))
                for i, row in enumerate(rows_with_query):
                    results[row] = (row_numbers[bounds[i]:bounds[i + 1]], distances[bounds[i]:bounds[i + 1]])
        lengths = np.fromiter((r[0].size for r in results), dtype=np.int32, count=n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        rows_all = np.concatenate([r[0] for r in results]) if n else np.zeros(0, np.int64)
        dist_all = np.concatenate([r[1] for r in results]) if n else np.zeros(0, np.float32)
        ranks = np.arange(offsets[-1], dtype=np.int32) - np.repeat(offsets[:-1], lengths)
        values = pa.StructArray.from_arrays([pa.array(rows_all), pa.array(dist_all), pa.array(ranks)],
                                            fields=list(_RESULT))
        return pa.ListArray.from_arrays(pa.array(offsets), values)

    def _snapshot(self, table: str | None) -> Snapshot:
        snapshot = self._snapshots.get(table)
        if snapshot is None:
            known = ", ".join(sorted(self._snapshots)) or "none"
            raise TableNotFoundError(f"omen_knn: table {table!r} does not exist (tables: {known})")
        return snapshot


def _query_matrix(queries: pa.ListArray, rows: list[int], snapshot: Snapshot) -> np.ndarray:
    """The (Q, dim) float32 matrix of the query vectors of ``rows``."""
    taken = queries.take(pa.array(rows))
    lengths = pc.list_value_length(taken).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != snapshot.dim)
    if wrong.size:
        raise DimensionError(f"omen_knn: query has {int(lengths[wrong[0]])} components; table "
                             f"{snapshot.name!r} has dim {snapshot.dim}")
    values = taken.flatten()
    if values.null_count:
        raise InvalidVectorError("omen_knn: query contains a NULL component")
    matrix = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(rows), snapshot.dim)
    if not np.isfinite(matrix).all():
        raise InvalidVectorError("omen_knn: query contains NaN or infinity")
    return matrix


def _blob_vectors(blobs: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``omen_vector(BLOB)``: little-endian float32 bytes to ``FLOAT[]``."""
    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks()
    vectors = []
    for raw in blobs.to_pylist():
        if raw is not None and len(raw) % 4:
            raise InvalidVectorError(f"omen_vector: a BLOB vector must hold float32 values, got {len(raw)} bytes")
        vectors.append(None if raw is None else np.frombuffer(raw, dtype="<f4"))
    return pa.array(vectors, type=pa.list_(pa.float32()))


def duckdb_connect(db: Any, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """Register omendb's SQL functions on ``con`` (or a new in-memory connection) and return it.

    ``omen_knn(table, query, k, filter := NULL, ef := NULL, exact := false)`` and
    ``omen_scan(table)`` then work in any query. The connection sees the tables as
    they are now; call ``duckdb_connect(db, con)`` again to see later writes
    (``db.sql(...)`` does this automatically).
    """
    con = duckdb.connect() if con is None else con
    SqlSession(db, con)
    return con

