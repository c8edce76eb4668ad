"""``where`` predicates: SQL over a part's metadata columns, evaluated by DuckDB."""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections import OrderedDict
from typing import Any, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import FilterError

__all__ = ["filter_mask", "validate_predicate", "check_bounded_predicate", "BOUNDED_FUNCTIONS", "MaskCache",
           "unfilterable_columns"]


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
        self._returned = threading.Condition(self._lock)
        self._database: duckdb.DuckDBPyConnection | None = None
        self._idle: list[duckdb.DuckDBPyConnection] = []
        self._lent = 0  # cursors in use
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
            if con is not None:
                self._lent += 1
        if con is None:
            with contextlib.closing(self._new_database()) as own:
                yield own
            return
        try:
            yield con
        finally:
            with self._lock:
                self._lent -= 1
                keep = not self._closed
                if keep:
                    self._idle.append(con)
                self._returned.notify_all()
            if not keep:
                con.close()

    def close(self, wait: float = 10.0) -> None:
        """Close every cursor and the database, once the cursors lent out are back (a
        thread may still be filtering at exit: DuckDB refuses to close a busy database).
        After ``wait`` seconds the database is left open for the process's end to free."""
        with self._lock:
            self._closed = True
            back = self._returned.wait_for(lambda: self._lent == 0, timeout=wait)
            idle, self._idle = self._idle, []
            database, self._database = self._database, None
        for con in idle:
            con.close()
        if database is not None and back:
            database.close()


_pool = _ConnectionPool()
atexit.register(_pool.close)


def validate_predicate(where: str) -> str:
    """Check that ``where`` parses as exactly one SQL expression (no statements, no escapes)."""
    if not isinstance(where, str) or not where.strip():
        raise FilterError("where must be a non-empty SQL predicate string")
    try:
        where.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"where predicate {where!r} is not valid Unicode text (a lone surrogate)") from None
    try:
        duckdb.SQLExpression(where)
    except duckdb.Error as exc:
        raise FilterError(f"invalid where predicate {where!r}: {str(exc).splitlines()[0]}") from None
    return where


def unfilterable_columns(schema: pa.Schema) -> list[str]:
    """Columns of ``schema`` DuckDB cannot read (``where``, SQL), e.g. float16 or decimal256."""
    bad = []
    with _pool.connection() as con:
        try:  # (usually every column is readable: one look at them all)
            con.register("t", pa.table({f"c{i}": pa.array([], f.type) for i, f in enumerate(schema)}))
            con.execute("SELECT * FROM t").fetchall()
            return []
        except duckdb.Error:
            pass
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("t")
        for field in schema:
            try:
                con.register("t", pa.table({"c": pa.array([], field.type)}))
                con.execute("SELECT c IS NULL FROM t").fetchall()
            except duckdb.Error:
                bad.append(field.name)
            finally:
                with contextlib.suppress(duckdb.Error):
                    con.unregister("t")
    return bad


def filter_mask(table: pa.Table, where: str) -> np.ndarray:
    """Boolean mask of the rows of ``table`` for which ``where`` is true (NULL is false).

    The predicate sees the table's columns and nothing else. It is evaluated once per
    row in the select list; the ``WHERE`` clause that repeats it is always true (the
    optimizer drops it) and is there so that DuckDB refuses aggregates and window
    functions, as in any ``WHERE``. The newlines end a trailing ``--`` comment; the
    predicate parsed as one expression.
    """
    validate_predicate(where)
    with _pool.connection() as con:
        try:
            con.register("t", table)
            result = con.execute(f"SELECT COALESCE(CAST(({where}\n) AS BOOLEAN), false) AS m FROM t "
                                 f"WHERE (({where}\n) IS NULL OR true)").fetchnumpy()["m"]
        except duckdb.Error as exc:
            message = str(exc).splitlines()[0]
            raise FilterError(f"invalid where predicate {where!r}: {message}") from None
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("t")
    mask = np.asarray(result, dtype=bool)
    if mask.shape != (table.num_rows,):  # (cannot happen: one value per row)
        raise FilterError(f"where predicate {where!r} did not give one value per row")
    return mask


