"""The public API, used the way a user would: omendb.open, tables, writes, search."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import omendb
from conftest import Dataset, brute_force_distances, run_python

pytestmark = pytest.mark.usefixtures("segment_format")  # every test over Arrow IPC and Lance

DIM = 8


def meta_schema(dim: int = DIM) -> pa.Schema:
    """Schema of the rows made by the ``clustered`` fixture."""
    return pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), dim)),
                      pa.field("lang", pa.string()), pa.field("score", pa.float64()),
                      pa.field("cluster", pa.int64())])


@pytest.fixture
def db(db_path: Path):
    database = omendb.open(db_path)
    yield database
    database.close()


def sorted_rows(table: pa.Table, key: str = "id") -> pa.Table:
    return table.sort_by(key)


def vectors_of(table: pa.Table, column: str = "vector") -> np.ndarray:
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


class Reference:
    """What the table should hold: id -> row dict. Applies the same writes."""

    def __init__(self) -> None:
        self.rows: dict[Any, dict] = {}

    def add(self, dataset: Dataset) -> None:
        for row in dataset.rows():
            assert row["id"] not in self.rows
            self.rows[row["id"]] = row

    def upsert(self, dataset: Dataset) -> None:
        for row in dataset.rows():
            self.rows[row["id"]] = row

    def delete(self, ids) -> None:
        for i in ids:
            self.rows.pop(int(i), None)

    def search(self, q: np.ndarray, k: int, metric: str,
               predicate: Callable[[dict], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of all matching rows sorted by true distance."""
        rows = [r for r in self.rows.values() if predicate is None or predicate(r)]
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0)
        ids = np.array([r["id"] for r in rows])
        vecs = np.array([r["vector"] for r in rows], dtype=np.float32)
        dist = brute_force_distances(vecs, q[None, :], metric)[0]
        order = np.argsort(dist, kind="stable")
        return ids[order], dist[order]


def assert_search_matches(result: pa.Table, ref: Reference, q: np.ndarray, k: int, metric: str,
                          predicate: Callable[[dict], bool] | None = None) -> None:
    """The result holds the true top-k of the reference (distance ties tolerated)."""
    ids, dist = ref.search(q, k, metric, predicate)
    expected_k = min(k, len(ids))
    got_ids = result["id"].to_pylist()
    got_dist = np.asarray(result["_distance"].to_numpy(), dtype=np.float64)
    assert len(got_ids) == expected_k
    assert len(set(got_ids)) == expected_k
    assert np.all(np.diff(got_dist) >= -1e-4), "results are not sorted by _distance"
    true = dict(zip(ids.tolist(), dist.tolist()))
    for i, d in zip(got_ids, got_dist):
        assert i in true, f"returned id {i} is deleted or does not match the filter"
        assert d == pytest.approx(true[i], rel=1e-3, abs=1e-3)
    np.testing.assert_allclose(np.sort([true[i] for i in got_ids]), dist[:expected_k], rtol=1e-3, atol=1e-3)


# ======================================================================= database
def test_open_creates_the_folder(db_path: Path) -> None:
    assert not db_path.exists()
    with omendb.open(db_path) as db:
        assert db_path.is_dir()
        assert db.table_names() == []
        assert "docs" not in db
    with omendb.open(db_path) as db:  # reopening an empty database works
        assert db.table_names() == []


def _input(kind: str, d: Dataset) -> Any:
    if kind == "pandas":
        return pd.DataFrame({"id": d.ids, "vector": list(d.vectors), "lang": d.lang, "score": d.score,
                             "cluster": d.cluster})
    if kind == "pandas_lists":
        return pd.DataFrame({"id": d.ids, "vector": d.vectors.tolist(), "lang": d.lang, "score": d.score,
                             "cluster": d.cluster})
    if kind == "polars":
        return pl.DataFrame({"id": d.ids, "vector": d.vectors, "lang": d.lang, "score": d.score,
                             "cluster": d.cluster})
    if kind == "polars_lists":
        return pl.DataFrame({"id": d.ids, "vector": d.vectors.tolist(), "lang": d.lang, "score": d.score,
                             "cluster": d.cluster})
    if kind == "arrow_table":
        return d.arrow()
    if kind == "record_batch":
        return d.arrow().combine_chunks().to_batches()[0]
    if kind == "record_batch_reader":
        table = d.arrow()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=7))
    if kind == "list_of_dicts":
        return d.rows()
    if kind == "dict_of_columns":
        return {"id": d.ids, "vector": d.vectors, "lang": d.lang, "score": d.score, "cluster": d.cluster}
    if kind == "numpy":
        return d.vectors
    raise AssertionError(kind)


INPUT_KINDS = ["pandas", "pandas_lists", "polars", "polars_lists", "arrow_table", "record_batch",
               "record_batch_reader", "list_of_dicts", "dict_of_columns", "numpy"]


