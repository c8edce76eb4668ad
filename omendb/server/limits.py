"""What one request may ask of the server, so that no request's memory or time grows
without bound: a request body is bounded in bytes, and these bound what it expands to."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["MAX_QUERIES", "MAX_RESULT_ROWS", "MAX_COLUMNS", "MAX_EMBEDDED_BYTES", "check_search", "check_columns",
           "check_embedded"]

#: Query vectors in one search request.
MAX_QUERIES = 10_000
#: Rows one search may answer with (queries x k).
MAX_RESULT_ROWS = 1_000_000
#: Columns of a table created over the server.
MAX_COLUMNS = 1_024
#: Bytes of vectors the server's embedding function may make for one request (a few
#: bytes of text become ``4 * dim`` bytes each).
MAX_EMBEDDED_BYTES = 256 << 20


def check_search(shape: tuple[int, ...], k: Any) -> None:
    """Refuse a search of more than :data:`MAX_QUERIES` queries or :data:`MAX_RESULT_ROWS` result rows."""
    queries = shape[0] if len(shape) == 2 else 1
    if queries > MAX_QUERIES:
        raise InvalidArgumentError(f"{queries:,} queries in one request: at most {MAX_QUERIES:,}; split it")
    if isinstance(k, int) and not isinstance(k, bool) and queries * k > MAX_RESULT_ROWS:
        raise InvalidArgumentError(f"{queries:,} queries x k={k:,} asks for more than {MAX_RESULT_ROWS:,} result rows "
                                   "in one request; lower k or split the queries")


def check_columns(count: int) -> None:
    """Refuse a table of more than :data:`MAX_COLUMNS` columns."""
    if count > MAX_COLUMNS:
        raise InvalidArgumentError(f"a table of {count:,} columns: the server creates tables of at most "
                                   f"{MAX_COLUMNS:,}")


def check_embedded(texts: int, table: Any) -> None:
    """Refuse a request whose ``texts`` the server would embed into more than
    :data:`MAX_EMBEDDED_BYTES` of vectors (nothing to check for a table without an
    embedding function)."""
    if table.embedding is None:
        return
    size = texts * table.dim * 4
    if size > MAX_EMBEDDED_BYTES:
        raise InvalidArgumentError(f"{texts:,} texts embedded into {table.dim:,}-component vectors make "
                                   f"{size / 2**20:,.0f} MiB in one request: at most {MAX_EMBEDDED_BYTES >> 20} MiB; "
                                   "split it")
