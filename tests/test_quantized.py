"""Quantized graphs (the default index): exact answers from 8-bit codes, recall targets
from each segment's calibration, filtered search and deletes through them, old and new
index files, and bad index options."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest

import omendb
from conftest import brute_force_distances

DIM = 24
ROWS = 12_000
SQ = omendb.HnswSq(m=12, ef_construction=64, min_rows=2_000)


def _data(rng: np.random.Generator, n: int = ROWS, queries: int = 60) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(40, DIM)) * 3
    x = (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, DIM))).astype(np.float32)
    q = (centres[rng.integers(0, 40, queries)] + rng.normal(size=(queries, DIM))).astype(np.float32)
    return x, q


@pytest.fixture
def indexed(db_path: Path):
    """``indexed(x, metric, index=SQ, **columns)``: table ``t`` of ``x``, flushed and indexed."""
    opened = []

    def make(x: np.ndarray, metric: str, index=SQ, **columns) -> omendb.Table:
        db = omendb.open(db_path)
        opened.append(db)
        table = db.create_table("t", data={"vector": x, **columns}, metric=metric, index=index)
        table.flush()
        assert table.wait_for_index(timeout=120)
        return table

    yield make
    for db in opened:
        db.close()


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(f, t).size / t.size for f, t in zip(found, truth)]))


def _ids_per_query(result, queries: int) -> list[np.ndarray]:
    q = result["_query"].to_numpy()
    ids = result["id"].to_numpy()
    return [ids[q == i] for i in range(queries)]


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_a_quantized_graph_gives_exact_distances_and_high_recall(indexed, rng, metric: str) -> None:
    x, q = _data(rng)
    table = indexed(x, metric)
    stats = table.stats()
    assert stats["indexed_segments"] == 1 and stats["index"]["kind"] == "hnsw_sq8"
    entry = table.core.state.segments[0].entry
    stored = faiss.read_index(str(table.core.directory / "segments" / entry.index_file))
    assert faiss.downcast_index(stored.storage).code_size == DIM  # one byte per component: no float32 copy
    truth_dist = brute_force_distances(x, q, metric)
    truth = np.argsort(truth_dist, axis=1)[:, :10]
    result = table.search(q, k=10)
    found = _ids_per_query(result, len(q))
    assert _recall(found, truth) >= 0.95
    qi, ids, dist = result["_query"].to_numpy(), result["id"].to_numpy(), result["_distance"].to_numpy()
    np.testing.assert_allclose(dist, truth_dist[qi, ids], rtol=2e-4, atol=2e-4)  # re-scored exactly
    assert all(np.all(np.diff(dist[qi == i]) >= -1e-6) for i in range(len(q)))
    one = table.search(q[0], k=5)
    exact = table.search(q[0], k=5, exact=True)
    assert one["id"].to_pylist() == exact["id"].to_pylist()
    np.testing.assert_allclose(one["_distance"].to_numpy(), exact["_distance"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_recall_targets_are_met_and_survive_a_reopen(indexed, db_path: Path, rng) -> None:
    x, q = _data(rng)
    table = indexed(x, "cosine")
    curve = table.core.state.segments[0].entry.index_calibration
    assert curve and all(0.0 <= r <= 1.0 for _, r in curve) and [e for e, _ in curve] == sorted(e for e, _ in curve)
    truth = np.argsort(brute_force_distances(x, q, "cosine"), axis=1)[:, :10]
    reached = {}
    for target in (0.8, 0.9, 0.97, 0.99):
        reached[target] = _recall(_ids_per_query(table.search(q, k=10, recall=target), len(q)), truth)
        assert reached[target] >= target - 0.02, (target, reached)
    config = table.stats()["index"]
    table._owner.close()
    with omendb.open(db_path) as again:  # the calibration is the manifest's: it survives a reopen
        reopened = again.open_table("t")
        assert reopened.core.state.segments[0].entry.index_calibration == curve
        assert reopened.stats()["index"] == config


def test_the_calibration_reads_the_recall_new_queries_get(indexed, rng) -> None:
    """Measured on rows the graph did not hold yet, the curve neither flatters the graph (rows
    found through their own links) nor sells it short (queries far from every row)."""
    x, q = _data(rng, queries=600)  # (the queries: new points from the rows' own distribution)
    table = indexed(x, "cosine", index=omendb.HnswSq(m=8, ef_construction=24, min_rows=2_000))
    curve = dict(map(tuple, table.core.state.segments[0].entry.index_calibration))
    truth = np.argsort(brute_force_distances(x, q, "cosine"), axis=1)[:, :10]
    compared = 0
    for ef in (10, 16, 24, 32):
        reached = _recall(_ids_per_query(table.search(q, k=10, ef=ef), len(q)), truth)
        if reached < 0.995:
            compared += 1
            assert abs(curve[float(ef)] - reached) <= 0.03, (ef, curve[float(ef)], reached)
    assert compared >= 2, "the graph was too good to tell calibrations apart: make it weaker"


def test_filters_and_deletes_through_a_quantized_graph(indexed, rng) -> None:
    x, q = _data(rng)
    tag = np.arange(ROWS) % 10
    table = indexed(x, "l2", tag=tag)
    deleted = np.arange(0, ROWS, 3)
    table.delete(deleted)
    for where, allowed in ((None, np.ones(ROWS, bool)), ("tag = 4", tag == 4), ("tag < 5", tag < 5)):
        alive = allowed.copy()
        alive[deleted] = False
        result = table.search(q[:10], k=10, where=where)
        ids = result["id"].to_numpy()
        assert alive[ids].all()  # never a deleted or a filtered-out row
        assert result.num_rows == 10 * 10  # k rows whenever k match
        dist = brute_force_distances(x, q[:10], "l2")
        dist[:, ~alive] = np.inf
        truth = np.argsort(dist, axis=1)[:, :10]
        assert _recall(_ids_per_query(result, 10), truth) >= 0.9


def test_the_index_type_can_be_switched(indexed, rng) -> None:
    x, q = _data(rng, n=6_000)
    flat = omendb.HnswFlat(m=12, ef_construction=64, min_rows=2_000)
    table = indexed(x, "cosine", index=flat)
    entry = table.core.state.segments[0].entry
    assert "kind" not in table.stats()["index"] and entry.index_bytes > x.nbytes  # the floats are inside
    before = table.search(q, k=5)
    flat_bytes = entry.index_bytes
    table.create_index(index=SQ)
    assert table.wait_for_index(timeout=120)
    entry = table.core.state.segments[0].entry
    assert entry.index_params["kind"] == "hnsw_sq8" and entry.index_bytes < flat_bytes - 0.7 * x.nbytes
    after = table.search(q, k=5)
    assert _recall(_ids_per_query(after, len(q)), np.array(_ids_per_query(before, len(q)))) >= 0.95
    table.create_index(m=16, ef_construction=64)  # parameters only: the type stays
    assert table.wait_for_index(timeout=120) and table.stats()["index"]["kind"] == "hnsw_sq8"


def test_a_damaged_quantized_index_is_reported_and_rebuilt(indexed, db_path: Path, rng) -> None:
    x, q = _data(rng, n=5_000)
    table = indexed(x, "cosine")
    entry = table.core.state.segments[0].entry
    table._owner.close()
    path = db_path / "t" / "segments" / entry.index_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        with pytest.warns(RuntimeWarning, match=entry.index_file):
            hits = table.search(q[0], k=5)
        assert hits["id"].to_pylist() == table.search(q[0], k=5, exact=True)["id"].to_pylist()
        assert table.wait_for_index(timeout=120)
        assert table.core.state.segments[0].entry.index_file != entry.index_file


@pytest.mark.parametrize("call, error, message", [
    (lambda t: t.search(np.ones(DIM), k=3, recall=0.0), omendb.InvalidArgumentError, "recall"),
    (lambda t: t.search(np.ones(DIM), k=3, recall=1.5), omendb.InvalidArgumentError, "recall"),
    (lambda t: t.search(np.ones(DIM), k=3, recall="high"), omendb.InvalidArgumentError, "recall"),
    (lambda t: t.search(np.ones(DIM), k=3, recall=0.9, ef=32), omendb.InvalidArgumentError, "not both"),
    (lambda t: t.create_index(index={"m": 8}), omendb.ArgumentTypeError, "HnswSq"),
    (lambda t: t.create_index(recall=2), omendb.InvalidArgumentError, "recall"),
    (lambda t: omendb.HnswSq(min_rows=100), omendb.InvalidArgumentError, "at least 1,000"),
    (lambda t: omendb.HnswSq(recall=-1), omendb.InvalidArgumentError, "recall"),
])
def test_bad_index_options_are_refused_and_change_nothing(db_path: Path, rng, call, error, message) -> None:
    with omendb.open(db_path) as db:
        table = db.create_table("t", data={"vector": rng.normal(size=(50, DIM))})
        version = table.version
        with pytest.raises(error, match=message):
            call(table)
        assert table.version == version and table.count() == 50


def test_small_segments_are_searched_exactly_without_a_graph(db_path: Path, rng) -> None:
    x, _ = _data(rng, n=500)
    with omendb.open(db_path) as db, warnings.catch_warnings():
        warnings.simplefilter("error")
        table = db.create_table("t", data={"vector": x})
        table.flush()
        assert table.wait_for_index(timeout=30)
        assert table.stats()["indexed_segments"] == 0
        assert table.search(x[7], k=1)["id"].to_pylist() == [7]


def test_a_merge_grows_the_base_segments_graph_instead_of_building_a_new_one(db_path: Path, rng,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from omendb.table import indexer

    x, q = _data(rng, n=8_000)
    with omendb.open(db_path, compaction=False) as db:
        table = db.create_table("t", data={"id": np.arange(4_000), "vector": x[:4_000]}, index=SQ)
        table.flush()
        assert table.wait_for_index(timeout=120)
        for start in range(4_000, 8_000, 1_000):  # small segments, below min_rows: no graphs
            table.add({"id": np.arange(start, start + 1_000), "vector": x[start:start + 1_000]})
            table.flush()
        base_index = table.core.state.segments[0].entry.index_file
        builds = []
        real = indexer.build_hnsw
        monkeypatch.setattr(indexer, "build_hnsw", lambda *a, **k: builds.append(1) or real(*a, **k))
        table.compact()
        assert table.stats()["segments"] == 1 and table.stats()["indexed_segments"] == 1
        assert builds == [], "the merge built a new graph instead of growing the base segment's"
        merged = table.core.state.segments[0].entry
        assert merged.index_file != base_index and merged.index_calibration
        truth = np.argsort(brute_force_distances(x, q, "l2"), axis=1)[:, :10]
        assert _recall(_ids_per_query(table.search(q, k=10), len(q)), truth) >= 0.95


def test_compaction_keeps_the_rows_out_of_its_own_memory(tmp_path: Path) -> None:
    # 24 segments (49 MB of vectors) merged into one: the merge gathers the vectors into
    # file-backed scratch space, so the process's anonymous memory grows by the merged
    # graph and a fixed working set, not by a copy or two of the vectors (as it did).
    from conftest import run_python

    done = run_python("""
        import sys, threading, time, numpy as np, omendb
        def anon():
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon"))
        db = omendb.open(sys.argv[1], compaction=False)
        t = db.create_table("t", dim=64, index=omendb.HnswSq(m=8, ef_construction=32, min_rows=2_000))
        rng = np.random.default_rng(0)
        for s in range(24):
            t.add({"id": np.arange(s * 8000, (s + 1) * 8000), "vector": rng.random((8000, 64), np.float32)})
            t.flush()
        assert t.wait_for_index(timeout=300)
        base, peak, stop = anon(), [0], [False]
        def watch():
            while not stop[0]:
                peak[0] = max(peak[0], anon()); time.sleep(0.002)
        watcher = threading.Thread(target=watch); watcher.start()
        t.compact()
        stop[0] = True; watcher.join()
        assert t.stats()["segments"] == 1
        print(peak[0] - base)
    """, tmp_path / "db", timeout=300)
    growth = int(done.stdout.strip().splitlines()[-1])
    vectors = 24 * 8000 * 64 * 4
    assert growth < vectors + (48 << 20), f"compaction grew anonymous memory by {growth / 1e6:.0f} MB"


def test_wait_for_index_flushes_first_so_every_added_row_is_indexed(db_path: Path, rng) -> None:
    x, q = _data(rng, n=3_000)
    with omendb.open(db_path, compaction=False) as db:
        table = db.create_table("t", dim=DIM, index=SQ)
        table.add({"id": np.arange(3_000), "vector": x})  # far below memtable_bytes: not flushed by itself
        assert table.stats()["memtable_rows"] == 3_000
        assert table.wait_for_index(timeout=120)
        stats = table.stats()
        assert stats["memtable_rows"] == 0 and stats["unindexed_rows"] == 0 and stats["indexed_rows"] == 3_000
    with omendb.open(db_path, read_only=True) as db:  # a reader sees them all, through the graph
        truth = np.argsort(brute_force_distances(x, q, "l2"), axis=1)[:, :10]
        assert _recall(_ids_per_query(db.open_table("t").search(q, k=10), len(q)), truth) >= 0.95


def test_builds_take_every_core_only_while_the_foreground_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    from omendb.index import hnsw
    from omendb.table import activity

    monkeypatch.delenv("OMENDB_BUILD_THREADS", raising=False)
    monkeypatch.setattr(hnsw.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    activity.note()
    assert activity.foreground_busy() and activity.graph_threads() == 3
    monkeypatch.setattr(activity, "_last", time.monotonic() - activity.BUSY_WINDOW_S - 0.01)
    assert not activity.foreground_busy() and activity.graph_threads() == 4
    monkeypatch.setattr(hnsw.os, "sched_getaffinity", lambda pid: {0})
    assert hnsw.build_threads(foreground_busy=True) == 1  # never none
    monkeypatch.setenv("OMENDB_BUILD_THREADS", "2")
    assert activity.graph_threads() == 2


def test_concurrent_builds_add_their_chunks_one_at_a_time(rng, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from omendb.index import hnsw

    x = rng.normal(size=(3_000, DIM)).astype(np.float32)
    inside, most = [0], [0]
    lock = threading.Lock()
    real_add = hnsw.faiss.IndexHNSWSQ.add

    def add(index, chunk):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.01)
            return real_add(index, chunk)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(hnsw.faiss.IndexHNSWSQ, "add", add)
    graphs: list = []
    workers = [threading.Thread(target=lambda: graphs.append(hnsw.build_hnsw(x, None, "l2", SQ, chunk_rows=500)))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert len(graphs) == 3 and all(g.rows == 3_000 for g in graphs)
    assert most[0] == 1, "chunks of two builds ran at once (their OpenMP threads would oversubscribe the cores)"


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_one_query_is_re_scored_as_a_batch_of_them_is_even_with_missing_slots(rng, metric: str) -> None:
    from omendb.index.hnsw import build_hnsw

    x, q = _data(rng, n=3_000, queries=8)
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    graph = build_hnsw(x, norms, metric, SQ)
    allowed = np.zeros(len(x), bool)
    allowed[::500] = True  # 6 rows may be returned: k=10 leaves missing slots
    for mask, k in ((None, 10), (allowed, 10)):
        batch_dist, batch_pos = graph.search(q, k, 64, mask, vectors=x, norms=norms)
        for i in range(len(q)):
            dist, pos = graph.search(q[i:i + 1], k, 64, mask, vectors=x, norms=norms)
            np.testing.assert_array_equal(pos, batch_pos[i:i + 1])
            np.testing.assert_allclose(dist, batch_dist[i:i + 1], rtol=1e-6, atol=1e-6)
        if mask is not None:
            assert (batch_pos[:, 6:] == -1).all() and np.isinf(batch_dist[:, 6:]).all()
            assert set(batch_pos[batch_pos >= 0].ravel()) <= set(np.flatnonzero(mask))  # (a walk may miss some)
