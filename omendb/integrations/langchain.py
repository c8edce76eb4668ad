"""omendb as a LangChain vector store (``pip install 'omendb[langchain]'``).

>>> from omendb.integrations.langchain import OmenVectorStore
>>> store = OmenVectorStore(embeddings, path="./vectors.omen")          # embedded
>>> store = OmenVectorStore(embeddings, db=omendb.connect("127.0.0.1:8815", token=...))  # a server
>>> store.add_texts(["fast arrow parser"], metadatas=[{"lang": "en"}])
>>> store.similarity_search("parse arrow", k=4, filter={"lang": "en"})

Documents live in one omendb table (default ``langchain``): a string ``id`` (the
document's id; a random one when it has none), the ``vector``, the ``text`` and the
``metadata`` as a JSON string. Adding a document whose id exists replaces it (upsert).
The table is created by the first add, when the embedding's dimension is known.

``filter`` is a dict of metadata values a document must equal (``{"lang": "en",
"year": 2024}``; compared as JSON values, so ``1`` and ``"1"`` differ), or a string: an
omendb ``where`` predicate over the table's columns (DuckDB SQL, for example
``"json_extract_string(metadata, '$.lang') IN ('en', 'de')"``). It is applied before
ranking, so ``k`` documents come back whenever ``k`` match.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import store_database
from ..errors import ArgumentTypeError, InvalidArgumentError, MissingDependencyError, TableExistsError

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("omendb.integrations.langchain needs langchain-core: "
                                 "pip install 'omendb[langchain]'") from None

__all__ = ["OmenVectorStore"]

_COLUMNS = ["id", "text", "metadata"]


def metadata_filter(filter: dict[str, Any] | str | None) -> str | None:
    """A LangChain ``filter`` as an omendb ``where`` predicate (see the module docstring)."""
    if filter is None or isinstance(filter, str):
        return filter
    if not isinstance(filter, dict):
        raise ArgumentTypeError(f"filter must be a dict of metadata values or a where string, "
                                f"got {type(filter).__name__}")
    clauses = []
    for key, value in filter.items():
        if not isinstance(key, str):
            raise ArgumentTypeError(f"filter keys must be metadata names (strings), got {key!r}")
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise ArgumentTypeError(f"filter value of {key!r} must be a string, number, bool or None, got "
                                    f"{type(value).__name__}; give a where string for other tests")
        path = "$." + json.dumps(key)
        literal = json.dumps(value, separators=(",", ":")).replace("'", "''")
        clauses.append(f"json_extract(metadata, '{path.replace(chr(39), chr(39) * 2)}') = '{literal}'::JSON")
    return " AND ".join(clauses) or None


class OmenVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over one omendb table, embedded or on a server.

    Args:
        embedding: the LangChain embeddings that turn texts and queries into vectors.
        db: an open omendb database (``omendb.open(...)``) or server connection
            (``omendb.connect(...)``); or give ``path`` instead.
        path: a database folder to open (embedded).
        table_name: the table holding the documents (created by the first add).
        metric: ``"cosine"`` (default), ``"l2"`` or ``"dot"``, fixed when the table is made.
    """

    def __init__(self, embedding: Embeddings, *, db: Any = None, path: str | None = None,
                 table_name: str = "langchain", metric: str = "cosine") -> None:
        db = store_database(db, path)
        self._embedding = embedding
        self._db = db
        self._table_name = table_name
        self._metric = metric
        self._table: Any = None

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def table(self) -> Any:
        """The omendb table (None until the first add, when it does not exist yet)."""
        if self._table is None and self._table_name in self._db.table_names():
            self._table = self._db.open_table(self._table_name)
        return self._table

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Embed and store ``texts`` (replacing documents with the same ids); their ids."""
        texts = list(texts)
        if not texts:
            return []
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = [str(uuid.uuid4()) if i is None else str(i) for i in (ids or [None] * len(texts))]
        if not len(metadatas) == len(ids) == len(texts):
            raise InvalidArgumentError(f"{len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids: "
                                       "give one of each per text")
        last = {key: row for row, key in enumerate(ids)}  # (an id given twice: its last text wins)
        rows = sorted(last.values())
        vectors = np.asarray(self._embedding.embed_documents([texts[r] for r in rows]), dtype=np.float32)
        data = {"id": [ids[r] for r in rows], "vector": vectors, "text": [texts[r] for r in rows],
                "metadata": [json.dumps(metadatas[r] or {}) for r in rows]}
        if self.table is None:
            try:
                self._table = self._db.create_table(self._table_name, data, metric=self._metric)
                return ids
            except TableExistsError:  # (made meanwhile by another store)
                self._table = self._db.open_table(self._table_name)
        self._table.upsert(data)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete the documents with ``ids`` (every document when None); missing ids are ignored."""
        table = self.table
        if table is not None:
            table.delete(where="true") if ids is None else table.delete([str(i) for i in ids])
        return True

    # ------------------------------------------------------------------- reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with ``ids``, in that order (missing ids are skipped)."""
        table = self.table
        if table is None or not ids:
            return []
        return [self._document(row) for row in table.get([str(i) for i in ids], columns=_COLUMNS).to_pylist()]

    def similarity_search(self, query: str, k: int = 4, filter: dict | str | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | str | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents nearest ``query`` with their omendb ``_distance`` (smaller is closer)."""
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter=filter,
                                                           **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | str | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict | str | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        rows = self._search(embedding, k, filter, _COLUMNS)
        return [(self._document(row), float(row["_distance"])) for row in rows]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | str | None = None, **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k,
                                                            lambda_mult, filter=filter, **kwargs)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | str | None = None,
                                                **kwargs: Any) -> list[Document]:
        """``k`` documents among the ``fetch_k`` nearest, picked for relevance and diversity."""
        rows = self._search(embedding, fetch_k, filter, _COLUMNS + ["vector"])
        if not rows:
            return []
        picked = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32),
                                            [row["vector"] for row in rows], lambda_mult=lambda_mult, k=k)
        return [self._document(rows[i]) for i in picked]

    def _search(self, embedding: Any, k: int, filter: dict | str | None, columns: list[str]) -> list[dict]:
        table = self.table
        if table is None:
            return []
        return table.search(np.asarray(embedding, dtype=np.float32), k=k, where=metadata_filter(filter),
                            columns=columns).to_pylist()

    @staticmethod
    def _document(row: dict) -> Document:
        return Document(id=row["id"], page_content=row["text"], metadata=json.loads(row["metadata"] or "{}"))

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """omendb's ``_distance`` as a relevance in [0, 1] (1: the same direction or point)."""
        if self._metric == "cosine":
            return lambda distance: 1.0 - distance / 2.0  # (1 - cos lies in [0, 2])
        if self._metric == "l2":
            return lambda distance: 1.0 / (1.0 + distance)  # (squared Euclidean)
        return lambda distance: -distance  # (dot: _distance is -x.q)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> "OmenVectorStore":
        """A store (``db=`` or ``path=``, ``table_name=``, ``metric=`` as for the
        constructor) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