def _check_content(table: omendb.Table, d: Dataset, with_metadata: bool) -> None:
    assert table.count() == len(d) == len(table)
    rows = sorted_rows(table.to_arrow())
    assert rows["id"].to_pylist() == d.ids.tolist()
    np.testing.assert_array_equal(vectors_of(rows), d.vectors)
    if with_metadata:
        assert rows["lang"].to_pylist() == d.lang
        np.testing.assert_array_equal(rows["score"].to_numpy(), d.score)
        assert rows["cluster"].to_pylist() == d.cluster.tolist()
    else:
        assert rows.column_names == ["id", "vector"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_create_table_from_every_input_kind(db, clustered, kind: str) -> None:
    d = clustered(30, DIM)
    table = db.create_table("docs", data=_input(kind, d))
    assert table.dim == DIM
    assert table.metric == "l2"
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("id").type == pa.int64()
    _check_content(table, d, with_metadata=kind != "numpy")
    hit = table.search(d.vectors[11], k=1)
    assert hit["id"].to_pylist() == [int(d.ids[11])]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_add_accepts_every_input_kind(db, clustered, kind: str) -> None:
    first = clustered(10, DIM)
    table = db.create_table("docs", data=first.arrow())
    more = clustered(25, DIM, first_id=10)
    if kind == "numpy":
        more.lang, more.score, more.cluster = [None] * 25, np.full(25, np.nan), np.zeros(25, np.int64)
    assert table.add(_input(kind, more)) == 25
    assert table.count() == 35
    rows = sorted_rows(table.to_arrow())
    assert rows["id"].to_pylist() == list(range(35))
    np.testing.assert_array_equal(vectors_of(rows)[10:], more.vectors)
    if kind == "numpy":  # metadata absent -> nulls
        assert rows["lang"].to_pylist()[10:] == [None] * 25
    else:
        assert rows["lang"].to_pylist()[10:] == more.lang


def test_create_empty_table_with_dim_and_metric(db) -> None:
    table = db.create_table("empty", dim=5, metric="cosine")
    assert table.dim == 5 and table.metric == "cosine"
    assert table.schema.names == ["id", "vector"]
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 5)
    assert table.count() == 0 and len(table) == 0
    assert table.to_arrow().num_rows == 0
    result = table.search(np.ones(5), k=3)
    assert result.num_rows == 0
    assert result.column_names == ["id", "vector", "_distance"]
    table.add(np.eye(5, dtype=np.float32))
    assert table.to_arrow()["id"].to_pylist() == [0, 1, 2, 3, 4]
    assert table.search(np.array([0, 0, 1, 0, 0]), k=1)["id"].to_pylist() == [2]


def test_create_empty_table_with_schema(db) -> None:
    schema = pa.schema([pa.field("key", pa.string()), pa.field("emb", pa.list_(pa.float32())),
                        pa.field("lang", pa.string()), pa.field("year", pa.int32())])
    table = db.create_table("docs", schema=schema, dim=3, id_column="key", vector_column="emb", metric="dot")
    assert table.dim == 3 and table.metric == "dot"
    assert table.schema.names == ["key", "emb", "lang", "year"]
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 3)
    assert table.schema.field("key").type == pa.string()
    assert table.schema.field("year").type == pa.int32()
    table.add([{"key": "a", "emb": [1, 0, 0], "lang": "en", "year": 2001},
               {"key": "b", "emb": [0, 2, 0]}])
    assert table.get(["b"])["lang"].to_pylist() == [None]
    assert table.get(["a"])["year"].to_pylist() == [2001]
    assert table.search([0, 1, 0], k=1)["key"].to_pylist() == ["b"]
    fixed = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), 6))])
    other = db.create_table("fixed", schema=fixed)
    assert other.dim == 6


def test_exist_ok(db, clustered) -> None:
    d = clustered(10, DIM)
    table = db.create_table("docs", data=d.arrow())
    with pytest.raises(omendb.TableExistsError, match="docs"):
        db.create_table("docs", schema=meta_schema())
    again = db.create_table("docs", dim=DIM, exist_ok=True)
    assert again.count() == 10
    assert again is table
    assert table.count() == 10


def test_open_drop_names_contains(db_path: Path, clustered) -> None:
    d = clustered(10, DIM)
    with omendb.open(db_path) as db:
        b = db.create_table("b_table", data=d.arrow())
        db.create_table("a_table", dim=3)
        assert db.table_names() == ["a_table", "b_table"]
        assert "a_table" in db and "b_table" in db and "c" not in db
        assert db.open_table("b_table") is b
        assert db["b_table"] is b
        db.drop_table("b_table")
        assert db.table_names() == ["a_table"]
        assert "b_table" not in db
        assert not (db_path / "b_table").exists()
        with pytest.raises(omendb.ClosedError):
            b.count()
        with pytest.raises(omendb.TableNotFoundError):
            db.open_table("b_table")
        fresh = db.create_table("b_table", dim=DIM)  # the name can be reused
        assert fresh.count() == 0
    with omendb.open(db_path) as db:
        assert db.table_names() == ["a_table", "b_table"]
        assert db.open_table("b_table").count() == 0


