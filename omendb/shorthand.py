"""The two-line API: ``db.add_batch(vectors)`` / ``db.search(query)`` on a default table.

Mixed into both the embedded :class:`~omendb.Database` and the remote database, it
only calls their public table API (``table_names``, ``create_table``, ``open_table``
and the table's ``insert``/``search``/``delete``/``get``/``count``): nothing is
duplicated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .convert import to_arrow_table
from .errors import InvalidArgumentError, TableNotFoundError

__all__ = ["ShorthandMixin", "DEFAULT_TABLE"]

#: The table the shorthand methods use.
DEFAULT_TABLE = "vectors"


class ShorthandMixin:
    """``add_batch``, ``search``, ``delete``, ``get`` and ``count`` on the table ``vectors``.

    The table is created by the first ``add_batch`` with the vectors' dimension and the
    metric given to ``omendb.open(path, dim=..., metric=...)`` (cosine by default).
    """

    _default_dim: int | None = None
    _default_metric: str = "cosine"

    def _vectors_table(self, *, create_from: pa.Table | None = None) -> Any:
        if DEFAULT_TABLE in self.table_names():
            return self.open_table(DEFAULT_TABLE)
        if create_from is None:
            raise TableNotFoundError(f"no vectors yet: the default table {DEFAULT_TABLE!r} is created by add_batch()")
        return self.create_table(DEFAULT_TABLE, dim=self._default_dim, metric=self._default_metric,
                                 schema=_schema_of(create_from, self._default_dim), exist_ok=True)

    def add_batch(self, vectors: Any, ids: Any = None, metadata: Any = None) -> list:
        """Add vectors (2-D array, list of vectors, or an Arrow table / DataFrame with a
        ``vector`` column) with optional ``ids`` and ``metadata`` (dict of columns, list of
        dicts or DataFrame, one row per vector). Returns the ids of the new rows.
        """
        data = _batch(vectors, ids, metadata)
        return self._vectors_table(create_from=data).insert(data).to_pylist()

    def search(self, query: Any, k: int = 10, **options: Any) -> pa.Table:
        """Nearest neighbours in the default table (see ``Table.search`` for ``options``)."""
        return self._vectors_table().search(query, k=k, **options)

    def delete(self, ids: Any) -> int:
        """Delete rows of the default table by id; returns how many were deleted."""
        if DEFAULT_TABLE not in self.table_names():
            return 0
        return self._vectors_table().delete(ids)

    def get(self, ids: Any, columns: Any = None) -> pa.Table:
        """Rows of the default table by id, in the order asked."""
        return self._vectors_table().get(ids, columns=columns)

    def count(self) -> int:
        """Rows in the default table (0 before the first ``add_batch``)."""
        if DEFAULT_TABLE not in self.table_names():
            return 0
        return self._vectors_table().count()


def _batch(vectors: Any, ids: Any, metadata: Any) -> pa.Table:
    if isinstance(vectors, (pa.Table, pa.RecordBatch)) or hasattr(vectors, "columns"):
        data = to_arrow_table(vectors)
    else:
        data = to_arrow_table(np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors)
    if metadata is not None:
        extra = to_arrow_table(metadata)
        if extra.num_rows != data.num_rows:
            raise InvalidArgumentError(f"metadata has {extra.num_rows} rows for {data.num_rows} vectors")
        for name in extra.column_names:
            data = data.append_column(name, extra.column(name))
    if ids is not None:
        id_values = pa.array(list(ids) if not isinstance(ids, (np.ndarray, pa.Array)) else ids)
        if len(id_values) != data.num_rows:
            raise InvalidArgumentError(f"{len(id_values)} ids for {data.num_rows} vectors")
        data = data.add_column(0, "id", id_values)
    return data


def _schema_of(data: pa.Table, dim: int | None) -> pa.Schema:
    """The default table's schema from its first batch (float32 vectors, int64 or string ids)."""
    from .convert import infer_schema

    schema, _ = infer_schema(data, id_column="id", vector_column="vector", dim=dim)
    return schema