#: Functions a ``where`` may call where predicates come from untrusted clients (the
#: server): comparisons, arithmetic, text matching, dates, lists and structs. Each one's
#: output is at most the size of its inputs (the row's values and the predicate's own
#: constants) and its work at most their product, so a predicate costs at most its
#: length (<= MAX_BOUNDED_PREDICATE) times the row's size. Left out:
#: functions that make values of a size they are told (``range``, ``repeat``, ``lpad``),
#: whose output multiplies their inputs (``replace``, ``regexp_replace``, lambdas over
#: lists), or whose work does (``levenshtein`` and the other edit distances).
BOUNDED_FUNCTIONS = frozenset("""
+ - * / // % ** ^ & | << >> ~ ! || ~~ !~~ ~~* !~~* ~~~ !~~~ ^@ @> <@ && list_value row struct_pack
abs sign round floor ceil ceiling trunc sqrt cbrt ln log log2 log10 exp pow power least greatest
isnan isinf isfinite even gcd lcm mod divide add subtract multiply
coalesce ifnull nullif if
lower upper lcase ucase length len strlen char_length character_length octet_length bit_length
starts_with ends_with prefix suffix contains strpos instr position substring substr left right
trim ltrim rtrim reverse concat concat_ws like_escape ilike_escape not_like_escape not_ilike_escape
glob regexp_matches regexp_full_match regexp_extract split_part string_split str_split ascii
unicode ord chr md5 sha256 hash hamming
year month day hour minute second millisecond microsecond week weekday dayofweek dayofyear
dayofmonth quarter era epoch epoch_ms epoch_us epoch_ns date_part datepart date_trunc datetrunc
date_diff datediff date_sub datesub date_add strftime strptime to_timestamp make_date
make_timestamp make_time last_day dayname monthname today current_date now current_timestamp
get_current_timestamp age to_days to_hours to_minutes to_seconds to_milliseconds
list_contains list_has array_contains array_has list_has_any array_has_any list_has_all
array_has_all list_position list_indexof array_position array_indexof list_extract list_element
array_extract array_length list_count list_sum list_min list_max list_avg list_any_value
list_bool_and list_bool_or list_distinct list_unique list_sort list_reverse_sort array_sort
list_slice array_slice struct_extract struct_extract_at map_extract element_at cardinality
map_keys map_values map_contains
json_extract json_extract_string json_extract_path json_extract_path_text json_contains json_exists json_type
json_array_length json_valid -> ->>
""".split())


#: The longest predicate :func:`check_bounded_predicate` accepts.
MAX_BOUNDED_PREDICATE = 4_096


def check_bounded_predicate(where: str) -> str:
    """Refuse a ``where`` whose cost is not bounded by the data it reads.

    For predicates from untrusted clients: no subqueries, and only
    :data:`BOUNDED_FUNCTIONS`. Raises :class:`FilterError` naming what is refused.
    """
    validate_predicate(where)
    if len(where) > MAX_BOUNDED_PREDICATE:
        raise FilterError(f"where predicate of {len(where):,} characters: at most {MAX_BOUNDED_PREDICATE:,} "
                          "are accepted here")
    functions, subquery, lambdas = _predicate_parts(where)
    if subquery:
        raise FilterError(f"where predicate {where!r}: subqueries are not allowed here")
    if lambdas:
        raise FilterError(f"where predicate {where!r}: lambda functions are not allowed here (their output "
                          "can grow with every list they map)")
    refused = sorted(functions - BOUNDED_FUNCTIONS)
    if refused:
        raise FilterError(f"where predicate {where!r}: function(s) {', '.join(refused)} are not allowed here "
                          "(the server accepts functions whose cost is bounded by the rows they read; "
                          "see BOUNDED_FUNCTIONS)")
    return where


def _predicate_parts(where: str) -> tuple[set[str], bool, bool]:
    """(names of the functions ``where`` calls, whether it holds a subquery, whether a
    lambda), from DuckDB's parse tree."""
    with _pool.connection() as con:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [f"SELECT ({where}\n)"]).fetchall()[0][0])
    if tree.get("error"):
        raise FilterError(f"invalid where predicate {where!r}: {tree.get('error_message')}")
    functions: set[str] = set()
    subquery = lambdas = False
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            subquery |= node.get("class") == "SUBQUERY"
            lambdas |= node.get("class") == "LAMBDA"
            name = node.get("function_name")
            if isinstance(name, str):
                functions.add(name.lower())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return functions, subquery, lambdas


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
