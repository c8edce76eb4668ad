"""A table's embedding function at work: vectors for rows added without them, and
string queries turned into vectors (``omendb/embedding.py`` has the functions)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..convert import to_arrow_table, vector_type
from ..embedding import Embedding, embed_texts, embedding_from_record, embedding_record
from ..errors import EmbeddingError, InvalidArgumentError, InvalidVectorError, SchemaError
from ..index.text import MAX_QUERY_CHARS

__all__ = ["TableEmbedder", "with_vectors", "query_vectors"]


class TableEmbedder:
    """Embeds for one table: ``record`` is what its manifest says (``name``, ``params``,
    ``source_column``); the function is the one given, or made again from the record
    when it names an adapter."""

    def __init__(self, table: str, record: dict[str, Any], vector_column: str, dim: int | None,
                 fn: Callable[[list[str]], Any] | None = None) -> None:
        self.table, self.record = table, record
        self.source_column = record["source_column"]
        self.vector_column, self.dim = vector_column, dim
        self._fn = fn
        if fn is not None:
            self.check_same(fn)

    def check_same(self, fn: Callable[[list[str]], Any]) -> None:
        """Refuse ``fn`` when it is not the function the table was embedded with (another
        name, or an adapter with other parameters than those that decide its vectors)."""
        given = embedding_record(fn)
        same = given["name"] == self.record["name"]
        if same and isinstance(fn, Embedding):
            recorded = {key: value for key, value in (self.record.get("params") or {}).items()
                        if key not in fn.settings}
            same = recorded == fn.identity()
        if not same:
            raise InvalidArgumentError(
                f"table {self.table!r} was embedded with {self._described(self.record)}; the function given is "
                f"{self._described(given)}: vectors of two functions do not compare")

    def using(self, fn: Callable[[list[str]], Any]) -> "TableEmbedder":
        """The same table's embedder with ``fn`` as its function (refused unless it is the recorded one)."""
        return TableEmbedder(self.table, self.record, self.vector_column, self.dim, fn)

    @staticmethod
    def _described(record: dict[str, Any]) -> str:
        params = record.get("params") or {}
        return record["name"] + (f" {params}" if params else "")

    def function(self) -> Callable[[list[str]], Any]:
        if self._fn is None:
            try:
                self._fn = embedding_from_record(self.record)
            except (TypeError, ValueError) as exc:  # (params this omendb's adapter does not take)
                raise EmbeddingError(f"table {self.table!r} records {self._described(self.record)}, which this "
                                     f"omendb cannot make again ({exc}): give the function with open_table("
                                     f"{self.table!r}, embedding=...)") from None
            if self._fn is None:
                raise EmbeddingError(
                    f"table {self.table!r} embeds {self.source_column!r} with {self._described(self.record)}, "
                    f"which omendb cannot make again: open the table with open_table({self.table!r}, "
                    "embedding=<that function>)")
        return self._fn

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.function(), texts, self.dim,
                           f"embedding function {self._described(self.record)} of table {self.table!r}")

    def probe_dim(self) -> int:
        """The dimension of the function's vectors: its own ``dim``, or that of one probe text."""
        fn = self.function()
        dim = getattr(fn, "dim", None)
        if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
            return dim
        return self._embed(["omendb dimension probe"]).shape[1]

    def queries(self, q: str | list[str] | tuple[str, ...]) -> np.ndarray:
        """A text query as a vector (one string) or a (Q, dim) matrix (a list of them)."""
        texts = [q] if isinstance(q, str) else list(q)
        if not all(text.strip() for text in texts):
            raise InvalidArgumentError("text query is empty")
        longest = max(len(text) for text in texts)
        if longest > MAX_QUERY_CHARS:
            raise InvalidArgumentError(f"text query is {longest:,} characters; at most {MAX_QUERY_CHARS:,} are allowed")
        vectors = self._embed(texts)
        return vectors[0] if isinstance(q, str) else vectors

    def fill(self, data: pa.Table) -> pa.Table:
        """``data`` with vectors for every row that has none (no vector column, or a null
        vector), embedded from the row's text in the source column."""
        names = data.column_names
        given = data.column(self.vector_column) if self.vector_column in names else None
        if given is not None and given.null_count == 0:
            return data
        missing = np.ones(data.num_rows, bool) if given is None else \
            np.asarray(given.is_null().to_numpy(zero_copy_only=False), bool)
        if self.source_column not in names:
            raise SchemaError(f"rows without a {self.vector_column!r} vector need their text in column "
                              f"{self.source_column!r}: table {self.table!r} embeds it")
        texts = data.column(self.source_column).take(pa.array(np.flatnonzero(missing))).to_pylist()
        for row, text in zip(np.flatnonzero(missing), texts):
            if not isinstance(text, str):
                raise SchemaError(f"row {int(row)} has no vector and no text in {self.source_column!r} to embed "
                                  f"(got {text!r})")
        vectors = self._embed(texts) if texts else np.zeros((0, self.dim or self.probe_dim()), np.float32)
        dim = vectors.shape[1]
        if given is None:
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
            return data.append_column(pa.field(self.vector_column, vector_type(dim), nullable=False), column)
        try:
            rows = given.cast(pa.list_(pa.float32())).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise SchemaError(f"column {self.vector_column!r} ({given.type}) has null vectors to fill but is not a "
                              "list of numbers: give every vector, or none") from None
        for i, row in enumerate(np.flatnonzero(missing)):
            rows[row] = vectors[i]
        filled = pa.array(rows, pa.list_(pa.float32()))
        return data.set_column(names.index(self.vector_column), self.vector_column, filled)


def with_vectors(embedder: TableEmbedder | None, data: Any, vector_column: str) -> Any:
    """``data`` with a vector for each row given without one (``data`` as it is for a
    table without an embedding function)."""
    return data if embedder is None else embedder.fill(to_arrow_table(data, vector_column))


def query_vectors(embedder: TableEmbedder | None, q: str | list[str] | tuple[str, ...], table: str) -> np.ndarray:
    """A text query embedded by the table's function; a table without one refuses it."""
    if embedder is None:
        raise InvalidVectorError(f"q is text, not a numeric vector, and table {table!r} has no embedding function to "
                                 "embed it: give a vector, or text= for a full-text search")
    return embedder.queries(q)
