"""``where`` predicates: SQL over a part's metadata columns, evaluated by DuckDB."""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections import OrderedDict
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import FilterError

__all__ = ["filter_mask", "validate_predicate", "MaskCache"]

_ROW = "__omendb_row"


class _ConnectionPool:
    """Cursors of one private DuckDB database, lent to one predicate at a time.

    Not thread-local on purpose: a DuckDB connection freed when its thread ends
    aborts the process if that thread is a daemon ending during interpreter exit
    (the destructor releases the GIL and cannot take it back), and every DuckDB
    database starts threads of its own. The pool is closed at exit instead; a
    predicate evaluated after that gets a connection of its own, closed after use.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._database: duckdb.DuckDBPyConnection | None = None
        self._idle: list[duckdb.DuckDBPyConnection] = []
        self._closed = False

    @staticmethod
    def _new_database() -> duckdb.DuckDBPyConnection:
        # No file access: a predicate can only read the rows it is given.
        return duckdb.connect(":memory:", config={"threads": 1, "enable_external_access": False})

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self._closed:
                con = None
            elif self._idle:
                con = self._idle.pop()
            else:
                if self._database is None:
                    self._database = self._new_database()
                con = self._database.cursor()
        if con is None:
            with contextlib.closing(self._new_database()) as own:
                yield own
            return
        try:
            yield con
        finally:
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(con)
            if not keep:
                con.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            database, self._database = self._database, None
        for con in idle:
            con.close()
        if database is not None:
            database.close()


_pool = _ConnectionPool()
atexit.register(_pool.close)


def validate_predicate(where: str) -> str:
    """Check that ``where`` parses as exactly one SQL expression (no statements, no escapes)."""
    if not isinstance(where, str) or not where.strip():
        raise FilterError("where must be a non-empty SQL predicate string")
    try:
        duckdb.SQLExpression(where)
    except duckdb.Error as exc:
        raise FilterError(f"invalid where predicate {where!r}: {str(exc).splitlines()[0]}") from None
    return where


def filter_mask(table: pa.Table, where: str) -> np.ndarray:
    """Boolean mask of the rows of ``table`` for which ``where`` is true (NULL is false)."""
    validate_predicate(where)
    numbered = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    with _pool.connection() as con:
        con.register("t", numbered)
        try:
            # The newline ends a trailing "--" comment; the predicate parsed as one expression.
            rows = con.execute(f"SELECT {_ROW} FROM t WHERE ({where}\n)").fetchnumpy()[_ROW]
        except duckdb.Error as exc:
            message = str(exc).splitlines()[0]
            raise FilterError(f"invalid where predicate {where!r}: {message}") from None
        finally:
            con.unregister("t")
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


class MaskCache:
    """A small LRU of filter masks of immutable segments, keyed by (segment, predicate)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            mask = self._entries.get(key)
            if mask is not None:
                self._entries.move_to_end(key)
            return mask

    def put(self, key: tuple[str, str], mask: np.ndarray) -> None:
        mask.setflags(write=False)  # shared between searches
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = mask
            self._bytes += mask.nbytes
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
