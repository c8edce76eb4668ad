"""omendb inside DuckDB: ``omen_knn``, ``omen_text``, ``omen_hybrid`` and ``omen_scan`` table macros.

DuckDB has no Python table functions, so kNN is a vectorised Arrow scalar UDF,
``omen_knn_rows(table, query, k, filter, ef, exact)``, returning for each query row the
hit rows themselves: a ``STRUCT`` with one field per table, each a ``LIST`` of
``STRUCT``s of that table's columns plus ``_distance`` and ``_rank`` (only the queried
table's field is filled). The ``omen_knn`` macro (``sql/omendb.sql``) picks the field
named by its table argument with ``struct_extract`` and unnests it: the table name is a
constant, so DuckDB knows the result's columns when it binds the query, and no join
back to the table is needed (that join cost more than the search itself). A query over N rows of queries reaches the UDF as chunks of up to
2,048 rows, each answered by one batched search. ``omen_text_rows`` and
``omen_hybrid_rows`` do the same for text and hybrid searches, with ``_score`` and
``_relevance_score``/``_distance``/``_score`` as their extra fields.

A connection sees each table as of the moment it was registered (one consistent
snapshot per table); ``Database.sql`` re-registers tables that changed before every
statement, and ``duckdb_connect(db, con)`` can be called again to refresh a connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DimensionError, InvalidArgumentError, InvalidVectorError, OmenError, TableNotFoundError
from ..index.blas import one_blas_thread
from ..query.snapshot import ROW_NUMBER, Snapshot
from ..query.text import check_weights

__all__ = ["duckdb_connect", "SqlSession", "SqlError", "SqlRelation", "definitions_sql"]


class SqlError(OmenError, duckdb.Error):
    """A statement of ``db.sql()`` that DuckDB refused; the message is DuckDB's.

    It is also a ``duckdb.Error``, so code that catches DuckDB's errors keeps working.
    """


class SqlRelation:
    """A DuckDB relation (``.fetchall()``, ``.arrow()``, ``.df()``, ``.pl()``, ``.filter()``,
    ...: every method of ``duckdb.DuckDBPyRelation``) whose errors are :class:`SqlError`.

    A relation runs its query when its rows are asked for, so errors of the query itself
    (an empty text query in ``omen_text``, a wrong dimension) come from those calls;
    relations they return are wrapped the same way. ``.relation`` is DuckDB's own.
    """

    __slots__ = ("relation",)

    def __init__(self, relation: duckdb.DuckDBPyRelation) -> None:
        self.relation = relation

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.relation, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = value(*args, **kwargs)
            except duckdb.Error as exc:
                raise SqlError(str(exc)) from exc
            return SqlRelation(result) if isinstance(result, duckdb.DuckDBPyRelation) else result

        return call

    def __len__(self) -> int:
        return len(self.relation)

    def __repr__(self) -> str:
        try:
            return repr(self.relation)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc


@dataclass(frozen=True)
class _Udf:
    """One of the vectorised UDFs behind the macros: for each row of queries, the hit rows
    of the table named, each a struct of the table's columns plus ``extras``."""

    name: str                          # the UDF's SQL name
    macro: str                         # the macro users call (named in errors)
    args: tuple[str, ...]              # DuckDB argument types; the first is the table, the next queries
    queries: int                       # how many arguments after the table hold per-row queries
    extras: tuple[tuple[str, str], ...]  # (name, DuckDB type) of the fields added to each hit, _rank last

    @property
    def extra_fields(self) -> list[pa.Field]:
        return [pa.field(name, _ARROW_OF[kind]) for name, kind in self.extras]

    @property
    def extras_sql(self) -> str:
        return ", ".join(f'"{name}" {kind}' for name, kind in self.extras)


_ARROW_OF = {"FLOAT": pa.float32(), "INTEGER": pa.int32()}
_KNN = _Udf("omen_knn_rows", "omen_knn", ("VARCHAR", "FLOAT[]", "BIGINT", "VARCHAR", "BIGINT", "BOOLEAN"), 1,
            (("_distance", "FLOAT"), ("_rank", "INTEGER")))
_TEXT = _Udf("omen_text_rows", "omen_text", ("VARCHAR", "VARCHAR", "BIGINT", "VARCHAR"), 1,
             (("_score", "FLOAT"), ("_rank", "INTEGER")))
_HYBRID = _Udf("omen_hybrid_rows", "omen_hybrid",
               ("VARCHAR", "FLOAT[]", "VARCHAR", "BIGINT", "VARCHAR", "BIGINT", "BOOLEAN", "DOUBLE", "DOUBLE"), 2,
               (("_relevance_score", "FLOAT"), ("_distance", "FLOAT"), ("_score", "FLOAT"), ("_rank", "INTEGER")))
_UDFS = (_KNN, _TEXT, _HYBRID)
#: The field standing for "no tables" (a name no table can have).
_NO_TABLES = "omen_knn: no tables"

