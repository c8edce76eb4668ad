"""What one request may ask of the server, so that no request's memory or time grows
without bound: a request body is bounded in bytes, and these bound what it expands to."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["MAX_QUERIES", "MAX_RESULT_ROWS", "MAX_COLUMNS", "check_search", "check_columns"]

#: Query vectors in one search request.
MAX_QUERIES = 10_000
#: Rows one search may answer with (queries x k).
MAX_RESULT_ROWS = 1_000_000
#: Columns of a table created over the server.
MAX_COLUMNS = 1_024


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
