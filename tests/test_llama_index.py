"""omendb as a LlamaIndex vector store, embedded and over a server: add, query with
every metadata filter operator, delete by document and by node, get, clear, MMR, and an
index built and queried through LlamaIndex itself."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("llama_index.core", reason="llama-index-core is not installed (pip install 'omendb[llama-index]')")

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter,  # noqa: E402
                                                  MetadataFilters, VectorStoreQuery, VectorStoreQueryMode)

import omendb  # noqa: E402
from conftest import unique  # noqa: E402
from omendb.integrations.llama_index import OmenVectorStore  # noqa: E402


def node(node_id: str, vector: list[float], doc: str, **metadata) -> TextNode:
    made = TextNode(id_=node_id, text=f"text of {node_id}", embedding=vector, metadata=metadata)
    made.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
    return made


NODES = [node("a", [1.0, 0.0, 0.0], "d1", author="ada", year=2020, tags=["x", "y"]),
         node("b", [0.9, 0.1, 0.0], "d1", author="bob", year=2022, tags=["y"]),
         node("c", [0.0, 1.0, 0.0], "d2", author="cy", year=2024, tags=[], note="It's fine"),
         node("d", [0.0, 0.0, 1.0], "d3", author="ada", year=2021.5)]


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path: Path) -> Iterator[OmenVectorStore]:
    if request.param == "embedded":
        db = omendb.open(tmp_path / "db")
        made = OmenVectorStore(db=db)
    else:
        db = request.getfixturevalue("server").connect()
        made = OmenVectorStore(db=db, table_name=unique("llama"))
    made.add(NODES)
    yield made
    if request.param == "server":
        db.drop_table(made.table_name)
    db.close()


def ids(store: OmenVectorStore, *filters: MetadataFilter, condition=FilterCondition.AND, k: int = 4,
        **query) -> list[str]:
    asked = MetadataFilters(filters=list(filters), condition=condition) if filters else None
    return store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.1], similarity_top_k=k, filters=asked,
                                        **query)).ids


def test_query_returns_nodes_with_their_text_metadata_and_similarity(store) -> None:
    result = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2))
    assert result.ids == ["a", "b"]
    assert result.nodes[0].get_content() == "text of a" and result.nodes[0].metadata["author"] == "ada"
    assert result.nodes[0].ref_doc_id == "d1"
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5) and result.similarities[1] < 1.0


@pytest.mark.parametrize("filters, want", [
    ([MetadataFilter(key="author", value="ada")], ["a", "d"]),
    ([MetadataFilter(key="author", value="ada", operator=FilterOperator.NE)], ["b", "c"]),
    ([MetadataFilter(key="year", value=2021, operator=FilterOperator.GT)], ["b", "d", "c"]),
    ([MetadataFilter(key="year", value=2021.5, operator=FilterOperator.GTE)], ["b", "d", "c"]),
    ([MetadataFilter(key="year", value=2022, operator=FilterOperator.LT)], ["a", "d"]),
    ([MetadataFilter(key="year", value=2022, operator=FilterOperator.LTE)], ["a", "b", "d"]),
    ([MetadataFilter(key="author", value=["bob", "cy"], operator=FilterOperator.IN)], ["b", "c"]),
    ([MetadataFilter(key="author", value=["bob", "cy"], operator=FilterOperator.NIN)], ["a", "d"]),
    ([MetadataFilter(key="tags", value="y", operator=FilterOperator.CONTAINS)], ["a", "b"]),
    ([MetadataFilter(key="tags", value=["x", "zz"], operator=FilterOperator.ANY)], ["a"]),
    ([MetadataFilter(key="tags", value=["x", "y"], operator=FilterOperator.ALL)], ["a"]),
    ([MetadataFilter(key="note", value="it's", operator=FilterOperator.TEXT_MATCH)], []),
    ([MetadataFilter(key="note", value="it's", operator=FilterOperator.TEXT_MATCH_INSENSITIVE)], ["c"]),
    ([MetadataFilter(key="tags", value=None, operator=FilterOperator.IS_EMPTY)], ["d", "c"]),
])
def test_every_filter_operator(store, filters, want) -> None:
    assert ids(store, *filters) == want


def test_conditions_doc_ids_and_node_ids(store) -> None:
    ada, recent = MetadataFilter(key="author", value="ada"), MetadataFilter(key="year", value=2022,
                                                                            operator=FilterOperator.GTE)
    assert ids(store, ada, recent, condition=FilterCondition.OR) == ["a", "b", "d", "c"]
    assert ids(store, ada, recent) == []
    assert ids(store, ada, condition=FilterCondition.NOT) == ["b", "c"]
    nested = MetadataFilters(filters=[MetadataFilters(filters=[ada, recent], condition=FilterCondition.OR),
                                      MetadataFilter(key="year", value=2024, operator=FilterOperator.NE)])
    assert store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.1], similarity_top_k=4,
                                        filters=nested)).ids == ["a", "b", "d"]
    assert ids(store, doc_ids=["d1", "d3"]) == ["a", "b", "d"]
    assert ids(store, node_ids=["c", "d"]) == ["d", "c"]
    assert ids(store, k=1) == ["a"]


def test_delete_get_clear_and_mmr(store) -> None:
    mmr = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2,
                                       mode=VectorStoreQueryMode.MMR, mmr_threshold=0.1))
    assert mmr.ids[0] == "a" and "b" not in mmr.ids  # (b is a's near copy: diversity wins)
    assert [n.node_id for n in store.get_nodes(node_ids=["d", "a"])] == ["d", "a"]
    assert {n.node_id for n in store.get_nodes(filters=MetadataFilters(filters=[
        MetadataFilter(key="author", value="ada")]))} == {"a", "d"}
    store.delete("d1")
    assert ids(store) == ["d", "c"]
    store.add([node("c", [1.0, 0.0, 0.0], "d2", author="cy2")])  # (the same id: replaced)
    assert ids(store, k=1) == ["c"] and store.get_nodes(node_ids=["c"])[0].metadata["author"] == "cy2"
    store.delete_nodes(node_ids=["c"])
    assert ids(store) == ["d"]
    store.clear()
    assert ids(store) == []
    with pytest.raises(omendb.InvalidArgumentError, match="no query_embedding"):
        store.query(VectorStoreQuery(query_str="x"))
    with pytest.raises(omendb.InvalidArgumentError, match="no embedding"):
        store.add([TextNode(id_="z", text="no vector")])


def test_an_index_built_and_queried_through_llama_index(tmp_path: Path) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    store = OmenVectorStore(path=str(tmp_path / "db"))
    index = VectorStoreIndex.from_documents(
        [Document(text="fast arrow parser", doc_id="p1", metadata={"lang": "en"}),
         Document(text="schnelles werkzeug", doc_id="p2", metadata={"lang": "de"})],
        storage_context=StorageContext.from_defaults(vector_store=store), embed_model=MockEmbedding(embed_dim=8))
    retriever = index.as_retriever(similarity_top_k=2, filters=MetadataFilters(filters=[
        MetadataFilter(key="lang", value="de")]))
    found = retriever.retrieve("werkzeug")
    assert [n.node.ref_doc_id for n in found] == ["p2"] and found[0].node.get_content() == "schnelles werkzeug"
    index.delete_ref_doc("p2")
    assert store.table.count() == 1
    store.client.close()