#: Per query row: None, or (its table's field, the rows hits point into, row numbers, the
#: extras but _rank: float arrays, NaN for null), best first.
_Found = tuple[int, pa.Table, np.ndarray, list[np.ndarray]] | None


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
        self._columns_sql: dict[str, tuple[pa.Schema, str]] = {}  # table -> (schema, its columns as DuckDB types)
        self._layouts: dict[str, list[tuple[str, pa.StructType, str]]] = {}  # per UDF: (table, hit struct, SQL)
        self._lock = threading.Lock()
        for name in [udf.name for udf in _UDFS] + ["omen_vector"]:
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
        """``query`` as a DuckDB relation (see :class:`SqlRelation`), after re-registering
        the tables that changed; None for a statement that returns no rows."""
        self.refresh()
        try:
            relation = self.con.sql(query, params=params)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from exc
        return None if relation is None else SqlRelation(relation)

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
                if self._columns_sql.get(name, (None,))[0] != snapshot.schema:
                    self._columns_sql[name] = (snapshot.schema, self._described(name))
            for gone in set(self._columns_sql) - names:
                del self._columns_sql[gone]
            for udf in _UDFS:
                self._register_udf(udf, force)

    def _described(self, name: str) -> str:
        """Table ``name``'s columns as DuckDB reads them: ``"column" TYPE, ...``."""
        described = self.con.execute(f"DESCRIBE SELECT * EXCLUDE ({ROW_NUMBER}) FROM {_view_name(name)}").fetchall()
        return ", ".join(f"{_quoted(column)} {kind}" for column, kind, *_ in described)

    def _register_udf(self, udf: _Udf, force: bool) -> None:
        """(Re)create ``udf`` when the tables or their columns changed (lock held)."""
        layout = [(name, pa.struct(list(schema) + udf.extra_fields), f"STRUCT({columns}, {udf.extras_sql})")
                  for name, (schema, columns) in sorted(self._columns_sql.items())]
        if not layout:
            layout.append((_NO_TABLES, pa.struct(udf.extra_fields), f"STRUCT({udf.extras_sql})"))
        known = self._layouts.get(udf.name, [])
        if not force and [(n, q) for n, _, q in layout] == [(n, q) for n, _, q in known]:
            return
        try:
            self.con.remove_function(udf.name)
        except (duckdb.InvalidInputException, duckdb.CatalogException):
            pass
        result = "STRUCT(" + ", ".join(f"{_quoted(name)} {sql}[]" for name, _, sql in layout) + ")"
        # a statement bound to this result layout keeps it, whatever refreshes happen meanwhile
        answer = _udf_function(udf.args, lambda *columns: self._rows(udf, columns, layout))
        # side_effects=True: with a constant query DuckDB would otherwise fold the call while
        # binding (db.sql's relation binds once more), searching once more each time
        self.con.create_function(udf.name, answer, [duckdb.sqltype(t) for t in udf.args],
                                 duckdb.sqltype(result), type="arrow", null_handling="special",
                                 exception_handling="default", side_effects=True)
        self._layouts[udf.name] = layout

    # ------------------------------------------------------------------ the UDFs
    def _rows(self, udf: _Udf, columns: tuple, layout: list[tuple[str, pa.StructType, str]]) -> pa.Array:
        """Answer one chunk of calls of ``udf``: rows with the same table and options are
        answered together, by one batched search."""
        columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
        queries = columns[1:1 + udf.queries]
        options = [columns[0]] + columns[1 + udf.queries:]  # (table, k, filter, ...)
        keys = list(zip(*(c.to_pylist() for c in options)))
        field_of = {name: i for i, (name, _, _) in enumerate(layout)}
        found: list[_Found] = [None] * len(columns[0])
        registered: dict[str, tuple[Snapshot, pa.Table]] = {}  # one snapshot per table for the whole call
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        with one_blas_thread():  # DuckDB runs UDFs on its own threads
            for key, rows in groups.items():
                rows = [r for r in rows if all(q[r].is_valid for q in queries)]
                if not rows:
                    continue
                table, k = key[0], key[1]
                if table not in registered:
                    registered[table] = self._lookup(table, udf.macro)
                snapshot, view = registered[table]
                if table not in field_of:  # (created after this statement was bound)
                    raise TableNotFoundError(f"{udf.macro}: table {table!r} is newer than this statement")
                if k is None or k < 1:
                    raise InvalidArgumentError(f"{udf.macro}: k must be a positive integer, got {k!r}")
                answers = _ANSWER[udf.name](snapshot, [q if len(rows) == len(q) else q.take(pa.array(rows))
                                                       for q in queries], int(k), *key[2:])
                for row, (numbers, extras) in zip(rows, answers):
                    found[row] = (field_of[table], view, numbers, extras)
        return _hit_lists(found, layout, len(udf.extras))

    def _lookup(self, table: str | None, macro: str) -> tuple[Snapshot, pa.Table]:
        registered = self._registered.get(table)
        if registered is None:
            known = ", ".join(sorted(self._registered)) or "none"
            raise TableNotFoundError(f"{macro}: table {table!r} does not exist (tables: {known})")
        return registered


