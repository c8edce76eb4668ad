"""The table contract: what every omendb table offers, embedded or remote.

``omendb.Table`` is this abstract class. The embedded table (``omendb.table.LocalTable``)
and the table of a server (``omendb.remote.RemoteTable``) both implement it, and one
test module runs the same assertions against both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import pyarrow as pa

__all__ = ["Table"]


class Table(ABC):
    """A table of rows: a primary key, one vector column and metadata columns.

    Obtain one from ``Database.create_table`` / ``open_table`` (embedded) or from
    ``omendb.connect(...).open_table`` (server). Writes return once durable; searches
    and scans return Arrow tables.
    """

    name: str
    id_column: str
    vector_column: str

    # ----------------------------------------------------------------- facts
    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The table's Arrow schema (primary key, vector column, metadata columns)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Number of components of every vector."""

    @property
    @abstractmethod
    def metric(self) -> str:
        """Distance metric fixed at creation: ``l2`` (squared), ``cosine`` or ``dot``."""

    @property
    @abstractmethod
    def format(self) -> str:
        """Segment file format fixed at creation: ``"arrow"`` or ``"lance"``."""

    @property
    @abstractmethod
    def version(self) -> int:
        """Number of the latest published version."""

    @property
    @abstractmethod
    def embedding(self) -> dict[str, Any] | None:
        """The table's embedding function as recorded (``name``, ``params``,
        ``source_column``), or None when its rows come with their vectors."""

    # ---------------------------------------------------------------- writes
    @abstractmethod
    def add(self, data: Any) -> int:
        """Append rows; refuse keys that already exist. Returns the number of rows added."""

    @abstractmethod
    def insert(self, data: Any) -> pa.Array:
        """Like :meth:`add`, but return the primary keys of the new rows (assigned or given)."""

    @abstractmethod
    def upsert(self, data: Any) -> int:
        """Insert rows, replacing any live row with the same primary key."""

    @abstractmethod
    def delete(self, ids: Any = None, *, where: str | None = None) -> int:
        """Delete rows by primary key, or every row matching ``where``; returns the count."""

    # ----------------------------------------------------------------- reads
    @abstractmethod
    def search(self, q: Any = None, k: int = 10, *, text: str | None = None, where: str | None = None,
               columns: Sequence[str] | None = None, exact: bool = False, ef: int | None = None,
               recall: float | None = None, vector_weight: float = 1.0, text_weight: float = 1.0) -> pa.Table:
        """Nearest neighbours of ``q`` (1-D: one query; 2-D: several, with ``_query``; a
        string or list of strings in a table with an embedding function), rows matching
        ``text`` (BM25, ``_score``), or one query and ``text`` fused by reciprocal rank
        fusion (``_relevance_score``)."""

    @abstractmethod
    def create_text_index(self, columns: str | Sequence[str], *, language: str | None = "english",
                          k1: float = 1.5, b: float = 0.75) -> None:
        """Index string ``columns`` for ``search(text=...)``."""

    @abstractmethod
    def get(self, ids: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows with the given primary keys, in the order asked; missing ids are skipped."""

    @abstractmethod
    def count(self) -> int:
        """Number of live rows."""

    @abstractmethod
    def to_arrow(self) -> pa.Table:
        """Every live row."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Rows, deleted rows, segments, index state, bytes on disk and version."""

    @abstractmethod
    def versions(self) -> list[dict[str, Any]]:
        """Every retained version, oldest first: number, time, what changed, rows, segments."""

    # ------------------------------------------------------------ maintenance
    @abstractmethod
    def flush(self) -> None:
        """Write buffered rows out as a segment and publish a new version now."""

    @abstractmethod
    def compact(self) -> dict[str, Any]:
        """Merge segments and drop deleted rows now; return what was done."""

    @abstractmethod
    def create_index(self, m: int = 16, ef_construction: int = 200, **params: Any) -> None:
        """Set the HNSW parameters and (re)build every index they change, in the background."""

    @abstractmethod
    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Flush, then wait until every large segment has a current index; False on ``timeout``."""

    # ------------------------------------------------------ built on the above
    def __len__(self) -> int:
        return self.count()

    def to_pandas(self) -> Any:
        """Every live row as a pandas DataFrame."""
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        """Every live row as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def __repr__(self) -> str:
        return f"<omendb.{type(self).__name__} {self.name!r} dim={self.dim} metric={self.metric}>"

