"""omendb inside DuckDB: ``omen_knn`` and ``omen_scan`` table macros.

DuckDB has no Python table functions, so kNN is a vectorised Arrow scalar UDF,
``omen_knn_rows(table, query, k, filter, ef, exact)``, returning for each query row the
hit rows themselves: a ``STRUCT`` with one field per table, each a ``LIST`` of
``STRUCT``s of that table's columns plus ``_distance`` and ``_rank`` (only the queried
table's field is filled). The ``omen_knn`` macro (``sql/omendb.sql``) picks the field
named by its table argument with ``struct_extract`` and unnests it: the table name is a
constant, so DuckDB knows the result's columns when it binds the query, and no join
back to the table is needed (that join cost more than the search itself). A query over N rows of queries reaches the UDF as chunks of up to
2,048 rows, each answered by one batched search.

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

from ..errors import DimensionError, InvalidArgumentError, InvalidVectorError, OmenError, TableNotFoundError
from ..index.blas import one_blas_thread
from ..query.snapshot import ROW_NUMBER, Snapshot

__all__ = ["duckdb_connect", "SqlSession", "SqlError", "definitions_sql"]


class SqlError(OmenError, duckdb.Error):
    """A statement of ``db.sql()`` that DuckDB refused; the message is DuckDB's.

    It is also a ``duckdb.Error``, so code that catches DuckDB's errors keeps working.
    """

_UDF = "omen_knn_rows"
_UDF_ARGS = ["VARCHAR", "FLOAT[]", "BIGINT", "VARCHAR", "BIGINT", "BOOLEAN"]
_EXTRA = [pa.field("_distance", pa.float32()), pa.field("_rank", pa.int32())]
_EXTRA_SQL = '"_distance" FLOAT, "_rank" INTEGER'
#: The field standing for "no tables" (a name no table can have).
_NO_TABLES = "omen_knn: no tables"


def _view_name(table: str) -> str:
    return f"omen_scan__{table}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def definitions_sql() -> str:
    """The SQL that defines omendb's macros (``sql/omendb.sql``, shipped as package data)."""
    return resources.files("omendb.sql").joinpath("omendb.sql").read_text()