def test_close_and_context_manager(db_path: Path, clustered) -> None:
    d = clustered(20, DIM)
    with omendb.open(db_path) as db:
        table = db.create_table("docs", data=d.arrow())
    with pytest.raises(omendb.ClosedError):
        db.table_names()
    with pytest.raises(omendb.ClosedError):
        table.count()
    with pytest.raises(omendb.ClosedError):
        table.add(d.slice(0, 1).arrow())
    with pytest.raises(omendb.ClosedError):
        table.search(d.vectors[0])
    db.close()  # closing twice is harmless
    db2 = omendb.open(db_path)
    _check_content(db2.open_table("docs"), d, with_metadata=True)
    db2.close()


def test_table_close_then_reopen_in_same_database(db, clustered) -> None:
    d = clustered(10, DIM)
    table = db.create_table("docs", data=d.arrow())
    table.close()
    with pytest.raises(omendb.ClosedError):
        table.get([1])
    reopened = db.open_table("docs")
    assert reopened is not table
    assert reopened.count() == 10


def test_second_writer_is_locked_out(db_path: Path, clustered) -> None:
    d = clustered(10, DIM)
    first = omendb.open(db_path)
    first.create_table("docs", data=d.arrow())
    second = omendb.open(db_path)
    with pytest.raises(omendb.TableLockedError, match="docs"):
        second.open_table("docs")
    first.close()
    assert second.open_table("docs").count() == 10
    second.close()


# ========================================================================= writes
def test_add_get_count(db, clustered) -> None:
    d = clustered(50, DIM)
    table = db.create_table("docs", schema=meta_schema())
    assert table.add(d.arrow()) == 50
    got = table.get([7, 999, 3])
    assert got["id"].to_pylist() == [7, 3]  # order asked, missing skipped
    assert got.column_names == ["id", "vector", "lang", "score", "cluster"]
    np.testing.assert_array_equal(vectors_of(got), d.vectors[[7, 3]])
    assert table.get([3], columns=["lang"]).to_pylist() == [{"lang": d.lang[3]}]
    assert table.get(np.array([1, 2]))["id"].to_pylist() == [1, 2]
    assert table.get(4)["id"].to_pylist() == [4]
    assert table.get([]).num_rows == 0


def test_get_after_flush_and_across_segments(db, clustered) -> None:
    d = clustered(60, DIM)
    table = db.create_table("docs", data=d.slice(0, 20).arrow())
    table.flush()
    table.add(d.slice(20, 40).arrow())
    table.flush()
    table.add(d.slice(40, 60).arrow())
    got = table.get([55, 5, 25, 6])
    assert got["id"].to_pylist() == [55, 5, 25, 6]
    np.testing.assert_array_equal(vectors_of(got), d.vectors[[55, 5, 25, 6]])
    assert got["lang"].to_pylist() == [d.lang[i] for i in (55, 5, 25, 6)]


@pytest.mark.parametrize("flushed", [False, True])
def test_add_existing_id_is_refused(db, clustered, flushed: bool) -> None:
    d = clustered(20, DIM)
    table = db.create_table("docs", data=d.arrow())
    if flushed:
        table.flush()
    clash = clustered(3, DIM, first_id=100)
    clash.ids = np.array([100, 13, 101])
    with pytest.raises(omendb.DuplicateKeyError, match="13"):
        table.add(clash.arrow())
    assert table.count() == 20
    assert table.get([100, 101]).num_rows == 0  # nothing of the batch was applied
    np.testing.assert_array_equal(vectors_of(table.get([13])), d.vectors[[13]])


@pytest.mark.parametrize("flushed", [False, True])
def test_upsert_replaces(db, clustered, flushed: bool) -> None:
    d = clustered(30, DIM)
    table = db.create_table("docs", data=d.arrow())
    if flushed:
        table.flush()
    new = clustered(3, DIM, first_id=0)
    new.ids = np.array([4, 9, 30])  # two replacements, one insert
    new.lang = ["xx", "yy", "zz"]
    assert table.upsert(new.arrow()) == 3
    assert table.count() == 31
    got = table.get([4, 9, 30])
    assert got["lang"].to_pylist() == ["xx", "yy", "zz"]
    np.testing.assert_array_equal(vectors_of(got), new.vectors)
    # the old vector of id 4 is gone: searching for it does not return id 4 at distance 0
    hits = table.search(d.vectors[4], k=31)
    assert hits["id"].to_pylist().count(4) == 1
    hit4 = hits.filter(pa.compute.equal(hits["id"], 4))
    expected = float(((new.vectors[0] - d.vectors[4]).astype(np.float64) ** 2).sum())
    assert hit4["_distance"][0].as_py() == pytest.approx(expected, rel=1e-3, abs=1e-3)
    # upserting again replaces the replacement
    table.upsert([{"id": 4, "vector": [0.5] * DIM, "lang": "zz"}])
    assert table.count() == 31
    assert table.get([4])["lang"].to_pylist() == ["zz"]
    assert table.search([0.5] * DIM, k=1)["id"].to_pylist() == [4]