def _udf_function(args: tuple[str, ...], answer: Callable[..., pa.Array]) -> Callable[..., pa.Array]:
    """``answer(*columns)`` as a function of exactly ``len(args)`` parameters (DuckDB reads
    the arity of the function it is given)."""
    if len(args) == 4:
        return lambda a, b, c, d: answer(a, b, c, d)
    if len(args) == 6:
        return lambda a, b, c, d, e, f: answer(a, b, c, d, e, f)
    if len(args) == 9:
        return lambda a, b, c, d, e, f, g, h, i: answer(a, b, c, d, e, f, g, h, i)
    raise AssertionError(f"no UDF of {len(args)} arguments")


Answers = list[tuple[np.ndarray, list[np.ndarray]]]


def _knn_answers(snapshot: Snapshot, queries: list[pa.ListArray], k: int, where: str | None, ef: int | None,
                 exact: bool | None) -> Answers:
    """Per query vector: (row numbers, [distances]), nearest first."""
    matrix = _query_matrix(queries[0], snapshot, "omen_knn")
    query_ids, row_numbers, distances = snapshot.knn_rows(matrix, k, where=where, ef=None if ef is None else int(ef),
                                                          exact=bool(exact))
    bounds = np.searchsorted(query_ids, np.arange(matrix.shape[0] + 1))
    return [(row_numbers[bounds[i]:bounds[i + 1]], [distances[bounds[i]:bounds[i + 1]]])
            for i in range(matrix.shape[0])]


def _text_answers(snapshot: Snapshot, queries: list[pa.Array], k: int, where: str | None) -> Answers:
    """Per text query: (row numbers, [BM25 scores]), best first."""
    return [(rows, [scores]) for rows, scores in snapshot.text_rows(queries[0].to_pylist(), k, where=where)]


def _hybrid_answers(snapshot: Snapshot, queries: list[pa.Array], k: int, where: str | None, ef: int | None,
                    exact: bool | None, vector_weight: float | None, text_weight: float | None) -> Answers:
    """Per (vector, text) pair: (row numbers, [relevance, distances, scores]), most relevant first."""
    vector_weight = 1.0 if vector_weight is None else vector_weight
    text_weight = 1.0 if text_weight is None else text_weight
    check_weights(vector_weight, text_weight)
    matrix = _query_matrix(queries[0], snapshot, "omen_hybrid")
    fused = snapshot.hybrid_rows(matrix, queries[1].to_pylist(), k, where=where, ef=None if ef is None else int(ef),
                                 exact=bool(exact), vector_weight=vector_weight, text_weight=text_weight)
    return [(rows, [relevance, distances, scores]) for rows, relevance, distances, scores in fused]


_ANSWER = {_KNN.name: _knn_answers, _TEXT.name: _text_answers, _HYBRID.name: _hybrid_answers}


def _hit_lists(found: list[_Found], layout: list[tuple[str, pa.StructType, str]], extras: int) -> pa.Array:
    """A UDF's result: per query row, a struct with a field per table; the queried table's
    field lists the row's hits (its columns, then ``extras`` fields, ``_rank`` last), the
    others are null."""
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
        taken = view.select(struct.names[:-extras]).take(pa.array(np.concatenate([f[2] for _, f in mine])))
        values = [pa.array(np.concatenate([f[3][i] for _, f in mine]), pa.float32(), from_pandas=True)
                  for i in range(extras - 1)]  # (NaN: null)
        ranks = pa.array(np.concatenate([np.arange(f[2].size, dtype=np.int32) for _, f in mine]))
        hits = pa.StructArray.from_arrays([column.combine_chunks() for column in taken.columns] + values + [ranks],
                                          fields=list(struct))
        valid = np.zeros(n, dtype=bool)
        valid[[row for row, _ in mine]] = True
        fields.append(pa.ListArray.from_arrays(pa.array(offsets), hits,
                                               mask=None if valid.all() else pa.array(~valid)))
    return pa.StructArray.from_arrays(fields, names=[name for name, _, _ in layout])


def _query_matrix(taken: pa.ListArray, snapshot: Snapshot, macro: str) -> np.ndarray:
    """The (Q, dim) float32 matrix of the query vectors ``taken``."""
    lengths = pc.list_value_length(taken).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != snapshot.dim)
    if wrong.size:
        raise DimensionError(f"{macro}: query has {int(lengths[wrong[0]])} components; table "
                             f"{snapshot.name!r} has dim {snapshot.dim}")
    values = taken.flatten()
    if values.null_count:
        raise InvalidVectorError(f"{macro}: query contains a NULL component")
    matrix = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(taken), snapshot.dim)
    if not np.isfinite(matrix).all():
        raise InvalidVectorError(f"{macro}: query contains NaN or infinity")
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

    ``omen_knn(table, query, k, filter := NULL, ef := NULL, exact := false)``,
    ``omen_text(table, query, k, filter := NULL)``, ``omen_hybrid(table, q, query, k, ...)``
    and ``omen_scan(table)`` then work in any query. The connection sees the tables as
    they are now; call ``duckdb_connect(db, con)`` again to see later writes
    (``db.sql(...)`` does this automatically).
    """
    con = duckdb.connect() if con is None else con
    SqlSession(db, con)
    return con

