"""Searching while rows stream in: background work yields to the foreground."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import omendb
from omendb.index.hnsw import BuildCancelled
from omendb.table import indexer, workers

DIM = 16


def rows(start: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + start)
    return {"id": np.arange(start, start + n), "vector": rng.standard_normal((n, DIM)).astype(np.float32)}


def thread_nice(name: str) -> int | None:
    """The niceness of the live thread called ``name`` (None: no such thread)."""
    thread = next((t for t in threading.enumerate() if t.name == name), None)
    return None if thread is None else os.getpriority(os.PRIO_PROCESS, thread.native_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_index_builds_and_merges_run_at_a_lower_cpu_priority_than_searches_and_flushes(db_path: Path,
                                                                                        monkeypatch) -> None:
    monkeypatch.delenv("OMENDB_BACKGROUND_NICE", raising=False)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with omendb.open(db_path, memtable_bytes=256 << 10) as db:
        tbl = db.create_table("t", dim=DIM, index=omendb.HnswFlat(min_rows=1_000))
        for start in range(0, 12_000, 1_000):   # full memtables flush in the background, then merge
            tbl.add(rows(start, 1_000))
        assert tbl.wait_for_index(timeout=60)
        tbl.compact()
        expected = min(19, mine + workers.BACKGROUND_NICE)
        assert thread_nice("omendb-index-builder") == expected
        assert thread_nice("omendb-compaction") == expected
        assert thread_nice("omendb-fresh-index") == min(19, mine + (workers.BACKGROUND_NICE + 1) // 2)
        assert thread_nice("omendb-flusher") == mine      # a writer may wait for it
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller is untouched
        assert len(tbl.search(rows(0, 1)["vector"][0], k=5)) == 5


def test_background_nice_can_be_set_or_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("OMENDB_BACKGROUND_NICE", "0")
    assert workers.background_nice() == 0
    monkeypatch.setenv("OMENDB_BACKGROUND_NICE", "25")
    assert workers.background_nice() == 19
    monkeypatch.setenv("OMENDB_BACKGROUND_NICE", "lots")
    assert workers.background_nice() == workers.BACKGROUND_NICE


# ============================================================== fresh graphs
FRESH = 12_000  # rows: past the default index's min_rows (10,000), so the memtable gets a graph


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def memtable_graph_rows(tbl) -> int:
    graph = tbl.core.state.memtable.graph
    return 0 if graph is None else graph.rows


def graph_parts(tbl) -> list:
    """The search parts of ``tbl`` that walk a graph."""
    return [p for p in tbl._reader.parts(exact=False)[1] if p.index is not None]


def test_fresh_rows_are_found_at_once_and_through_the_memtable_graph_with_exact_distances(db_path: Path,
                                                                                           brute_force) -> None:
    data = rows(0, FRESH)
    with omendb.open(db_path, memtable_bytes=64 << 20) as db:
        tbl = db.create_table("t", dim=DIM, metric="cosine")
        for start in range(0, FRESH, 500):
            tbl.add({"id": data["id"][start:start + 500], "vector": data["vector"][start:start + 500]})
            found = tbl.search(data["vector"][start], k=1)  # searchable the moment add returns
            assert found["id"][0].as_py() == start
        wait_for(lambda: memtable_graph_rows(tbl) >= FRESH - FRESH // 4)  # (at most a step short)
        parts = graph_parts(tbl)
        assert len(parts) == 1 and parts[0].index.rows == memtable_graph_rows(tbl)
        queries = data["vector"][::97]
        exact = brute_force(data["vector"], queries, "cosine")
        for q, truth in zip(queries, exact):
            got = tbl.search(q, k=10)
            ids = got["id"].to_numpy()
            np.testing.assert_allclose(got["_distance"].to_numpy(), truth[ids], rtol=1e-5, atol=1e-6)
            assert ids[0] == int(np.argmin(truth))


def test_deletes_and_upserts_of_rows_in_the_memtable_graph(db_path: Path) -> None:
    data = rows(0, FRESH)
    with omendb.open(db_path, memtable_bytes=64 << 20) as db:
        tbl = db.create_table("t", dim=DIM, metric="l2")
        tbl.add(data)
        wait_for(lambda: memtable_graph_rows(tbl) == FRESH)
        tbl.delete([10, 11, 12])
        moved = np.full(DIM, 50.0, dtype=np.float32)
        tbl.upsert({"id": [20], "vector": [moved]})
        for gone in (10, 11, 12):
            assert gone not in tbl.search(data["vector"][gone], k=5)["id"].to_pylist()
        near_old = tbl.search(data["vector"][20], k=5)
        assert 20 not in near_old["id"].to_pylist()
        near_new = tbl.search(moved, k=1)
        assert near_new["id"][0].as_py() == 20 and near_new["_distance"][0].as_py() == 0.0
        assert tbl.count() == FRESH - 3


@pytest.fixture
def held_builds(monkeypatch):
    """Segment graph builds wait at a gate (the test opens it)."""
    gate = threading.Event()
    real = indexer.build_index

    def build_when_let(core, *args, **kwargs):
        deadline = time.monotonic() + 60
        while not gate.wait(0.05):
            if core.stopping:  # (the table closes: the build stops, as a real one does at its next chunk)
                raise BuildCancelled()
            assert time.monotonic() < deadline, "the test never opened the gate"
        return real(core, *args, **kwargs)

    monkeypatch.setattr(indexer, "build_index", build_when_let)
    yield gate
    gate.set()


@pytest.mark.parametrize("flush", ["with its graph complete", "right after a bulk add"])
def test_a_flush_hands_the_memtable_graph_to_its_segment_until_the_segment_has_its_own(
        db_path: Path, held_builds, flush: str) -> None:
    data = rows(0, FRESH)
    with omendb.open(db_path, memtable_bytes=64 << 20) as db:
        tbl = db.create_table("t", dim=DIM, metric="l2", index=omendb.HnswFlat(min_rows=1_000))
        tbl.add(data)
        if flush == "with its graph complete":
            wait_for(lambda: memtable_graph_rows(tbl) == FRESH)
        tbl.flush()  # (a graph finished after the flush goes to the segment)
        (handle,) = tbl.core.state.segments
        wait_for(lambda: handle.provisional is not None and handle.provisional.rows == FRESH)
        (part,) = graph_parts(tbl)
        assert part.index is handle.provisional
        got = tbl.search(data["vector"][123], k=3)
        assert got["id"][0].as_py() == 123 and got["_distance"][0].as_py() == 0.0
        held_builds.set()  # the segment's own graph replaces it
        assert tbl.wait_for_index(timeout=60)
        (handle,) = tbl.core.state.segments
        assert handle.provisional is None and handle.entry.index_file is not None
        assert graph_parts(tbl)[0].index is not None and not any(p.index is part.index for p in graph_parts(tbl))
    with omendb.open(db_path) as db:  # the fresh graph was memory only: nothing of it on disk
        tbl = db.open_table("t")
        assert tbl.count() == FRESH
        assert tbl.search(data["vector"][5], k=1)["id"][0].as_py() == 5


def test_a_segment_found_without_its_graph_on_open_gets_a_fresh_graph(db_path: Path, held_builds) -> None:
    data = rows(0, FRESH)
    options = {"memtable_bytes": 64 << 20, "compaction": False}
    with omendb.open(db_path, **options) as db:
        db.create_table("t", dim=DIM, metric="l2", index=omendb.HnswFlat(min_rows=1_000)).add(data)
    with omendb.open(db_path, **options) as db:  # (the close flushed; the graph was never built)
        tbl = db.open_table("t")
        (handle,) = tbl.core.state.segments
        assert handle.entry.index_file is None
        time.sleep(0.5)
        assert handle.provisional is None, "a graph only once a search wants one"
        assert tbl.search(data["vector"][0], k=1)["id"][0].as_py() == 0  # (an exact scan: it asks for one)
        wait_for(lambda: handle.provisional is not None and handle.provisional.rows == FRESH)
        (part,) = graph_parts(tbl)
        assert part.index is handle.provisional
        got = tbl.search(data["vector"][4321], k=3)
        assert got["id"][0].as_py() == 4321 and got["_distance"][0].as_py() == 0.0


def test_fresh_graphs_stop_growing_at_their_row_budget(db_path: Path, held_builds, monkeypatch) -> None:
    from omendb.table import fresh

    data = rows(0, FRESH)
    options = {"memtable_bytes": 64 << 20, "compaction": False}
    with omendb.open(db_path, **options) as db:
        db.create_table("t", dim=DIM, metric="l2", index=omendb.HnswFlat(min_rows=1_000)).add(data)
    monkeypatch.setattr(fresh, "FRESH_MAX_ROWS", FRESH - 1)
    with omendb.open(db_path, **options) as db:
        tbl = db.open_table("t")
        assert tbl.search(data["vector"][77], k=1)["id"][0].as_py() == 77
        assert tbl._fresh._next_step() is None  # nothing to do: the segment would pass the budget
        assert tbl.core.state.segments[0].provisional is None and graph_parts(tbl) == []


def test_segments_being_merged_are_searched_through_fresh_graphs_until_the_merge_publishes(
        db_path: Path, held_builds, monkeypatch) -> None:
    from omendb.table import compactor

    monkeypatch.setattr(compactor, "build_index", indexer.build_index)  # (the merged graph waits too)
    first, second = rows(0, FRESH), rows(FRESH, FRESH)
    with omendb.open(db_path, memtable_bytes=64 << 20) as db:
        tbl = db.create_table("t", dim=DIM, metric="l2", index=omendb.HnswFlat(min_rows=1_000))
        tbl.add(first)
        tbl.flush()
        tbl.add(second)
        tbl.flush()
        wait_for(lambda: len(tbl.core.merging) == 2)  # (the merge waits at its graph build)
        handles = tbl.core.state.segments
        tbl.search(first["vector"][0], k=1)  # (a segment flushed before its memtable had a graph asks here)
        wait_for(lambda: all(h.provisional is not None and h.provisional.rows == FRESH for h in handles))
        assert sorted(p.index.rows for p in graph_parts(tbl)) == [FRESH, FRESH]
        for i in (5, FRESH + 5):
            vector = (first if i < FRESH else second)["vector"][i % FRESH]
            assert tbl.search(vector, k=1)["id"][0].as_py() == i
        held_builds.set()
        assert tbl.wait_for_index(timeout=60)
        (merged,) = tbl.core.state.segments
        assert merged.entry.rows == 2 * FRESH and merged.entry.index_file is not None


def test_segments_below_min_rows_are_scanned_exactly_not_through_a_fresh_graph(db_path: Path) -> None:
    data = rows(0, FRESH)
    with omendb.open(db_path, memtable_bytes=64 << 20, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM, metric="l2", index=omendb.HnswFlat(min_rows=FRESH + 1))
        tbl.add(data)
        time.sleep(0.5)
        assert memtable_graph_rows(tbl) == 0 and graph_parts(tbl) == []
        tbl.flush()
        (handle,) = tbl.core.state.segments
        assert handle.provisional is None and graph_parts(tbl) == []
        for i in range(0, FRESH, 1_000):  # every row is found by its own vector, as an exact scan finds it
            assert tbl.search(data["vector"][i], k=1)["id"][0].as_py() == i


def test_a_search_asking_for_a_recall_gets_it_from_the_fresh_graph_too(db_path: Path, brute_force) -> None:
    dim = 64  # Gaussian rows in 64-d: hard for a graph (a fixed ef falls far short)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((FRESH, dim)).astype(np.float32)
    queries = rng.standard_normal((100, dim)).astype(np.float32)
    truth = np.argsort(brute_force(vectors, queries, "l2"), axis=1)[:, :10]
    with omendb.open(db_path, memtable_bytes=256 << 20) as db:
        tbl = db.create_table("t", dim=dim, metric="l2")
        tbl.add({"id": np.arange(FRESH), "vector": vectors})
        wait_for(lambda: memtable_graph_rows(tbl) == FRESH)
        (part,) = graph_parts(tbl)
        assert part.index.calibration, "the fresh graph carries a calibration"

        def recall(**kwargs) -> float:
            got = tbl.search(queries, k=10, columns=["id"], **kwargs)
            found = got["id"].to_numpy().reshape(len(queries), 10)
            return float(np.mean([np.intersect1d(f, t).size / 10 for f, t in zip(found, truth)]))

        assert recall() >= 0.9          # the default target, 0.95, less the calibration's sampling error
        assert recall(recall=0.99) >= 0.97


KILLED_WRITER = r'''
import sys, numpy as np, omendb
path, dim = sys.argv[1], int(sys.argv[2])
db = omendb.open(path, memtable_bytes=64 << 20)
tbl = db.open_table("t")
rng = np.random.default_rng(1)
for batch in range(10_000):
    ids = np.arange(batch * 500, batch * 500 + 500)
    tbl.add({"id": ids, "vector": rng.standard_normal((500, dim)).astype(np.float32)})
    graph = tbl.core.state.memtable.graph
    print(batch, 0 if graph is None else graph.rows, flush=True)
'''


def test_a_sigkill_while_the_fresh_graph_grows_loses_no_acknowledged_row(db_path: Path, tmp_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("t", dim=DIM)
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    child = subprocess.Popen([sys.executable, str(script), str(db_path), str(DIM)], stdout=subprocess.PIPE,
                             text=True)
    acked, graph_seen, deadline = -1, 0, time.monotonic() + 120
    try:
        for line in child.stdout:
            batch, graph_rows = map(int, line.split())
            acked = batch
            graph_seen = max(graph_seen, graph_rows)
            if graph_seen and batch >= 30 or time.monotonic() > deadline:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    for line in child.stdout:  # batches acknowledged after the last line read before the kill
        acked = int(line.split()[0])
    assert graph_seen > 0, "the writer never saw its memtable graph"
    with omendb.open(db_path) as db:
        tbl = db.open_table("t")
        ids = set(tbl.to_arrow()["id"].to_pylist())
        assert set(range((acked + 1) * 500)) <= ids  # every acknowledged row; at most the batch in flight more
        assert len(ids) - (acked + 1) * 500 in (0, 500)


def test_key_lookups_of_upserts_deletes_and_gets_load_key_indexes_outside_the_state_lock(db_path: Path,
                                                                                          monkeypatch) -> None:
    from omendb.table import segments

    with omendb.open(db_path, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        tbl.add(rows(0, 2_000))
        tbl.flush()
    held = []
    real = segments.KeyIndex

    def recording(column):
        held.append(state_lock.locked())
        return real(column)

    monkeypatch.setattr(segments, "KeyIndex", recording)
    for call in ("upsert", "delete", "get"):
        with omendb.open(db_path, compaction=False) as db:  # (a fresh open: no key index loaded yet)
            tbl = db.open_table("t")
            state_lock = tbl.core._lock
            if call == "upsert":
                tbl.upsert(rows(5, 1))
            elif call == "delete":
                tbl.delete([7])
            else:
                assert tbl.get([9])["id"].to_pylist() == [9]
    assert len(held) >= 3 and not any(held), held


# ============================================================== searches yield BLAS threads
def test_a_single_query_scans_on_one_blas_thread_while_background_work_runs(db_path: Path, held_builds,
                                                                             monkeypatch) -> None:
    from omendb.index import blas
    from omendb.query import search

    libraries = blas._blas_libraries()
    if not libraries or max(lib.get_num_threads() for lib in libraries) < 2:
        pytest.skip("BLAS runs on one thread here anyway")
    seen: list[int] = []
    real = search.exact_search

    def recording(*args, **kwargs):
        seen.append(max(lib.get_num_threads() for lib in libraries))
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "exact_search", recording)
    dim, n = 384, 12_000  # (a scan large enough to use the library's threads when the cores are free)
    vectors = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    with omendb.open(db_path, compaction=False, memtable_bytes=64 << 20) as db:
        tbl = db.create_table("t", dim=dim, metric="l2", index=omendb.HnswFlat(min_rows=n + 1))
        tbl.add({"id": np.arange(n), "vector": vectors})
        assert tbl.search(vectors[7], k=1)["id"][0].as_py() == 7
        idle = seen[-1]
        tbl.create_index(index=omendb.HnswFlat(min_rows=1_000))  # (its build waits at the gate: background work runs)
        tbl.flush()
        wait_for(lambda: workers.background_running())
        seen.clear()
        assert tbl.search(vectors[9], k=1, exact=True)["id"][0].as_py() == 9
        assert seen and max(seen) == 1, "one BLAS thread while a build runs"
        both = tbl.search(vectors[:2], k=1, exact=True)  # (a batch keeps the library's threads)
        assert both["id"].to_pylist() == [0, 1] and seen[-1] == idle
        held_builds.set()
    assert idle >= 2