def test_upsert_needs_ids(db, clustered) -> None:
    table = db.create_table("docs", data=clustered(5, DIM).arrow())
    with pytest.raises(omendb.SchemaError, match="id"):
        table.upsert(np.ones((2, DIM), np.float32))
    assert table.count() == 5


@pytest.mark.parametrize("flushed", [False, True])
def test_delete_by_ids(db, clustered, flushed: bool) -> None:
    d = clustered(40, DIM)
    table = db.create_table("docs", data=d.arrow())
    if flushed:
        table.flush()
    assert table.delete([3, 5, 1000]) == 2
    assert table.delete(7) == 1
    assert table.delete([3]) == 0  # already gone
    assert table.count() == 37
    assert table.get([3, 5, 7]).num_rows == 0
    remaining = set(table.to_arrow()["id"].to_pylist())
    assert remaining == set(range(40)) - {3, 5, 7}
    hits = table.search(d.vectors[3], k=40)
    assert hits.num_rows == 37
    assert not {3, 5, 7} & set(hits["id"].to_pylist())
    # a deleted id can be added again
    table.add([{"id": 3, "vector": [1.0] * DIM}])
    assert table.count() == 38
    assert table.search([1.0] * DIM, k=1)["id"].to_pylist() == [3]


def test_delete_repeated_id_counts_one_row(db, clustered) -> None:
    table = db.create_table("docs", data=clustered(10, DIM).arrow())
    assert table.delete([4, 4]) == 1  # one row was deleted
    assert table.count() == 9
    table.flush()
    assert table.delete([5, 5, 5]) == 1
    assert table.count() == 8


@pytest.mark.parametrize("flushed", [False, True])
def test_delete_where(db, clustered, flushed: bool) -> None:
    d = clustered(80, DIM)
    table = db.create_table("docs", data=d.arrow())
    if flushed:
        table.flush()
    english = {int(i) for i, lang in zip(d.ids, d.lang) if lang == "en"}
    assert english and len(english) < 80
    assert table.delete(where="lang = 'en'") == len(english)
    assert table.count() == 80 - len(english)
    assert "en" not in table.to_arrow()["lang"].to_pylist()
    assert table.delete(where="lang = 'en'") == 0
    assert table.delete(where="id < 10 AND score > 0.5") == len(
        [i for i in range(10) if i not in english and d.score[i] > 0.5])


def test_delete_arguments(db, clustered) -> None:
    table = db.create_table("docs", data=clustered(5, DIM).arrow())
    with pytest.raises(ValueError):
        table.delete()
    with pytest.raises(ValueError):
        table.delete([1], where="id = 1")
    assert table.count() == 5


# ================================================================ vectors & keys
@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32])
def test_numeric_vectors_are_cast_to_float32(db, rng, dtype) -> None:
    vectors = (rng.normal(size=(12, DIM)) * 10).astype(dtype)
    table = db.create_table("docs", data={"vector": vectors})
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    np.testing.assert_array_equal(vectors_of(table.to_arrow()), vectors.astype(np.float32))
    table.add({"vector": vectors})  # same again, ids assigned 12..23
    assert table.to_arrow()["id"].to_pylist() == list(range(24))


def test_arrow_list_types_are_cast(db, rng) -> None:
    vectors = rng.normal(size=(6, DIM))
    half = pa.array(list(vectors.astype(np.float16)), pa.list_(pa.float16()))
    table = db.create_table("docs", data=pa.table({"vector": half}))
    np.testing.assert_array_equal(vectors_of(table.to_arrow()), vectors.astype(np.float16).astype(np.float32))
    table.add(pa.table({"vector": pa.array(vectors.tolist(), pa.large_list(pa.float64()))}))
    table.add([{"vector": [int(x) for x in range(DIM)]}])  # python ints
    assert table.count() == 13
    np.testing.assert_array_equal(vectors_of(table.get([12])), [np.arange(DIM, dtype=np.float32)])


