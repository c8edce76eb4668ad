"""SQL full-text and hybrid search: ``omen_text`` and ``omen_hybrid`` answer as
``Table.search(text=...)`` does, alone and per row of another table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import omendb
from test_text import DIM, QUERIES, corpus, rows


@pytest.fixture
def texts_db(db_path: Path, rng):
    """A table over several segments and the memtable, some rows deleted, with a text index."""
    db = omendb.open(db_path, memtable_bytes=48 << 10, compaction=False)
    texts = corpus(rng, 1_600)
    table = db.create_table("docs", data={**rows(np.arange(800), texts[:800], rng), "cat": np.arange(800) % 4})
    table.create_text_index("summary")
    for start in range(800, 1_500, 350):
        table.add({**rows(np.arange(start, start + 350), texts[start:start + 350], rng),
                   "cat": np.arange(start, start + 350) % 4})
        table.flush()
    table.add({**rows(np.arange(1_500, 1_600), texts[1_500:], rng), "cat": np.arange(1_500, 1_600) % 4})
    table.delete(where="id % 9 = 0")
    yield db, table
    db.close()


def ranked(result, *columns: str) -> list[tuple]:
    """Rows of a Python search result as tuples of ``columns``, floats rounded (so rows
    tied on a score compare as sets within the tie)."""
    picked = result.select(list(columns)).to_pylist()
    return sorted(tuple(round(v, 5) if isinstance(v, float) else v for v in row.values()) for row in picked)


def test_omen_text_equals_the_python_text_search(texts_db) -> None:
    db, table = texts_db
    assert table.stats()["segments"] >= 2 and table.stats()["memtable_rows"] > 0
    for query in QUERIES:
        want = table.search(text=query, k=7)
        got = db.sql(f"SELECT id, summary, _score FROM omen_text('docs', '{query}', 7)").to_arrow_table()
        assert got["_score"].to_pylist() == want["_score"].to_pylist()  # best first, the same scores
        assert ranked(got, "id", "summary", "_score") == ranked(want, "id", "summary", "_score")
    filtered = db.sql("SELECT id, cat FROM omen_text('docs', 'fast arrow parser', 5, filter := 'cat = 2')").fetchall()
    assert len(filtered) == 5 and {cat for _, cat in filtered} == {2}
    assert [i for i, _ in filtered] == table.search(text="fast arrow parser", k=5, where="cat = 2")["id"].to_pylist()


def test_omen_hybrid_equals_the_python_hybrid_search(texts_db, rng) -> None:
    db, table = texts_db
    q = rng.standard_normal(DIM).astype(np.float32)
    for weights in ((1.0, 1.0), (0.0, 1.0), (2.0, 0.5)):
        want = table.search(q, text="running database", k=8, exact=True, vector_weight=weights[0],
                            text_weight=weights[1])
        got = db.sql("SELECT id, _relevance_score, _distance, _score FROM omen_hybrid('docs', $q, "
                     "'running database', 8, exact := true, vector_weight := $vw, text_weight := $tw)",
                     params={"q": q.tolist(), "vw": weights[0], "tw": weights[1]}).to_arrow_table()
        np.testing.assert_allclose(got["_relevance_score"].to_numpy(), want["_relevance_score"].to_numpy(), rtol=1e-6)
        assert ranked(got, "id", "_relevance_score", "_distance", "_score") == \
            ranked(want, "id", "_relevance_score", "_distance", "_score")
    blob = db.sql("SELECT id FROM omen_hybrid('docs', $q, 'running database', 8, exact := true)",
                  params={"q": q.tobytes()}).fetchall()
    assert [i for (i,) in blob] == table.search(q, text="running database", k=8, exact=True)["id"].to_pylist()


def test_per_row_of_another_table_each_query_gets_its_own_answer(texts_db, rng, sql_udf_calls) -> None:
    db, table = texts_db
    calls = sql_udf_calls
    queries = QUERIES[:4]
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    db.sql("CREATE TABLE asks (qid INTEGER, words VARCHAR, vec FLOAT[])")
    for i, (words, vec) in enumerate(zip(queries, vectors)):
        db.sql("INSERT INTO asks VALUES ($i, $w, $v)", params={"i": i, "w": words, "v": vec.tolist()})
    db.sql("INSERT INTO asks VALUES (9, NULL, NULL)")  # (no query: no rows)
    text_rows = db.sql("SELECT qid, id FROM asks, LATERAL omen_text('docs', asks.words, 3, filter := 'cat < 3')"
                       ).fetchall()
    assert sum(calls) == 5 and len(calls) < 5  # query rows reach the search in chunks, not one call each
    hybrid_rows = db.sql("SELECT qid, id, _relevance_score FROM asks, "
                         "LATERAL omen_hybrid('docs', asks.vec, asks.words, 3, exact := true)").fetchall()
    for i, (words, vec) in enumerate(zip(queries, vectors)):
        want = table.search(text=words, k=3, where="cat < 3")["id"].to_pylist()
        assert sorted(r for q, r in text_rows if q == i) == sorted(want)
        want = table.search(vec, text=words, k=3, exact=True)["id"].to_pylist()
        assert sorted(r for q, r, _ in hybrid_rows if q == i) == sorted(want)
    assert not [r for r in text_rows + hybrid_rows if r[0] == 9]


def test_sql_sees_writes_and_text_index_changes(texts_db, rng) -> None:
    db, table = texts_db
    table.add({**rows(np.array([5_000]), ["zebra zebra unique words"], rng), "cat": np.array([1])})
    assert db.sql("SELECT id FROM omen_text('docs', 'zebra', 5)").fetchall() == [(5_000,)]
    table.delete([5_000])
    assert db.sql("SELECT id FROM omen_text('docs', 'zebra', 5)").fetchall() == []


def test_bad_sql_text_input_is_refused(texts_db) -> None:
    db, table = texts_db
    db.create_table("plain", data={"id": [1], "vector": [[0.0] * DIM]})
    before = table.count()
    cases = [("SELECT * FROM omen_text('plain', 'x', 5)", "has no text index"),
             ("SELECT * FROM omen_text('docs', '   ', 5)", "text query is empty"),
             ("SELECT * FROM omen_text('docs', repeat('a', 10001), 5)", "at most 10,000"),
             ("SELECT * FROM omen_text('docs', 'arrow', 0)", "k must be a positive integer"),
             ("SELECT * FROM omen_text('nope', 'arrow', 5)", '"nope"'),
             ("SELECT * FROM omen_hybrid('docs', [1.0, 2.0], 'arrow', 5)", "has 2 components"),
             ("SELECT * FROM omen_hybrid('docs', repeat([0.5], 8), 'arrow', 5, text_weight := -1)",
              "text_weight must be a number")]
    for statement, message in cases:
        with pytest.raises(omendb.SqlError, match=message):  # (an OmenError, and a duckdb.Error)
            db.sql(statement).fetchall()
    assert table.count() == before
