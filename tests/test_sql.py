"""DuckDB SQL: omen_knn / omen_scan agree with the Python API, in joins, LATERAL, filters, examples."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import omendb

pytestmark = pytest.mark.usefixtures("segment_format")  # every test over Arrow IPC and Lance

DIM = 8
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "sql" / "examples").glob("*.sql"))
CATEGORIES = ["books", "music", "films"]


@pytest.fixture
def db(tmp_path: Path):
    rng = np.random.default_rng(11)
    n = 3_000
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors[n - 1] = vectors[5]  # an exact duplicate for the dedup example
    database = omendb.open(tmp_path / "db", memtable_bytes=96 << 10, compaction=False)
    table = database.create_table(
        "docs", dim=DIM, metric="l2", index=omendb.HnswConfig(min_rows=500, ef_construction=64),
        schema=pa.schema([("id", pa.int64()), ("category", pa.string()), ("title", pa.string()),
                          ("vector", pa.list_(pa.float32(), DIM))]))
    for start in range(0, n, 500):
        ids = np.arange(start, min(n, start + 500))
        table.add({"id": ids, "category": [CATEGORIES[i % 3] for i in ids], "title": [f"doc {i}" for i in ids],
                   "vector": vectors[ids]})
    table.wait_for_index(timeout=120)
    database.vectors = vectors
    yield database
    database.close()


def sql_ids(db, query: str, params=None) -> list:
    return [row[0] for row in db.sql(query, params=params).fetchall()]


@pytest.mark.parametrize("exact", [False, True])
def test_knn_equals_python_api(db, exact: bool) -> None:
    table = db.open_table("docs")
    assert table.stats()["indexed_segments"] >= 1
    for q in db.vectors[:10] + 0.01:
        expected = table.search(q, k=7, exact=exact)
        got = db.sql(f"SELECT id, category, _distance FROM omen_knn('docs', ?::FLOAT[{DIM}], 7, exact := {exact})",
                     params=[q.tolist()]).fetchall()
        assert [r[0] for r in got] == expected["id"].to_pylist()
        assert [r[1] for r in got] == expected["category"].to_pylist()
        np.testing.assert_allclose([r[2] for r in got], expected["_distance"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_knn_returns_all_columns_plus_distance_nearest_first(db) -> None:
    result = db.sql(f"SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 4)", params=[db.vectors[3].tolist()]).arrow()
    if isinstance(result, pa.RecordBatchReader):
        result = result.read_all()
    assert result.column_names == ["id", "category", "title", "vector", "_distance"]
    assert result["id"][0].as_py() == 3
    distances = result["_distance"].to_pylist()
    assert distances == sorted(distances)


def test_query_as_double_list_and_blob(db) -> None:
    q = db.vectors[42]
    as_float = sql_ids(db, f"SELECT id FROM omen_knn('docs', ?::FLOAT[{DIM}], 3)", [q.tolist()])
    as_double = sql_ids(db, "SELECT id FROM omen_knn('docs', ?::DOUBLE[], 3)", [q.astype(float).tolist()])
    as_blob = sql_ids(db, "SELECT id FROM omen_knn('docs', ?::BLOB, 3)", [q.astype("<f4").tobytes()])
    assert as_float == as_double == as_blob
    assert as_float[0] == 42


def test_filter_applies_before_ranking(db) -> None:
    q = db.vectors[0]
    rows = db.sql(f"SELECT id, category FROM omen_knn('docs', ?::FLOAT[{DIM}], 10, filter := 'category = ''films''')",
                  params=[q.tolist()]).fetchall()
    assert len(rows) == 10 and {r[1] for r in rows} == {"films"}
    expected = db.open_table("docs").search(q, k=10, where="category = 'films'", exact=True)["id"].to_pylist()
    assert [r[0] for r in rows] == expected
    few = sql_ids(db, f"SELECT id FROM omen_knn('docs', ?::FLOAT[{DIM}], 10, filter := 'id IN (1, 2, 3)')",
                  [q.tolist()])
    assert sorted(few) == [1, 2, 3]


def test_knn_in_join_cte_and_subquery(db) -> None:
    db.sql("CREATE TEMP TABLE owners AS SELECT * FROM (VALUES ('books', 'Ada'), ('music', 'Grace')) t(category, owner)")
    q = db.vectors[7].tolist()
    joined = db.sql(f"""
        WITH hits AS (SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 20))
        SELECT h.id, o.owner FROM hits h JOIN owners o USING (category)
        WHERE h.id IN (SELECT id FROM omen_scan('docs') WHERE id < 2000)""", params=[q]).fetchall()
    expected = db.open_table("docs").search(np.asarray(q), k=20).to_pylist()
    owners = {"books": "Ada", "music": "Grace"}
    want = sorted((r["id"], owners[r["category"]]) for r in expected if r["category"] in owners and r["id"] < 2000)
    assert sorted(joined) == want


def test_lateral_runs_batched_and_matches_per_query_search(db, sql_udf_calls) -> None:
    calls = sql_udf_calls
    db.sql("CREATE TEMP TABLE queries AS SELECT id AS qid, vector AS vec FROM omen_scan('docs') WHERE id < 300")
    rows = db.sql("SELECT qid, id FROM queries q, LATERAL omen_knn('docs', q.vec, 3) ORDER BY qid, _distance").fetchall()
    assert len(rows) == 300 * 3
    assert sum(calls) >= 300 and len(calls) < 10  # a few batched calls, not one per query row
    table = db.open_table("docs")
    batch = table.search(db.vectors[:300], k=3)
    expected = sorted(zip(batch["_query"].to_pylist(), batch["id"].to_pylist()))
    assert sorted(rows) == expected


def test_scan_returns_every_live_row_and_sees_new_writes(db) -> None:
    table = db.open_table("docs")
    assert db.sql("SELECT count(*) FROM omen_scan('docs')").fetchall()[0][0] == table.count() == 3_000
    table.delete(where="category = 'music'")
    table.add({"id": [99_999], "category": ["new"], "title": ["fresh"], "vector": [np.ones(DIM)]})
    counts = dict(db.sql("SELECT category, count(*) FROM omen_scan('docs') GROUP BY ALL").fetchall())
    assert "music" not in counts and counts["new"] == 1
    assert sum(counts.values()) == table.count()
    assert sql_ids(db, f"SELECT id FROM omen_knn('docs', ?::FLOAT[{DIM}], 1)", [np.ones(DIM).tolist()]) == [99_999]
    vectors = db.sql("SELECT vector FROM omen_scan('docs') WHERE id = 9").fetchall()[0][0]
    np.testing.assert_allclose(vectors, db.vectors[9])  # id 9 is a book: not deleted


def test_duckdb_connect_registers_on_a_given_connection(db) -> None:
    con = duckdb.connect()
    assert omendb.duckdb_connect(db, con) is con
    assert con.sql("SELECT count(*) FROM omen_scan('docs')").fetchall()[0][0] == 3_000
    fresh = omendb.duckdb_connect(db)
    assert fresh.sql(f"SELECT count(*) FROM omen_knn('docs', ?::FLOAT[{DIM}], 5)",
                     params=[db.vectors[0].tolist()]).fetchall()[0][0] == 5


def test_knn_returns_each_tables_own_columns_as_tables_come_and_go(db) -> None:
    # omen_knn's UDF answers for every table at once (a struct with one field per table):
    # each call must come back with its own table's columns, nested ones intact.
    notes = db.create_table("notes", schema=pa.schema([
        ("id", pa.string()), ("tags", pa.list_(pa.string())), ("meta", pa.struct([("n", pa.int32())])),
        ("vector", pa.list_(pa.float32(), 3))]), metric="cosine")
    notes.add({"id": ["a", "b"], "tags": [["x", "y"], []], "meta": [{"n": 1}, {"n": 2}],
               "vector": [[1, 0, 0], [0, 1, 0]]})
    got = db.sql("SELECT * FROM omen_knn('notes', [0.9, 0.1, 0]::FLOAT[], 2)")
    assert got.columns == ["id", "tags", "meta", "vector", "_distance"]
    rows = got.fetchall()
    assert [r[:3] for r in rows] == [("a", ["x", "y"], {"n": 1}), ("b", [], {"n": 2})]
    assert rows[0][4] < rows[1][4]
    docs = db.sql(f"SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 1)", params=[db.vectors[7].tolist()])
    assert docs.columns == ["id", "category", "title", "vector", "_distance"]
    assert docs.fetchall()[0][0] == 7
    db.drop_table("notes")  # the same name again, other columns
    db.create_table("notes", data={"id": [1], "score": [0.5], "vector": [[0.0, 0.0, 1.0, 0.0]]})
    again = db.sql("SELECT * FROM omen_knn('notes', [0, 0, 1, 0]::FLOAT[], 1)")
    assert again.columns == ["id", "score", "vector", "_distance"]
    assert again.fetchall()[0][:2] == (1, 0.5)
    db.drop_table("notes")
    with pytest.raises(duckdb.Error, match="notes"):  # a dropped table is gone from SQL too
        db.sql("SELECT * FROM omen_knn('notes', [0, 0, 1, 0]::FLOAT[], 1)").fetchall()


@pytest.mark.parametrize("query, params, message", [
    ("SELECT * FROM omen_knn('nope', [1, 2]::FLOAT[], 3)", None, "nope"),
    ("SELECT * FROM omen_knn('docs', [1, 2]::FLOAT[], 3)", None, "has dim 8"),
    (f"SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 3, filter := 'nosuch = 1')", "q", "nosuch"),
    (f"SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 3, filter := '1 = 1) OR (1 = 1')", "q", "where"),
    (f"SELECT * FROM omen_knn('docs', ?::FLOAT[{DIM}], 0)", "q", "k must be"),
])
def test_errors_name_the_problem(db, query: str, params, message: str) -> None:
    with pytest.raises(duckdb.Error, match=message):
        db.sql(query, params=[np.zeros(DIM).tolist()] if params else None).fetchall()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_sql_example_runs(db, example: Path) -> None:
    statements = [s.query for s in duckdb.extract_statements(example.read_text())]
    result = None
    for statement in statements:
        result = db.sql(statement)
    rows = result.fetchall()
    assert rows, f"{example.name} returned no rows"
    if example.name == "dedup_by_similarity.sql":
        assert (2_999, 5, 0.0) in rows
    if example.name == "top_per_category.sql":
        assert [r[0] for r in rows] == sorted(CATEGORIES)