def test_string_primary_keys(db, rng) -> None:
    vectors = rng.normal(size=(5, DIM)).astype(np.float32)
    table = db.create_table("docs", data={"id": ["a", "b", "c", "d", "e"], "vector": vectors})
    assert table.schema.field("id").type == pa.string()
    assert table.get(["c", "a", "zz"])["id"].to_pylist() == ["c", "a"]
    assert table.search(vectors[3], k=1)["id"].to_pylist() == ["d"]
    with pytest.raises(omendb.DuplicateKeyError, match="'b'"):
        table.add({"id": ["b"], "vector": vectors[:1]})
    table.upsert({"id": ["b"], "vector": vectors[4:5] + 100})
    np.testing.assert_array_equal(vectors_of(table.get("b")), vectors[4:5] + 100)
    assert table.delete(["a", "nope"]) == 1
    # ids assigned for a string-key table are unique strings
    table.add(np.ones((3, DIM), np.float32))
    ids = table.to_arrow()["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 7
    assert all(isinstance(i, str) and i for i in ids)


def test_assigned_int_ids_continue_and_are_never_reused(db_path: Path, rng) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("docs", dim=4)
        table.add(rng.normal(size=(5, 4)))
        table.add({"id": [100], "vector": rng.normal(size=(1, 4))})
        table.add(rng.normal(size=(2, 4)))
        assert sorted(table.to_arrow()["id"].to_pylist()) == [0, 1, 2, 3, 4, 100, 101, 102]
        table.delete([101, 102])
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        table.add(rng.normal(size=(1, 4)))
        assert sorted(table.to_arrow()["id"].to_pylist()) == [0, 1, 2, 3, 4, 100, 103]


# ========================================================================= search
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_search_matches_brute_force(db, clustered, rng, metric: str) -> None:
    d = clustered(200, DIM)
    table = db.create_table("docs", data=d.arrow(), metric=metric)
    ref = Reference()
    ref.add(d)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32) * 3
        result = table.search(q, k=10)
        assert result.column_names == ["id", "vector", "lang", "score", "cluster", "_distance"]
        assert result.schema.field("_distance").type == pa.float32()
        assert_search_matches(result, ref, q, 10, metric)
        assert table.search(q, k=10, exact=True).equals(result)


def test_search_query_forms(db, clustered) -> None:
    d = clustered(50, DIM)
    table = db.create_table("docs", data=d.arrow())
    q = d.vectors[8]
    expected = table.search(q, k=5)
    assert expected["id"][0].as_py() == 8
    assert table.search(q.tolist(), k=5).equals(expected)
    assert table.search(q.astype(np.float64), k=5)["id"].equals(expected["id"])
    assert table.search(pa.array(q), k=5)["id"].equals(expected["id"])


def test_search_k_and_columns(db, clustered) -> None:
    d = clustered(30, DIM)
    table = db.create_table("docs", data=d.arrow())
    q = d.vectors[0]
    assert table.search(q, k=1).num_rows == 1
    everything = table.search(q, k=1000)
    assert sorted(everything["id"].to_pylist()) == list(range(30))
    narrow = table.search(q, k=3, columns=["id"])
    assert narrow.column_names == ["id", "_distance"]
    assert table.search(q, k=3, columns="lang").column_names == ["lang", "_distance"]
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            table.search(q, k=bad_k)
    with pytest.raises(omendb.SchemaError, match="nope"):
        table.search(q, k=3, columns=["id", "nope"])


def test_batched_search(db, clustered, rng) -> None:
    d = clustered(120, DIM)
    table = db.create_table("docs", data=d.arrow())
    table.flush()
    table.add(clustered(40, DIM, first_id=120).arrow())  # segment + memtable
    queries = rng.normal(size=(4, DIM)).astype(np.float32) * 3
    result = table.search(queries, k=6)
    assert result.column_names[0] == "_query"
    assert result.column_names[-1] == "_distance"
    assert result.num_rows == 24
    assert result["_query"].to_pylist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    for qi in range(4):
        part = result.filter(pa.compute.equal(result["_query"], qi)).drop_columns(["_query"])
        single = table.search(queries[qi], k=6)
        assert part["id"].to_pylist() == single["id"].to_pylist()
        np.testing.assert_allclose(part["_distance"].to_numpy(), single["_distance"].to_numpy(), rtol=1e-5,
                                   atol=1e-5)
    one = table.search(queries[:1], k=3)  # a 2-D array of one query is still a batch
    assert one["_query"].to_pylist() == [0, 0, 0]
    where = table.search(queries, k=4, where="lang = 'de'", columns=["id", "lang"])
    assert where.column_names == ["_query", "id", "lang", "_distance"]
    assert set(where["lang"].to_pylist()) == {"de"}


def test_search_where(db, clustered, rng) -> None:
    d = clustered(150, DIM)
    table = db.create_table("docs", data=d.arrow())
    ref = Reference()
    ref.add(d)
    q = rng.normal(size=DIM).astype(np.float32)
    result = table.search(q, k=8, where="lang = 'fr' AND score > 0.3", columns=["id", "lang", "score"])
    assert result.column_names == ["id", "lang", "score", "_distance"]
    assert all(r["lang"] == "fr" and r["score"] > 0.3 for r in result.to_pylist())
    assert_search_matches(result, ref, q, 8, "l2", lambda r: r["lang"] == "fr" and r["score"] > 0.3)
    # the filter column need not be among the returned columns
    only_ids = table.search(q, k=8, where="cluster = 1", columns=["id"])
    assert set(only_ids["id"].to_pylist()) <= {int(i) for i in d.ids[d.cluster == 1]}
    assert table.search(q, k=5, where="lang = 'klingon'").num_rows == 0


