"""HNSW indexes per segment: recall, deletes, filters, background builds, crashes, corruption."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import omendb
from omendb.index.hnsw import HnswConfig

pytestmark = pytest.mark.usefixtures("segment_format")  # every test over Arrow IPC and Lance

DIM = 24
CONFIG = HnswConfig(m=12, ef_construction=64, ef_search=64, min_rows=1_000)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    return (centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, DIM))).astype(np.float32)


def make_table(path: Path, n: int = 6_000, metric: str = "cosine", **open_kw):
    open_kw.setdefault("compaction", False)  # these tests look at per-segment indexes
    db = omendb.open(path, memtable_bytes=open_kw.pop("memtable_bytes", 256 << 10), **open_kw)
    vectors = clustered(n)
    ids = np.arange(n)
    table = db.create_table("t", dim=DIM, metric=metric, index=CONFIG,
                            schema=pa.schema([("id", pa.int64()), ("bucket", pa.int64()),
                                              ("vector", pa.list_(pa.float32(), DIM))]))
    for start in range(0, n, 1_000):  # several calls: the small memtable makes several segments
        chunk = slice(start, start + 1_000)
        table.add({"id": ids[chunk], "bucket": ids[chunk] % 100, "vector": vectors[chunk]})
    return db, table, vectors


def recall(approx, exact, n_queries: int) -> float:
    a = approx.to_pandas().groupby("_query")["id"].apply(set)
    e = exact.to_pandas().groupby("_query")["id"].apply(set)
    return float(np.mean([len(a.get(i, set()) & e[i]) / len(e[i]) for i in range(n_queries)]))


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_indexed_search_recall_against_exact(tmp_path: Path, metric: str) -> None:
    db, table, vectors = make_table(tmp_path / "db", metric=metric)
    table.flush()
    assert table.wait_for_index(timeout=120)
    stats = table.stats()
    assert stats["indexed_segments"] >= 2 and stats["unindexed_segments"] == 0
    queries = clustered(100, seed=1)
    approx = table.search(queries, k=10)
    exact = table.search(queries, k=10, exact=True)
    assert recall(approx, exact, 100) >= 0.95
    # distances of indexed results are true distances (same as the exact scan computes)
    first = table.search(queries[0], k=5)
    check = table.search(queries[0], k=len(table), exact=True, columns=["id"]).to_pandas().set_index("id")
    np.testing.assert_allclose(first["_distance"].to_numpy(), check.loc[first["id"].to_pylist(), "_distance"],
                               rtol=1e-4, atol=1e-4)
    db.close()


def test_deleted_rows_never_returned_and_k_rows_always(tmp_path: Path) -> None:
    db, table, vectors = make_table(tmp_path / "db")
    table.flush()
    table.wait_for_index(timeout=120)
    deleted = np.arange(0, 6_000, 2)  # half the rows, in every segment
    assert table.delete(deleted) == deleted.size
    queries = vectors[:50]  # the queries themselves are (mostly) deleted rows
    hits = table.search(queries, k=10)
    assert not set(hits["id"].to_pylist()) & set(deleted.tolist())
    assert hits.to_pandas().groupby("_query").size().eq(10).all()
    table.flush()  # deletions published: still excluded after reopen
    db.close()
    with omendb.open(tmp_path / "db") as db:
        again = db.open_table("t").search(queries, k=10)
        assert not set(again["id"].to_pylist()) & set(deleted.tolist())


@pytest.mark.parametrize("selectivity", [1, 10, 50, 100])
def test_filtered_search_recall_and_no_violations(tmp_path: Path, selectivity: int) -> None:
    db, table, vectors = make_table(tmp_path / "db", n=8_000)
    table.flush()
    table.wait_for_index(timeout=120)
    where = f"bucket < {selectivity}"
    queries = clustered(60, seed=3)
    approx = table.search(queries, k=10, where=where, columns=["id", "bucket"])
    exact = table.search(queries, k=10, where=where, columns=["id", "bucket"], exact=True)
    assert (np.asarray(approx["bucket"]) < selectivity).all()
    assert approx.to_pandas().groupby("_query").size().eq(10).all()  # at least 80 rows match
    assert recall(approx, exact, 60) >= 0.95
    db.close()


def test_filter_matching_fewer_than_k_rows_returns_all_of_them(tmp_path: Path) -> None:
    db, table, _ = make_table(tmp_path / "db")
    table.flush()
    table.wait_for_index(timeout=120)
    hits = table.search(clustered(1, seed=5)[0], k=10, where="id IN (5, 77, 1234)")
    assert sorted(hits["id"].to_pylist()) == [5, 77, 1234]
    db.close()


def test_adds_and_searches_while_index_builds(tmp_path: Path) -> None:
    db, table, vectors = make_table(tmp_path / "db", n=4_000)
    extra = clustered(4_000, seed=9)
    for start in range(0, 4_000, 500):  # writes proceed while the builder works
        table.add({"id": np.arange(10_000 + start, 10_500 + start), "bucket": np.zeros(500, int),
                   "vector": extra[start:start + 500]})
        hits = table.search(extra[start], k=1)
        assert hits["id"].to_pylist() == [10_000 + start]  # a new row is searchable at once
    assert table.count() == 8_000
    assert table.wait_for_index(timeout=120)
    assert table.search(extra[123], k=1)["id"].to_pylist() == [10_123]
    db.close()


def test_create_index_changes_parameters_and_rebuilds(tmp_path: Path) -> None:
    db, table, _ = make_table(tmp_path / "db")
    table.flush()
    table.wait_for_index(timeout=120)
    before = table.version
    table.create_index(m=8, ef_construction=40)
    assert table.index_config.m == 8
    assert table.wait_for_index(timeout=120)
    stats = table.stats()
    assert stats["unindexed_segments"] == 0 and stats["index"]["m"] == 8
    assert table.version > before
    db.close()
    with omendb.open(tmp_path / "db") as db:  # parameters persist
        assert db.open_table("t").index_config.ef_construction == 40


def test_invalid_index_parameters_are_refused(tmp_path: Path) -> None:
    db, table, _ = make_table(tmp_path / "db", n=10)
    with pytest.raises(ValueError, match="m must be"):
        table.create_index(m=0)
    with pytest.raises(ValueError, match="ef must be"):
        table.search(np.zeros(DIM), ef=0)
    db.close()


def test_corrupt_index_file_is_reported_never_used_and_rebuilt(tmp_path: Path) -> None:
    db, table, vectors = make_table(tmp_path / "db")
    table.flush()
    table.wait_for_index(timeout=120)
    db.close()
    index_files = sorted((tmp_path / "db" / "t" / "segments").glob("*.hnsw"))
    assert index_files
    with open(index_files[0], "r+b") as handle:  # flip bytes in the middle of the graph
        handle.seek(index_files[0].stat().st_size // 2)
        middle = handle.read(64)
        handle.seek(-len(middle), 1)
        handle.write(bytes(b ^ 0xFF for b in middle))  # (not 0xff bytes: empty link slots already hold them)
    with omendb.open(tmp_path / "db") as db:
        table = db.open_table("t")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hits = table.search(vectors[:20], k=5)
        assert any("checksum" in str(w.message) and index_files[0].name in str(w.message) for w in caught)
        exact = table.search(vectors[:20], k=5, exact=True)
        assert recall(hits, exact, 20) >= 0.95
        assert table.wait_for_index(timeout=120)
        assert table.stats()["unindexed_segments"] == 0


CRASH_WRITER = textwrap.dedent("""
    import sys, numpy as np, omendb
    from omendb.index.hnsw import HnswConfig
    rng = np.random.default_rng(0)
    db = omendb.open(sys.argv[1], memtable_bytes=64 << 20)
    n = 60_000
    table = db.create_table("t", data={"id": np.arange(n), "vector": rng.standard_normal((n, 32)).astype("float32")},
                            metric="l2", index=HnswConfig(m=16, ef_construction=400, min_rows=1000))
    table.flush()
    print("flushed", flush=True)
    table.wait_for_index()
    print("indexed", flush=True)
