"""omendb inside other frameworks; each module needs its framework (an optional extra)
and is imported only when asked for (``import omendb`` imports none of them)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["store_database"]


def store_database(db: Any, path: str | None) -> Any:
    """The database a framework's store keeps its table in: ``db`` (an open database or
    server connection) or the one at ``path`` (embedded, ``omendb.open``'s defaults)."""
    if (db is None) == (path is None):
        raise InvalidArgumentError("give db (an open omendb database or server connection) or path, "
                                   "exactly one of them")
    if db is not None:
        return db
    from ..database import Database
    from ..table import TableOptions

    return Database(path, TableOptions())