def test_to_arrow_pandas_polars(db, clustered) -> None:
    d = clustered(25, DIM)
    table = db.create_table("docs", data=d.arrow())
    table.flush()
    table.add(clustered(5, DIM, first_id=25).arrow())
    table.delete([0])
    arrow = table.to_arrow()
    assert isinstance(arrow, pa.Table)
    assert arrow.schema.equals(table.schema)
    assert arrow.num_rows == 29
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert sorted(frame["id"].tolist()) == list(range(1, 30))
    assert list(frame.columns) == ["id", "vector", "lang", "score", "cluster"]
    np.testing.assert_array_equal(np.stack(frame.sort_values("id")["vector"].to_list())[:24], d.vectors[1:])
    polars = table.to_polars()
    assert isinstance(polars, pl.DataFrame)
    assert polars.height == 29
    assert sorted(polars["id"].to_list()) == list(range(1, 30))
    result = table.search(d.vectors[3], k=3)
    assert list(result.to_pandas().columns) == ["id", "vector", "lang", "score", "cluster", "_distance"]
    assert pl.from_arrow(result).height == 3


def test_schema_dim_metric_version_stats(db_path: Path, clustered) -> None:
    d = clustered(100, DIM)
    with omendb.open(db_path) as db:
        table = db.create_table("docs", schema=meta_schema(), metric="dot")
        assert table.version == 1
        s = table.stats()
        for key in ("rows", "deleted_rows", "segments", "indexed_segments", "bytes", "version"):
            assert key in s
        assert (s["rows"], s["deleted_rows"], s["segments"], s["version"]) == (0, 0, 0, 1)
        table.add(d.slice(0, 60).arrow())
        s = table.stats()
        assert (s["rows"], s["segments"], s["memtable_rows"], s["version"]) == (60, 0, 60, 1)
        table.flush()
        s = table.stats()
        assert (s["rows"], s["segments"], s["memtable_rows"], s["version"]) == (60, 1, 0, 2)
        assert table.version == 2
        bytes_one_segment = s["bytes"]
        assert bytes_one_segment > 60 * DIM * 4
        table.delete(list(range(10)))
        table.add(d.slice(60, 100).arrow())
        s = table.stats()
        assert (s["rows"], s["deleted_rows"], s["segments"], s["memtable_rows"]) == (90, 10, 1, 40)
        table.flush()
        s = table.stats()
        assert (s["rows"], s["deleted_rows"], s["segments"], s["version"]) == (90, 10, 2, 3)
        assert 0 <= s["indexed_segments"] <= s["segments"]
        assert s["bytes"] > bytes_one_segment
        table.flush()  # nothing new: no new version
        assert table.version == 3
        assert table.metric == "dot" and table.dim == DIM and s["dim"] == DIM
        schema = table.schema
    # (no background merge: the two small segments would join at once, and this part counts them)
    with omendb.open(db_path, compaction=False) as db:
        table = db.open_table("docs")
        s = table.stats()
        assert (s["rows"], s["deleted_rows"], s["segments"], s["version"]) == (90, 10, 2, 3)
        assert table.schema.equals(schema)
        assert table.metric == "dot"
        # deleting every row of a segment drops the segment
        table.delete(list(range(10, 60)))
        table.flush()
        s = table.stats()
        assert (s["rows"], s["deleted_rows"], s["segments"]) == (40, 0, 1)
        assert table.count() == 40


# ================================================================== persistence
def test_reopen_after_close_keeps_everything(db_path: Path, clustered, rng) -> None:
    d = clustered(90, DIM)
    with omendb.open(db_path) as db:
        table = db.create_table("docs", data=d.slice(0, 50).arrow(), metric="cosine")
        table.flush()
        table.add(d.slice(50, 90).arrow())
        table.delete([1, 60])
        table.upsert(d.slice(2, 3).arrow().set_column(2, "lang", pa.array(["new"])))
        queries = rng.normal(size=(3, DIM)).astype(np.float32)
        before_rows = sorted_rows(table.to_arrow())
        before_hits = table.search(queries, k=7)
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        assert table.metric == "cosine"
        assert sorted_rows(table.to_arrow()).equals(before_rows)
        after = table.search(queries, k=7)
        assert after["id"].equals(before_hits["id"])
        np.testing.assert_allclose(after["_distance"].to_numpy(), before_hits["_distance"].to_numpy(), rtol=1e-5,
                                   atol=1e-6)
        assert table.get([2])["lang"].to_pylist() == ["new"]
        assert table.count() == 88


WRITE_WITHOUT_CLOSE = """
import os, sys
import numpy as np
import omendb
db = omendb.open(sys.argv[1])
t = db.create_table("t", dim=4)
t.add({"id": np.arange(10), "vector": np.arange(40, dtype="float32").reshape(10, 4)})
if sys.argv[2] == "flush":
    t.flush()
t.delete([3])
t.upsert({"id": [5], "vector": [[9.0, 9.0, 9.0, 9.0]]})
t.add(np.full((2, 4), 7.0, dtype="float32"))   # ids 10, 11 assigned
print(t.stats()["segments"], flush=True)
os._exit(0)   # no close(): whatever is not in a segment lives only in the WAL
"""