""")


def test_sigkill_during_index_build_leaves_table_searchable_and_build_resumes(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "db")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "flushed"
    time.sleep(1.0)  # the build of 60K rows at ef_construction=400 takes far longer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with omendb.open(tmp_path / "db") as db:
        table = db.open_table("t")
        assert table.count() == 60_000
        assert table.stats()["indexed_segments"] == 0  # the killed build published nothing
        hits = table.search(np.zeros(32), k=3)  # exact scan while unindexed
        assert hits.num_rows == 3
        table.create_index(m=16, ef_construction=32)  # make the resumed build quick
        assert table.wait_for_index(timeout=120)
        assert table.stats()["indexed_segments"] == 1
        leftovers = [p.name for p in (tmp_path / "db" / "t" / "segments").iterdir() if p.name.startswith(".")]
        assert leftovers == []


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_single_indexed_segment_answers_like_exact(tmp_path: Path, metric: str) -> None:
    """A table that is one indexed segment (the common, shortest search path)."""
    db = omendb.open(tmp_path / "db", compaction=False)
    vectors = clustered(3_000)
    table = db.create_table("t", dim=DIM, metric=metric, index=CONFIG,
                            schema=pa.schema([("id", pa.string()), ("n", pa.int32()), ("score", pa.float64()),
                                              ("vector", pa.list_(pa.float32(), DIM))]))
    table.add({"id": [f"doc-{i}" for i in range(3_000)], "n": np.arange(3_000, dtype=np.int32),
               "score": np.arange(3_000) / 7, "vector": vectors})
    table.flush()
    assert table.wait_for_index(timeout=120)
    assert table.stats()["segments"] == 1 and table.stats()["indexed_segments"] == 1
    queries = clustered(50, seed=3) * (3.0 if metric == "cosine" else 1.0)  # cosine ignores the norm
    approx = table.search(queries, k=10, ef=200)  # (inner product graphs need a wider walk)
    exact = table.search(queries, k=10, exact=True)
    assert approx.schema == exact.schema and approx.column_names == ["_query", "id", "n", "score", "vector", "_distance"]
    assert recall(approx, exact, 50) >= 0.95
    one = table.search(queries[0], k=5, columns=["n", "score", "id"])
    assert one.column_names == ["n", "score", "id", "_distance"]
    rows = one.to_pylist()
    assert all(r["id"] == f"doc-{r['n']}" and r["score"] == pytest.approx(r["n"] / 7) for r in rows)
    truth = table.search(queries[0], k=3_000, exact=True, columns=["n"]).to_pandas().set_index("n")
    np.testing.assert_allclose(one["_distance"].to_numpy(), truth.loc[one["n"].to_pylist(), "_distance"],
                               rtol=1e-4, atol=1e-4)
    assert table.search(queries[0], k=3_005).num_rows == 3_000  # more than the table: every row, once
    db.close()
