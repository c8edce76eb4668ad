"""omendb as a LangChain vector store: langchain-tests' standard suite, unmodified, over
an embedded database and over a server; then filters, scores, MMR and retrievers."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("langchain_core", reason="langchain-core is not installed (pip install 'omendb[langchain]')")
standard = pytest.importorskip("langchain_tests.integration_tests", reason="langchain-tests is not installed")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

import omendb  # noqa: E402
from conftest import unique  # noqa: E402
from omendb.integrations.langchain import OmenVectorStore  # noqa: E402


class TestEmbeddedStore(standard.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Iterator[OmenVectorStore]:
        db = omendb.open(tmp_path / "db")
        try:
            yield OmenVectorStore(self.get_embeddings(), db=db)
        finally:
            db.close()


class TestServedStore(standard.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, server) -> Iterator[OmenVectorStore]:
        db = server.connect()
        name = unique("langchain")
        try:
            yield OmenVectorStore(self.get_embeddings(), db=db, table_name=name)
        finally:
            if name in db.table_names():
                db.drop_table(name)
            db.close()


DOCS = [Document(page_content="fast arrow parser", metadata={"lang": "en", "year": 2024}),
        Document(page_content="schnelles arrow werkzeug", metadata={"lang": "de", "year": 2023}),
        Document(page_content="arrow flight server", metadata={"lang": "en", "year": 2023}),
        Document(page_content="postgres driver", metadata={"lang": "en", "year": 2020})]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OmenVectorStore]:
    made = OmenVectorStore.from_texts([d.page_content for d in DOCS], DeterministicFakeEmbedding(size=16),
                                      [d.metadata for d in DOCS], ids=["a", "b", "c", "d"], path=str(tmp_path / "db"))
    yield made
    made._db.close()


def test_filters_apply_before_ranking(store: OmenVectorStore) -> None:
    found = store.similarity_search("fast arrow parser", k=2, filter={"lang": "de"})
    assert [d.id for d in found] == ["b"]
    found = store.similarity_search("postgres driver", k=4, filter={"lang": "en", "year": 2023})
    assert [d.id for d in found] == ["c"]
    assert store.similarity_search("x", k=4, filter={"year": "2023"}) == []  # (a string is not the number)
    where = "json_extract_string(metadata, '$.lang') IN ('de', 'en') AND id <> 'a'"
    assert {d.id for d in store.similarity_search("x", k=4, filter=where)} == {"b", "c", "d"}
    assert {d.id for d in store.similarity_search("x", k=4, filter={"it's": "o'k"})} == set()  # (quotes are escaped)
    with pytest.raises(omendb.ArgumentTypeError, match="filter value"):
        store.similarity_search("x", filter={"lang": ["en"]})


def test_scores_mmr_and_retriever(store: OmenVectorStore) -> None:
    scored = store.similarity_search_with_score("postgres driver", k=2)
    assert scored[0][0].id == "d" and scored[0][1] == pytest.approx(0.0, abs=1e-5)
    relevance = store.similarity_search_with_relevance_scores("postgres driver", k=2)
    assert relevance[0][1] == pytest.approx(1.0, abs=1e-5) and 0.0 <= relevance[1][1] <= 1.0
    diverse = store.max_marginal_relevance_search("fast arrow parser", k=2, fetch_k=4)
    assert diverse[0].id == "a" and len({d.id for d in diverse}) == 2
    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"lang": "de"}})
    assert [d.id for d in retriever.invoke("arrow")] == ["b"]
    assert [d.id for d in store.get_by_ids(["d", "zz", "a"])] == ["d", "a"]
    store.delete(["a", "b"])
    assert store.table.count() == 2
    store.delete()
    assert store.table.count() == 0 and store.similarity_search("x") == []


def test_importing_omendb_imports_no_framework() -> None:
    import subprocess
    import sys

    code = "import sys, omendb; print(any(m.startswith(('langchain', 'llama_index')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