@pytest.mark.parametrize("mode", ["wal_only", "flush"])
def test_writes_survive_exit_without_close(db_path: Path, mode: str) -> None:
    result = run_python(WRITE_WITHOUT_CLOSE, db_path, mode)
    assert int(result.stdout.strip()) == (0 if mode == "wal_only" else 1)
    expected = {i: [4.0 * i + j for j in range(4)] for i in range(10) if i != 3}
    expected[5] = [9.0] * 4
    expected[10] = expected[11] = [7.0] * 4
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        s = table.stats()
        assert s["segments"] == (0 if mode == "wal_only" else 1)
        assert s["memtable_rows"] == (11 if mode == "wal_only" else 3)
        assert table.count() == 11
        rows = {r["id"]: r["vector"] for r in table.to_arrow().to_pylist()}
        assert rows == expected
        assert table.search([9.0] * 4, k=1)["id"].to_pylist() == [5]
        assert table.add(np.zeros((1, 4), np.float32)) == 1  # next assigned id is 12
        assert table.get([12]).num_rows == 1
    with omendb.open(db_path) as db:  # and after a clean close everything is in segments
        table = db.open_table("t")
        assert table.count() == 12
        assert table.stats()["memtable_rows"] == 0


def test_replayed_wal_is_flushed_when_over_the_threshold(db_path: Path) -> None:
    code = """
    import os, sys
    import numpy as np
    import omendb
    db = omendb.open(sys.argv[1])
    t = db.create_table("t", dim=16)
    for i in range(4):
        t.add(np.random.default_rng(i).normal(size=(100, 16)))
    os._exit(0)
    """
    run_python(code, db_path)
    with omendb.open(db_path, memtable_bytes=4096) as db:
        table = db.open_table("t")
        assert table.count() == 400
        assert table.stats()["segments"] >= 1
        assert sorted(table.to_arrow()["id"].to_pylist()) == list(range(400))


# ============================================================ flushes & segments
def _predicates():
    return [
        ("lang = 'en'", lambda r: r["lang"] == "en"),
        ("score < 0.1", lambda r: r["score"] < 0.1),
        ("cluster = 2 AND score > 0.5", lambda r: r["cluster"] == 2 and r["score"] > 0.5),
        ("id % 7 = 0", lambda r: r["id"] % 7 == 0),
        ("lang IN ('de', 'fr') OR id < 5", lambda r: r["lang"] in ("de", "fr") or r["id"] < 5),
        ("id = 123456", lambda r: False),
    ]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_many_segments_and_memtable_merge_like_brute_force(db_path: Path, clustered, rng, metric) -> None:
    ref = Reference()
    with omendb.open(db_path, memtable_bytes=6 << 10, compaction=False) as db:
        table = db.create_table("docs", schema=meta_schema(), metric=metric)
        next_id = 0
        for step in range(14):
            batch = clustered(40, DIM, first_id=next_id)
            next_id += 40
            table.add(batch.arrow())
            ref.add(batch)
            if step % 3 == 2:  # delete some old rows (living in segments by now) and upsert others
                victims = rng.choice(next_id, 8, replace=False)
                table.delete(victims)
                ref.delete(victims)
                replace_ids = rng.choice(sorted(ref.rows), 4, replace=False)
                up = clustered(4, DIM)
                up.ids = np.asarray(replace_ids, np.int64)
                table.upsert(up.arrow())
                ref.upsert(up)
        s = table.stats()
        assert s["segments"] >= 3, s
        assert s["memtable_rows"] > 0, s
        assert s["rows"] == table.count() == len(ref.rows)
        _check_searches(table, ref, rng, metric)
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        assert table.count() == len(ref.rows)
        assert set(table.to_arrow()["id"].to_pylist()) == set(ref.rows)
        _check_searches(table, ref, rng, metric)


def _check_searches(table: omendb.Table, ref: Reference, rng: np.random.Generator, metric: str) -> None:
    rows = table.to_arrow()
    assert {r["id"]: r["lang"] for r in rows.to_pylist()} == {i: r["lang"] for i, r in ref.rows.items()}
    queries = [rng.normal(size=DIM).astype(np.float32) * 3 for _ in range(3)]
    queries.append(np.array(ref.rows[sorted(ref.rows)[5]]["vector"], np.float32))
    for q in queries:
        for k in (1, 10, 60):
            assert_search_matches(table.search(q, k=k), ref, q, k, metric)
        for where, predicate in _predicates():
            for k in (1, 7, 50):
                result = table.search(q, k=k, where=where)
                violating = [r["id"] for r in result.to_pylist() if not predicate(r)]
                assert not violating, f"{where!r} returned rows that do not match: {violating}"
                assert_search_matches(result, ref, q, k, metric, predicate)
    batch = np.stack(queries)
    result = table.search(batch, k=9, where="lang <> 'ja'")
    for qi, q in enumerate(queries):
        part = result.filter(pa.compute.equal(result["_query"], qi))
        assert_search_matches(part, ref, q, 9, metric, lambda r: r["lang"] != "ja")