class SqlSession:
    """The snapshots registered on one DuckDB connection, and the UDF answering from them."""

    def __init__(self, db: Any, con: duckdb.DuckDBPyConnection) -> None:
        self.db = db
        self.con = con
        # per table: the snapshot searched and its rows as registered (with _omen_row), swapped as one
        self._registered: dict[str, tuple[Snapshot, pa.Table]] = {}
        self._tokens: dict[str, tuple] = {}
        self._hit_types: dict[str, tuple[pa.Schema, str]] = {}  # table -> (schema, DuckDB struct type of a hit)
        self._layout: list[tuple[str, pa.StructType, str]] = []  # (table, Arrow struct, SQL struct) per field
        self._lock = threading.Lock()
        for name in (_UDF, "omen_vector"):
            try:
                con.remove_function(name)
            except (duckdb.InvalidInputException, duckdb.CatalogException):
                pass
        con.create_function("omen_vector", _blob_vectors, [duckdb.sqltype("BLOB")], duckdb.sqltype("FLOAT[]"),
                            type="arrow", side_effects=False)
        self.refresh(force=True)
        con.execute(definitions_sql())

    @classmethod
    def for_database(cls, db: Any) -> "SqlSession":
        """The session ``db.sql()`` runs statements in: its own in-memory DuckDB connection."""
        return cls(db, duckdb.connect())

    def run(self, query: str, params: Any = None) -> Any:
        """``query`` as a DuckDB relation, after re-registering the tables that changed."""
        self.refresh()
        try:
            return self.con.sql(query, params=params)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc

    def close(self) -> None:
        self.con.close()

    def refresh(self, force: bool = False) -> None:
        """Re-register every table whose rows changed since it was last registered."""
        names = set(self.db.table_names())
        with self._lock:
            for gone in set(self._registered) - names:
                self.con.unregister(_view_name(gone))
                del self._registered[gone], self._tokens[gone]
            for name in sorted(names):
                table = self.db.open_table(name)
                token = table.state_token()
                if not force and self._tokens.get(name) == token:
                    continue
                snapshot = table.snapshot()
                view = snapshot.to_arrow(row_numbers=True)
                self.con.register(_view_name(name), view)
                self._registered[name], self._tokens[name] = (snapshot, view), token
                if self._hit_types.get(name, (None,))[0] != snapshot.schema:
                    self._hit_types[name] = (snapshot.schema, self._struct_sql(name))
            for gone in set(self._hit_types) - names:
                del self._hit_types[gone]
            self._register_udf(force)

    def _struct_sql(self, name: str) -> str:
        """DuckDB's type of a hit of table ``name``: its columns as DuckDB reads them, then the extras."""
        described = self.con.execute(f"DESCRIBE SELECT * EXCLUDE ({ROW_NUMBER}) FROM {_view_name(name)}").fetchall()
        return "STRUCT(" + ", ".join(f"{_quoted(column)} {kind}" for column, kind, *_ in described) + \
            f", {_EXTRA_SQL})"

    def _register_udf(self, force: bool) -> None:
        """(Re)create ``omen_knn_rows`` when the tables or their columns changed (lock held)."""
        layout = [(name, pa.struct(list(schema) + _EXTRA), sql) for name, (schema, sql) in
                  sorted(self._hit_types.items())]
        if not layout:
            layout.append((_NO_TABLES, pa.struct(_EXTRA), f"STRUCT({_EXTRA_SQL})"))
        if not force and [(n, q) for n, _, q in layout] == [(n, q) for n, _, q in self._layout]:
            return
        try:
            self.con.remove_function(_UDF)
        except (duckdb.InvalidInputException, duckdb.CatalogException):
            pass
        result = "STRUCT(" + ", ".join(f"{_quoted(name)} {sql}[]" for name, _, sql in layout) + ")"

        def knn_rows(tables, queries, ks, filters, efs, exacts):  # (DuckDB reads the arity)
            # a statement bound to this result layout keeps it, whatever refreshes happen meanwhile
            return self._knn_rows(tables, queries, ks, filters, efs, exacts, layout=layout)

        # side_effects=True: with a constant query DuckDB would otherwise fold the call while
        # binding (db.sql's relation binds once more), searching once more each time
        self.con.create_function(_UDF, knn_rows, [duckdb.sqltype(t) for t in _UDF_ARGS],
                                 duckdb.sqltype(result), type="arrow", null_handling="special",
                                 exception_handling="default", side_effects=True)
        self._layout = layout

    # ------------------------------------------------------------------ the UDF
    def _knn_rows(self, tables: pa.ChunkedArray, queries: pa.ChunkedArray, ks: pa.ChunkedArray,
                  filters: pa.ChunkedArray, efs: pa.ChunkedArray, exacts: pa.ChunkedArray, *,
                  layout: list[tuple[str, pa.StructType, str]]) -> pa.Array:
        columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                   for c in (tables, queries, ks, filters, efs, exacts)]
        tables, queries, ks, filters, efs, exacts = columns
        n = len(tables)
        keys = list(zip(tables.to_pylist(), ks.to_pylist(), filters.to_pylist(), efs.to_pylist(),
                        exacts.to_pylist()))
        field_of = {name: i for i, (name, _, _) in enumerate(layout)}
        # per query row: (its table's field, the rows hits point into, row numbers, distances), nearest first
        found: list[tuple[int, pa.Table, np.ndarray, np.ndarray] | None] = [None] * n
        registered: dict[str, tuple[Snapshot, pa.Table]] = {}  # one snapshot per table for the whole call
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        with one_blas_thread():  # DuckDB runs UDFs on its own threads
            for (table, k, where, ef, exact), rows in groups.items():
                rows_with_query = [r for r in rows if queries[r].is_valid]
                if not rows_with_query:
                    continue
                if table not in registered:
                    registered[table] = self._lookup(table)
                snapshot, view = registered[table]
                if table not in field_of:  # (created after this statement was bound)
                    raise TableNotFoundError(f"omen_knn: table {table!r} is newer than this statement")
                if k is None or k < 1:
                    raise InvalidArgumentError(f"omen_knn: k must be a positive integer, got {k!r}")
                matrix = _query_matrix(queries, rows_with_query, snapshot)
                query_ids, row_numbers, distances = snapshot.knn_rows(
                    matrix, int(k), where=where, ef=None if ef is None else int(ef), exact=bool(exact))
                bounds = np.searchsorted(query_ids, np.arange(len(rows_with_query) + 1))
                for i, row in enumerate(rows_with_query):
                    found[row] = (field_of[table], view, row_numbers[bounds[i]:bounds[i + 1]],
                                  distances[bounds[i]:bounds[i + 1]])
        return _hit_lists(found, layout)

    def _lookup(self, table: str | None) -> tuple[Snapshot, pa.Table]:
        registered = self._registered.get(table)
        if registered is None:
            known = ", ".join(sorted(self._registered)) or "none"
            raise TableNotFoundError(f"omen_knn: table {table!r} does not exist (tables: {known})")
        return registered


def _hit_lists(found: list[tuple[int, pa.Table, np.ndarray, np.ndarray] | None],
               layout: list[tuple[str, pa.StructType, str]]) -> pa.Array:
    """The UDF's result: per query row, a struct with a field per table; the queried table's
    field lists the row's hits, the others are null.

    ``found``: per query row, None or (field, the rows its numbers point into, row numbers,
    distances), nearest first.
    """
    n = len(found)
    by_field: dict[int, list[tuple[int, tuple]]] = {}
    for row, f in enumerate(found):
        if f is not None:
            by_field.setdefault(f[0], []).append((row, f))
    fields = []
    for number, (_, struct, _) in enumerate(layout):
        mine = by_field.get(number)
        if not mine:
            fields.append(pa.nulls(n, pa.list_(struct)))
            continue
        lengths = np.zeros(n, dtype=np.int32)
        for row, f in mine:
            lengths[row] = f[2].size
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        view = mine[0][1][1]  # (one snapshot per table for the whole call)
        taken = view.select(struct.names[:-len(_EXTRA)]).take(pa.array(np.concatenate([f[2] for _, f in mine])))
        ranks = np.concatenate([np.arange(f[2].size, dtype=np.int32) for _, f in mine])
        values = pa.StructArray.from_arrays(
            [column.combine_chunks() for column in taken.columns]
            + [pa.array(np.concatenate([f[3] for _, f in mine]), pa.float32()), pa.array(ranks)],
            fields=list(struct))
        valid = np.zeros(n, dtype=bool)
        valid[[row for row, _ in mine]] = True
        fields.append(pa.ListArray.from_arrays(pa.array(offsets), values,
                                               mask=None if valid.all() else pa.array(~valid)))
    return pa.StructArray.from_arrays(fields, names=[name for name, _, _ in layout])


def _query_matrix(queries: pa.ListArray, rows: list[int], snapshot: Snapshot) -> np.ndarray:
    """The (Q, dim) float32 matrix of the query vectors of ``rows``."""
    taken = queries if len(rows) == len(queries) else queries.take(pa.array(rows))  # (rows ascend)
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

