"""omendb as a LlamaIndex vector store (``pip install 'omendb[llama-index]'``).

>>> from omendb.integrations.llama_index import OmenVectorStore
>>> from llama_index.core import StorageContext, VectorStoreIndex
>>> store = OmenVectorStore(path="./vectors.omen")            # or db=omendb.connect(uri, token=...)
>>> index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store))

Nodes live in one omendb table (default ``llama_index``): the node's ``id``, its
``vector``, ``text``, ``ref_doc_id`` and ``metadata`` (LlamaIndex's node dict as JSON).
Adding a node whose id exists replaces it. ``MetadataFilters`` become an omendb
``where`` over the metadata JSON, applied before ranking: every ``FilterOperator``
(``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``nin``, ``any``, ``all``,
``contains``, ``text_match``, ``text_match_insensitive``, ``is_empty``) and the ``and``,
``or`` and ``not`` conditions, nested. A node without the key never matches (but for
``is_empty``), as SQL's NULL. Query modes: ``default`` and ``mmr``.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from . import store_database
from ..errors import ArgumentTypeError, InvalidArgumentError, MissingDependencyError, TableExistsError

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                      MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                      VectorStoreQueryMode, VectorStoreQueryResult)
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("omendb.integrations.llama_index needs llama-index-core: "
                                 "pip install 'omendb[llama-index]'") from None

__all__ = ["OmenVectorStore", "filters_where"]

_COLUMNS = ["id", "text", "metadata"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _condition(item: MetadataFilter) -> str:
    """One filter as a predicate over the ``metadata`` JSON column."""
    path = _quote("$." + json.dumps(item.key))
    raw, text = f"json_extract(metadata, {path})", f"json_extract_string(metadata, {path})"
    op, value = item.operator, item.value

    def typed(v: Any) -> tuple[str, str]:  # (the metadata side, the literal), compared as v's type
        if isinstance(v, bool):
            return f"TRY_CAST({text} AS BOOLEAN)", "true" if v else "false"
        if isinstance(v, (int, float)):
            return f"TRY_CAST({text} AS DOUBLE)", repr(float(v))
        if isinstance(v, str):
            return text, _quote(v)
        raise ArgumentTypeError(f"filter on {item.key!r}: {op.value} takes strings or numbers, got {v!r}")

    def values() -> list:
        if not isinstance(value, (list, tuple)) or not value:
            raise ArgumentTypeError(f"filter on {item.key!r}: {op.value} takes a non-empty list, got {value!r}")
        return list(value)

    compare = {FilterOperator.EQ: "=", FilterOperator.NE: "<>", FilterOperator.GT: ">", FilterOperator.LT: "<",
               FilterOperator.GTE: ">=", FilterOperator.LTE: "<="}
    if op in compare:
        side, literal = typed(value)
        return f"({side} {compare[op]} {literal})"
    if op in (FilterOperator.IN, FilterOperator.NIN):
        given = values()
        side, _ = typed(given[0])
        listed = ", ".join(typed(v)[1] for v in given)
        return f"({side} {'IN' if op == FilterOperator.IN else 'NOT IN'} ({listed}))"
    if op == FilterOperator.CONTAINS:
        return f"coalesce(json_contains({raw}, {_quote(json.dumps(value))}), false)"
    if op in (FilterOperator.ANY, FilterOperator.ALL):
        parts = [f"coalesce(json_contains({raw}, {_quote(json.dumps(v))}), false)" for v in values()]
        return "(" + (" OR " if op == FilterOperator.ANY else " AND ").join(parts) + ")"
    if op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(value, str):
            raise ArgumentTypeError(f"filter on {item.key!r}: {op.value} takes a string, got {value!r}")
        like = "LIKE" if op == FilterOperator.TEXT_MATCH else "ILIKE"
        pattern = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"({text} {like} {_quote('%' + pattern + '%')} ESCAPE '\\')"
    if op == FilterOperator.IS_EMPTY:
        return f"({raw} IS NULL OR {raw} IN ('null'::JSON, '[]'::JSON, '\"\"'::JSON))"
    raise InvalidArgumentError(f"filter operator {op!r} is not supported")


def filters_where(filters: MetadataFilters | None) -> str | None:
    """LlamaIndex ``MetadataFilters`` (nested ones too) as an omendb ``where`` predicate."""
    if filters is None or not filters.filters:
        return None
    parts = [f"({filters_where(f)})" if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    parts = [p for p in parts if p != "(None)"]
    if not parts:
        return None
    if filters.condition == FilterCondition.NOT:
        return "NOT (" + " AND ".join(parts) + ")"
    return (" OR " if filters.condition == FilterCondition.OR else " AND ").join(parts)


class OmenVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one omendb table, embedded or on a server.

    Args:
        db: an open omendb database (``omendb.open(...)``) or server connection
            (``omendb.connect(...)``); or give ``path`` instead.
        path: a database folder to open (embedded).
        table_name: the table holding the nodes (created by the first add).
        metric: ``"cosine"`` (default), ``"l2"`` or ``"dot"``, fixed when the table is made.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    table_name: str = "llama_index"
    metric: str = "cosine"
    _db: Any = PrivateAttr()
    _table: Any = PrivateAttr(default=None)

    def __init__(self, *, db: Any = None, path: str | None = None, table_name: str = "llama_index",
                 metric: str = "cosine", **kwargs: Any) -> None:
        super().__init__(table_name=table_name, metric=metric, **kwargs)
        db = store_database(db, path)
        self._db = db

    @property
    def client(self) -> Any:
        """The omendb database (or server connection) the nodes live in."""
        return self._db

    @property
    def table(self) -> Any:
        """The omendb table (None until the first add, when it does not exist yet)."""
        if self._table is None and self.table_name in self._db.table_names():
            self._table = self._db.open_table(self.table_name)
        return self._table

    # ------------------------------------------------------------------ writes
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store ``nodes`` (each with its embedding), replacing nodes with the same ids."""
        if not nodes:
            return []
        last = {node.node_id: node for node in nodes}  # (an id given twice: its last node wins)
        picked = list(last.values())
        missing = [n.node_id for n in picked if n.embedding is None]
        if missing:
            raise InvalidArgumentError(f"node {missing[0]!r} has no embedding: embed nodes before adding them")
        data = {"id": [n.node_id for n in picked],
                "vector": np.asarray([n.get_embedding() for n in picked], dtype=np.float32),
                "text": [n.get_content(metadata_mode="none") for n in picked],
                "ref_doc_id": [n.ref_doc_id for n in picked],
                "metadata": [json.dumps(node_to_metadata_dict(n, remove_text=True, flat_metadata=False))
                             for n in picked]}
        if self.table is None:
            try:
                self._table = self._db.create_table(self.table_name, data, metric=self.metric)
                return [n.node_id for n in nodes]
            except TableExistsError:  # (made meanwhile by another store)
                self._table = self._db.open_table(self.table_name)
        self._table.upsert(data)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        if self.table is not None:
            self._table.delete(where=f"ref_doc_id = {_quote(str(ref_doc_id))}")

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes with ``node_ids`` and/or matching ``filters``."""
        where = self._where(node_ids, None, filters)
        if self.table is not None and where is not None:
            self._table.delete(where=where)

    def clear(self) -> None:
        """Delete every node."""
        if self.table is not None:
            self._table.delete(where="true")

    # ------------------------------------------------------------------- reads
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                  **kwargs: Any) -> list[BaseNode]:
        """The nodes with ``node_ids`` (in that order) and/or matching ``filters``."""
        if self.table is None:
            return []
        if filters is None and node_ids:
            rows = self._table.get(list(node_ids), columns=_COLUMNS).to_pylist()
        else:
            import duckdb

            where = self._where(node_ids, None, filters) or "true"
            con = duckdb.connect()
            try:
                con.register("nodes", self._table.to_arrow().select(_COLUMNS))
                rows = con.sql(f"SELECT * FROM nodes WHERE {where}").to_arrow_table().to_pylist()
            finally:
                con.close()
        return [self._node(row) for row in rows]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest ``query.query_embedding`` that pass its
        filters, ``doc_ids`` and ``node_ids``; ``similarities``: higher is closer."""
        if query.query_embedding is None:
            raise InvalidArgumentError("this store searches by embedding: the query has no query_embedding")
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise InvalidArgumentError(f"query mode {query.mode.value!r} is not supported (default, mmr)")
        if self.table is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        k = query.similarity_top_k
        mmr = query.mode == VectorStoreQueryMode.MMR
        fetch = max(k, kwargs.get("mmr_prefetch_k") or 4 * k) if mmr else k
        rows = self._table.search(np.asarray(query.query_embedding, dtype=np.float32), k=fetch,
                                  where=self._where(query.node_ids, query.doc_ids, query.filters),
                                  columns=_COLUMNS + (["vector"] if mmr else [])).to_pylist()
        if mmr and rows:
            threshold = query.mmr_threshold if query.mmr_threshold is not None else kwargs.get("mmr_threshold")
            _, order = get_top_k_mmr_embeddings(list(query.query_embedding), [r["vector"] for r in rows],
                                                similarity_top_k=k, embedding_ids=list(range(len(rows))),
                                                mmr_threshold=threshold)
            rows = [rows[i] for i in order]
        return VectorStoreQueryResult(nodes=[self._node(r) for r in rows],
                                      similarities=[self._similarity(r["_distance"]) for r in rows],
                                      ids=[r["id"] for r in rows])

    def _similarity(self, distance: float) -> float:
        if self.metric == "cosine":
            return 1.0 - float(distance)  # (the cosine similarity)
        if self.metric == "l2":
            return 1.0 / (1.0 + float(distance))
        return -float(distance)  # (dot: the inner product)

    @staticmethod
    def _where(node_ids: list[str] | None, doc_ids: list[str] | None, filters: MetadataFilters | None) -> str | None:
        parts = []  # (an empty list of ids restricts nothing, as LlamaIndex's own stores read it)
        if node_ids:
            parts.append(f"id IN ({', '.join(_quote(str(i)) for i in node_ids)})")
        if doc_ids:
            parts.append(f"ref_doc_id IN ({', '.join(_quote(str(i)) for i in doc_ids)})")
        where = filters_where(filters)
        if where is not None:
            parts.append(f"({where})")
        return " AND ".join(parts) or None

    @staticmethod
    def _node(row: dict) -> BaseNode:
        node = metadata_dict_to_node(json.loads(row["metadata"]), text=row["text"])
        node.id_ = row["id"]
        return node