def test_deleted_rows_never_come_back(db_path: Path, clustered, rng) -> None:
    d = clustered(300, DIM)
    deleted: set[int] = set()
    with omendb.open(db_path, memtable_bytes=8 << 10) as db:
        table = db.create_table("docs", schema=meta_schema())
        for start in range(0, 300, 50):
            table.add(d.slice(start, start + 50).arrow())
            victims = rng.choice(start + 50, 15, replace=False)
            table.delete(victims)
            deleted |= {int(v) for v in victims}
        for q in d.vectors[list(deleted)[:20]]:
            hits = table.search(q, k=300)
            assert not deleted & set(hits["id"].to_pylist())
            assert hits.num_rows == 300 - len(deleted)
        assert not deleted & set(table.to_arrow()["id"].to_pylist())
        assert table.get(sorted(deleted)).num_rows == 0
        assert table.count() == 300 - len(deleted)
    with omendb.open(db_path) as db:
        table = db.open_table("docs")
        assert table.count() == 300 - len(deleted)
        hits = table.search(d.vectors[0], k=300)
        assert not deleted & set(hits["id"].to_pylist())
        assert table.delete(where="id >= 0") == 300 - len(deleted)
        assert table.count() == 0
        assert table.search(d.vectors[0], k=5).num_rows == 0


# ==================================================================== concurrency
@pytest.fixture
def fast_thread_switches():
    """Switch threads very often so that races show up within a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _run_concurrently(writer: Callable[[], None], reader: Callable[[], None], seconds: float) -> None:
    import threading

    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(body):
        try:
            while not stop.is_set():
                body()
        except BaseException as exc:  # report in the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(writer,)), threading.Thread(target=loop, args=(reader,))]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]


def test_readers_see_consistent_snapshots_while_writer_adds_and_flushes(db_path: Path, rng,
                                                                        fast_thread_switches) -> None:
    # (no compaction: merges would make the segment count below say nothing about flushes)
    with omendb.open(db_path, memtable_bytes=8 << 10, fsync=False, compaction=False) as db:
        table = db.create_table("docs", dim=DIM)
        written = [0]

        def writer():
            start = written[0]
            table.add({"id": np.arange(start, start + 25), "vector": rng.normal(size=(25, DIM))})
            written[0] = start + 25

        q = np.zeros(DIM, np.float32)

        def reader():
            before = written[0]
            result = table.search(q, k=40)
            after = written[0]
            ids = result["id"].to_pylist()
            assert len(ids) == len(set(ids)), "a row was returned twice (segment + memtable)"
            assert min(40, before) <= len(ids) <= 40
            assert all(0 <= i < after + 25 for i in ids)
            n = table.count()
            assert before <= n <= written[0] + 25

        _run_concurrently(writer, reader, 1.0)
        assert table.stats()["segments"] >= 2
        assert table.count() == written[0]


def test_upsert_is_atomic_for_concurrent_readers(db_path: Path, rng, fast_thread_switches) -> None:
    # Replacing rows never makes them disappear for a moment: a reader always sees
    # either the old or the new version of every row.
    n = 50
    with omendb.open(db_path, memtable_bytes=16 << 10, fsync=False) as db:
        table = db.create_table("docs", data={"id": np.arange(n), "vector": rng.normal(size=(n, DIM))})
        table.flush()
        seen: list[int] = []

        def writer():
            ids = rng.choice(n, 5, replace=False)
            table.upsert({"id": ids, "vector": rng.normal(size=(5, DIM))})

        def reader():
            seen.append(table.count())

        _run_concurrently(writer, reader, 1.0)
        assert len(seen) > 100
        wrong = [c for c in seen if c != n]
        assert not wrong, f"{len(wrong)} of {len(seen)} reads saw {sorted(set(wrong))} rows instead of {n}"


def test_a_failed_log_sync_stops_writes_until_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After fdatasync of the WAL fails, the table refuses writes (the log's state is unknown)
    instead of writing on; reopening the database gives a writable table again."""
    import errno
    import os

    path = tmp_path / "db"
    db = omendb.open(path)
    table = db.create_table("t", dim=4)
    table.add({"id": [1], "vector": [[1.0, 0.0, 0.0, 0.0]]})

    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", broken_disk)
        with pytest.raises(OSError, match="Input/output error"):
            table.add({"id": [2], "vector": [[0.0, 1.0, 0.0, 0.0]]})
    with pytest.raises(omendb.errors.ReadOnlyError, match="syncing its write-ahead log failed"):
        table.add({"id": [3], "vector": [[0.0, 0.0, 1.0, 0.0]]})
    assert table.to_arrow().column("id").to_pylist() == [1]  # the failed add was never applied
    db.close()
    with omendb.open(path) as db:
        table = db.open_table("t")
        assert table.add({"id": [3], "vector": [[0.0, 0.0, 1.0, 0.0]]}) == 1
        assert sorted(table.to_arrow().column("id").to_pylist()) == [1, 3]
