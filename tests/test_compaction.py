"""Compaction: the background policy, compact(), and writes that race with a merge.

Every test compares the table with a plain model (``dict`` id -> vector) of what a
user wrote: after any compaction, every live row is there with its newest vector,
no deleted row comes back, and search equals a brute-force scan of the model.
"""

from __future__ import annotations

import sys
import threading
import warnings
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pytest

import omendb
from conftest import brute_force_distances
from omendb.table.compactor import Compactor

DIM = 8
WAIT = 10.0  # seconds a background job gets before a test gives up on it


# ----------------------------------------------------------------- helpers
def vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, DIM)).astype(np.float32)


def rows(ids, vecs: np.ndarray) -> dict:
    return {"id": np.asarray(ids, dtype=np.int64), "vector": np.asarray(vecs, dtype=np.float32)}


def add_flushed(tbl, model: dict[int, np.ndarray], rng: np.random.Generator, batch: int, n: int,
                stride: int = 100) -> None:
    """Add ``n`` rows with ids ``batch*stride ...``, flush them into a segment, record them in ``model``."""
    ids = np.arange(batch * stride, batch * stride + n)
    vecs = vectors(rng, n)
    tbl.add(rows(ids, vecs))
    tbl.flush()
    model.update(zip(ids.tolist(), vecs))


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, DIM)


def contents(tbl) -> dict[int, np.ndarray]:
    """id -> vector of every live row, checking that no id is live twice."""
    data = tbl.to_arrow().sort_by("id")
    ids = data.column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"ids live more than once: {sorted({i for i in ids if ids.count(i) > 1})[:10]}"
    return dict(zip(ids, vectors_of(data)))


def assert_matches(tbl, model: dict[int, np.ndarray], where: str = "") -> None:
    """The table holds exactly the model's rows (to_arrow sorted by id), and count() agrees."""
    got = contents(tbl)
    missing = sorted(set(model) - set(got))
    extra = sorted(set(got) - set(model))
    assert not missing, f"{where}: live rows missing: {missing[:10]} ({len(missing)} in all)"
    assert not extra, f"{where}: deleted or unknown rows present: {extra[:10]} ({len(extra)} in all)"
    ids = sorted(model)
    if ids:
        np.testing.assert_array_equal(np.stack([got[i] for i in ids]), np.stack([model[i] for i in ids]),
                                      err_msg=f"{where}: a row has a stale vector")
    assert tbl.count() == len(model), where


def assert_search_is_brute_force(tbl, model: dict[int, np.ndarray], queries: np.ndarray, k: int = 10,
                                 exact: bool = True, min_recall: float = 1.0) -> None:
    ids = np.array(sorted(model), dtype=np.int64)
    matrix = np.stack([model[i] for i in ids])
    distances = brute_force_distances(matrix, queries, tbl.metric)
    recalls = []
    for q, dist in zip(queries, distances):
        result = tbl.search(q, k=k, exact=exact)
        got = result.column("id").to_pylist()
        assert len(got) == len(set(got)) == min(k, len(ids)), "search returned a row twice or too few rows"
        order = np.argsort(dist, kind="stable")[:k]
        if exact:
            assert got == ids[order].tolist()
            np.testing.assert_allclose(result.column("_distance").to_numpy(), dist[order], rtol=1e-4, atol=1e-4)
        recalls.append(len(set(got) & set(ids[order].tolist())) / len(order))
    assert np.mean(recalls) >= min_recall, f"recall {np.mean(recalls):.3f} < {min_recall}"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def changes(tbl) -> list[str]:
    return [v["change"] for v in tbl.versions()]


class PausedMerge:
    """Wraps ``Compactor._index_merged`` (a merge has written its segment but not
    published it) so that the merge stops there until the test says go.

    Use it inside ``with omendb.open(...)``: leaving it releases the merge, so a
    failing test never leaves ``db.close()`` waiting for a paused merge."""

    def __init__(self, monkeypatch, pause_calls: int = 1) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        self.calls = 0
        self._pause_calls = pause_calls
        original = Compactor._index_merged

        def paused(table, *args):
            self.calls += 1
            if self.calls <= self._pause_calls:
                self.reached.set()
                assert self.go.wait(30), "test never released the paused merge"
            return original(table, *args)

        monkeypatch.setattr(Compactor, "_index_merged", paused)

    def __enter__(self) -> "PausedMerge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), "no merge reached the point between writing and publishing"


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as exc:  # re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: dict, timeout: float = 30):
    thread.join(timeout)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in out:
        raise out["error"]
    return out.get("result")


# ------------------------------------------------------ background policy
def test_a_small_base_takes_the_next_segment_in_at_once(db_path: Path, rng) -> None:
    policy = omendb.CompactionPolicy(min_segments=3, small_rows=10_000)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        add_flushed(tbl, model, rng, 0, 50)
        time.sleep(0.3)
        assert tbl.stats()["segments"] == 1 and "compact" not in changes(tbl)
        add_flushed(tbl, model, rng, 1, 50)
        assert wait_until(lambda: tbl.stats()["segments"] == 1), \
            f"a base below small_rows did not take the second segment: {tbl.stats()['segments']} segments"
        assert "compact" in changes(tbl)
        assert_matches(tbl, model, "after the background merge")


def test_policy_merges_in_background_once_enough_segments(db_path: Path, rng) -> None:
    policy = omendb.CompactionPolicy(min_segments=3, small_rows=40)  # (bases of 50 rows are not small)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(2):
            add_flushed(tbl, model, rng, batch, 50)
        time.sleep(0.3)
        assert tbl.stats()["segments"] == 2, "merged before the policy's min_segments was reached"
        assert "compact" not in changes(tbl)

        ids = np.arange(200, 250)
        vecs = vectors(rng, 50)
        tbl.add(rows(ids, vecs))
        tbl.flush()  # third small segment: the policy triggers a merge
        model.update(zip(ids.tolist(), vecs))
        assert wait_until(lambda: tbl.stats()["segments"] == 1), \
            f"no background merge: {tbl.stats()['segments']} segments"
        assert "compact" in changes(tbl)
        assert_matches(tbl, model, "after the background merge")
        assert_search_is_brute_force(tbl, model, vectors(rng, 5))
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert tbl.stats()["segments"] == 1
        assert_matches(tbl, model, "after reopen")


def test_policy_merges_while_writes_flush_on_their_own(db_path: Path, rng) -> None:
    # memtable_bytes small: add() itself flushes; the service keeps the segment count down
    policy = omendb.CompactionPolicy(min_segments=4, small_rows=10_000)
    with omendb.open(db_path, memtable_bytes=4 << 10, build_indexes=False, compaction=policy, fsync=False) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(40):
            ids = np.arange(batch * 40, batch * 40 + 40)
            vecs = vectors(rng, 40)
            tbl.add(rows(ids, vecs))
            model.update(zip(ids.tolist(), vecs))
        flushes = changes(tbl).count("flush")
        assert flushes >= 12, "the memtable never flushed: test too weak"
        assert wait_until(lambda: "compact" in changes(tbl)), "the background service never merged"
        assert wait_until(lambda: tbl.stats()["segments"] < flushes // 2)
        assert_matches(tbl, model, "while merging in the background")


def test_flushes_during_a_background_merge_are_merged_later(db_path: Path, rng, monkeypatch) -> None:
    # Segments flushed while a merge runs are small segments like any other: once the
    # writes stop, the service must bring them under min_segments too.
    policy = omendb.CompactionPolicy(min_segments=3, small_rows=10_000)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db, PausedMerge(monkeypatch) as paused:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}

        for batch in range(3):
            add_flushed(tbl, model, rng, batch, 30)
        paused.wait_reached()  # the background merge of those 3 is under way
        for batch in range(3, 6):
            add_flushed(tbl, model, rng, batch, 30)  # 3 more small segments: enough for another merge
        paused.go.set()
        assert wait_until(lambda: "compact" in changes(tbl))
        converged = wait_until(lambda: tbl.stats()["segments"] < policy.min_segments, timeout=3)
        segments = tbl.stats()["segments"]
        assert_matches(tbl, model, "after the merges")
        assert converged, (
            f"{segments} small segments (min_segments={policy.min_segments}) stay unmerged after the writes "
            f"stopped: the flushes made during the first merge never triggered another one; "
            f"versions: {changes(tbl)}")


def test_policy_rewrites_segments_with_many_deleted_rows(db_path: Path, rng) -> None:
    policy = omendb.CompactionPolicy(min_segments=4, small_rows=50, max_deleted_fraction=0.3)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM)
        vecs = vectors(rng, 200)
        tbl.add(rows(np.arange(200), vecs))
        tbl.flush()
        model = dict(zip(range(200), vecs))
        tbl.delete(list(range(0, 200, 10)))  # 10%: under the threshold
        for i in range(0, 200, 10):
            del model[i]
        extra = vectors(rng, 5)
        tbl.add(rows(np.arange(1000, 1005), extra))
        model.update(zip(range(1000, 1005), extra))
        tbl.flush()
        time.sleep(0.3)
        assert tbl.stats()["deleted_rows"] == 20, "a segment under max_deleted_fraction was rewritten"

        doomed = [i for i in range(200) if i % 10 in (1, 2, 3, 4, 5)]  # now 60% deleted
        tbl.delete(doomed)
        for i in doomed:
            del model[i]
        extra = vectors(rng, 5)
        tbl.add(rows(np.arange(2000, 2005), extra))
        model.update(zip(range(2000, 2005), extra))
        tbl.flush()
        assert wait_until(lambda: tbl.stats()["deleted_rows"] == 0), tbl.stats()
        assert_matches(tbl, model, "after the rewrite")


def test_a_flush_of_deletes_alone_triggers_the_deleted_fraction_rule(db_path: Path, rng) -> None:
    # A user deletes most rows of a big segment and flushes: the policy says such a
    # segment is rewritten after a flush, whether or not new rows were flushed too.
    policy = omendb.CompactionPolicy(min_segments=4, small_rows=50, max_deleted_fraction=0.3)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM)
        vecs = vectors(rng, 200)
        tbl.add(rows(np.arange(200), vecs))
        tbl.flush()
        tbl.delete(list(range(120)))
        tbl.flush()
        assert tbl.stats()["deleted_rows"] == 120
        rewritten = wait_until(lambda: tbl.stats()["deleted_rows"] == 0, timeout=2)
        assert_matches(tbl, dict(zip(range(120, 200), vecs[120:])), "after deleting 60%")
        assert rewritten, (f"a segment with 60% deleted rows (max_deleted_fraction=0.3) was not rewritten after "
                           f"the flush that published the deletes; versions: {changes(tbl)}")


def test_compaction_false_disables_background_merges(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(8):
            add_flushed(tbl, model, rng, batch, 10, stride=10)
        tbl.delete(list(range(0, 80, 2)))
        tbl.flush()
        for i in range(0, 80, 2):
            del model[i]
        time.sleep(0.5)
        stats = tbl.stats()
        assert stats["segments"] == 8 and stats["deleted_rows"] == 40
        assert "compact" not in changes(tbl)
        result = tbl.compact()  # works with the service off
        assert result["segments_before"] == 8 and result["segments_after"] == 1
        assert result["rows_dropped"] == 40
        assert_matches(tbl, model, "after compact()")
    # the policy object with enabled=False does the same
    policy = omendb.CompactionPolicy(enabled=False, min_segments=2)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.open_table("t")
        for batch in range(3):
            tbl.add(rows([5000 + batch], vectors(rng, 1)))
            tbl.flush()
        time.sleep(0.3)
        assert tbl.stats()["segments"] == 4


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        omendb.CompactionPolicy(min_segments=1)
    with pytest.raises(ValueError):
        omendb.CompactionPolicy(max_deleted_fraction=0.0)
    with pytest.raises(ValueError):
        omendb.CompactionPolicy(max_deleted_fraction=1.5)


# --------------------------------------------------------------- compact()
def test_compact_drops_deleted_rows_and_keeps_live_rows(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(5):
            add_flushed(tbl, model, rng, batch, 80)
        unflushed = vectors(rng, 30)
        tbl.add(rows(np.arange(900, 930), unflushed))  # still in the memtable
        model.update(zip(range(900, 930), unflushed))
        doomed = rng.choice(sorted(model), size=150, replace=False).tolist()
        assert tbl.delete(doomed) == 150
        for i in doomed:
            del model[i]
        replaced = rng.choice(sorted(model), size=40, replace=False).tolist()
        new = vectors(rng, 40)
        tbl.upsert(rows(replaced, new))
        model.update(zip(replaced, new))
        assert_matches(tbl, model, "before compact()")

        tbl.flush()
        before = tbl.stats()
        assert before["deleted_rows"] > 100
        result = tbl.compact()
        assert set(result) >= {"segments_before", "segments_after", "rows_dropped", "version"}
        assert result["segments_before"] == before["segments"]
        assert result["segments_after"] == 1
        assert result["rows_dropped"] == before["deleted_rows"]
        assert result["version"] == tbl.version > before["version"]
        after = tbl.stats()
        assert after["segments"] == 1 and after["deleted_rows"] == 0
        assert after["rows"] == after["segment_rows"] == len(model)
        assert_matches(tbl, model, "after compact()")
        assert_search_is_brute_force(tbl, model, vectors(rng, 8))
        assert_search_is_brute_force(tbl, model, vectors(rng, 4), exact=False)
        gone = tbl.get(doomed)
        assert gone.num_rows == 0
        again = tbl.compact()  # nothing left to do
        assert again["rows_dropped"] == 0 and again["segments_after"] == 1
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert tbl.stats()["deleted_rows"] == 0
        assert_matches(tbl, model, "after reopen")
        assert_search_is_brute_force(tbl, model, vectors(rng, 4))


def test_compact_with_metadata_and_string_keys(db_path: Path, rng) -> None:
    n = 120
    data = pa.table({"id": [f"doc-{i}" for i in range(n)],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors(rng, n).ravel()), DIM),
                     "lang": [("en", "de", "fr")[i % 3] for i in range(n)],
                     "score": np.arange(n, dtype=np.float64)})
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", data=data.slice(0, 60))
        tbl.flush()
        tbl.add(data.slice(60))
        tbl.flush()
        tbl.delete(where="lang = 'de'")
        expected = data.filter(pa.compute.not_equal(data["lang"], "de")).sort_by("id")
        tbl.compact()
        assert tbl.stats()["segments"] == 1
        assert tbl.to_arrow().sort_by("id").equals(expected.cast(tbl.schema))
        hits = tbl.search(vectors(rng, 1)[0], k=200, where="lang = 'fr'", exact=True)
        assert hits.num_rows == n // 3
        assert set(hits.column("lang").to_pylist()) == {"fr"}


def test_compact_respects_max_rows(db_path: Path, rng) -> None:
    policy = omendb.CompactionPolicy(enabled=False, max_rows=250)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(6):
            add_flushed(tbl, model, rng, batch, 100)
        result = tbl.compact()
        assert result["segments_before"] == 6
        assert 3 <= result["segments_after"] < 6  # 600 rows, at most 250 per merged segment
        assert tbl.stats()["segment_rows"] == 600
        assert_matches(tbl, model, "after a bounded compact()")


def test_compact_of_everything_deleted(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        for batch in range(3):
            tbl.add(rows(np.arange(batch * 10, batch * 10 + 10), vectors(rng, 10)))
            tbl.flush()
        tbl.delete(list(range(25)))  # two whole segments and half of the third
        result = tbl.compact()
        assert tbl.stats()["segments"] == 1 and tbl.stats()["deleted_rows"] == 0
        # compact() reports what it did, including the flush it starts with
        assert (result["segments_before"], result["rows_dropped"]) == (3, 25), (
            f"compact() removed 25 deleted rows and 2 segments but reported {result}")
        assert tbl.count() == 5
        assert sorted(tbl.to_arrow().column("id").to_pylist()) == list(range(25, 30))
        assert tbl.search(np.zeros(DIM), k=10, exact=True).num_rows == 5


def test_compact_of_an_empty_table(db_path: Path) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        result = tbl.compact()
        assert result == {"segments_before": 0, "segments_after": 0, "rows_dropped": 0, "version": 1}
        assert tbl.count() == 0 and changes(tbl) == ["create"]


def test_compact_on_a_read_only_table_raises(db_path: Path, rng) -> None:
    with omendb.open(db_path, compaction=False) as db:
        db.create_table("t", data=rows(np.arange(10), vectors(rng, 10)))
    with omendb.open(db_path, read_only=True) as db:
        tbl = db.open_table("t")
        with pytest.raises(omendb.ReadOnlyError):
            tbl.compact()
        assert tbl.count() == 10


# -------------------------------------------------- writes racing a merge
@pytest.mark.parametrize("trigger", ["compact", "background"])
def test_writes_between_merge_write_and_publish_are_kept(db_path: Path, rng, monkeypatch, trigger: str) -> None:
    # The merge has read its sources and written the merged segment; before it
    # publishes, a writer deletes, upserts, deletes-and-re-adds and flushes.
    policy = omendb.CompactionPolicy(enabled=trigger == "background", min_segments=4, small_rows=10_000)
    with omendb.open(db_path, build_indexes=False, compaction=policy) as db, PausedMerge(monkeypatch) as paused:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(4):
            ids = np.arange(batch * 100, batch * 100 + 50)
            vecs = vectors(rng, 50)
            tbl.add(rows(ids, vecs))
            if batch < 3 or trigger == "compact":
                tbl.flush()
            model.update(zip(ids.tolist(), vecs))
        tbl.delete([1, 2, 101])  # deleted before the merge: dropped by it
        for i in (1, 2, 101):
            del model[i]
        if trigger == "compact":
            thread, out = in_thread(tbl.compact)
        else:
            tbl.flush()  # the 4th small segment: the service starts a merge
            thread, out = None, {}
        paused.wait_reached()

        # reads do not wait for the merge, and see the state before it
        assert_matches(tbl, model, "while the merge is paused before publishing")
        assert tbl.stats()["segments"] == 4

        tbl.delete([5, 130])                      # delete rows being merged
        for i in (5, 130):
            del model[i]
        upserted = np.full((2, DIM), 7.0, np.float32)
        tbl.upsert(rows([6, 230], upserted))      # replace rows being merged
        model.update({6: upserted[0], 230: upserted[1]})
        tbl.delete([7])                           # delete, then add the same id again
        readded = np.full((1, DIM), -3.0, np.float32)
        tbl.add(rows([7], readded))
        model[7] = readded[0]
        tbl.flush()                               # publish those deletes mid-merge
        tbl.delete([8])                           # and some after that flush
        del model[8]
        twice = np.full((1, DIM), 9.0, np.float32)
        tbl.upsert(rows([9], np.zeros((1, DIM), np.float32)))
        tbl.upsert(rows([9], twice))
        model[9] = twice[0]
        version_before_publish = tbl.version

        paused.go.set()
        if thread is not None:
            result = joined(thread, out)
            assert result["segments_after"] < result["segments_before"]
            # it removed the 3 rows deleted before it started; the deletes made meanwhile
            # are kept as deletions of the merged segment, not dropped (nor "undropped")
            assert result["rows_dropped"] == 3, result
        assert wait_until(lambda: "compact" in changes(tbl)), "the merge never published"
        assert tbl.version > version_before_publish

        assert tbl.get([1, 2, 101, 5, 130, 8]).num_rows == 0, "a deleted row came back after the merge"
        for key, vector in ((6, upserted[0]), (230, upserted[1]), (7, readded[0]), (9, twice[0])):
            got = tbl.get([key])
            assert got.num_rows == 1, f"id {key} is live {got.num_rows} times"
            np.testing.assert_array_equal(vectors_of(got)[0], vector)
            near = tbl.search(vector, k=len(model) + 10, exact=True).column("id").to_pylist()
            assert near.count(key) == 1, f"search returns id {key} {near.count(key)} times"
        assert_matches(tbl, model, "after the merge published")
        assert_search_is_brute_force(tbl, model, vectors(rng, 5))
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert_matches(tbl, model, "after reopen")
        assert tbl.get([5, 130, 8]).num_rows == 0
        tbl.compact()
        assert_matches(tbl, model, "after a second compact()")


def test_merge_whose_source_disappears_is_abandoned(db_path: Path, rng, monkeypatch) -> None:
    # While a merge runs, every row of one of its sources is deleted and flushed (the
    # segment leaves the table): the merge must not publish rows of that segment.
    with omendb.open(db_path, build_indexes=False, compaction=False) as db, PausedMerge(monkeypatch) as paused:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(3):
            add_flushed(tbl, model, rng, batch, 20)
        thread, out = in_thread(tbl.compact)
        paused.wait_reached()
        tbl.delete(list(range(100, 120)))
        tbl.flush()
        for i in range(100, 120):
            del model[i]
        paused.go.set()
        joined(thread, out)
        assert tbl.get(list(range(100, 120))).num_rows == 0
        assert_matches(tbl, model, "after the abandoned merge")
        tbl.compact()
        assert tbl.stats()["segments"] == 1
        assert_matches(tbl, model, "after the next compact()")


def test_searches_do_not_wait_for_a_merge(db_path: Path, rng, monkeypatch) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db, PausedMerge(monkeypatch) as paused:
        tbl = db.create_table("t", dim=DIM)
        model: dict[int, np.ndarray] = {}
        for batch in range(3):
            add_flushed(tbl, model, rng, batch, 40)
        compaction, out = in_thread(tbl.compact)
        paused.wait_reached()
        reader, read_out = in_thread(lambda: (tbl.search(vectors(rng, 1)[0], k=5).num_rows, tbl.count(),
                                              tbl.get([0, 100]).num_rows, tbl.stats()["segments"]))
        reader.join(5)
        assert not reader.is_alive(), "a read blocked while a merge was in progress"
        assert joined(reader, read_out) == (5, len(model), 2, 3)
        paused.go.set()
        joined(compaction, out)
        assert tbl.stats()["segments"] == 1
        assert_matches(tbl, model, "after the merge")


# ------------------------------------------------------- indexed segments
def spy_on_index_builds(monkeypatch) -> list[str]:
    """The segment files the index builder builds a graph for (merges build theirs elsewhere)."""
    from omendb.table import indexer
    built: list[str] = []
    original = indexer.build_index

    def spy(core, handle, config, **kwargs):
        built.append(handle.file)
        return original(core, handle, config, **kwargs)

    monkeypatch.setattr(indexer, "build_index", spy)
    return built


def unindexed_segments(tbl, model, rng, count: int) -> list[str]:
    for batch in range(count):
        add_flushed(tbl, model, rng, batch, 150, stride=1_000)
    return [h.file for h in tbl.core.state.segments]


def test_the_index_builder_leaves_the_segments_of_a_merge_in_progress(db_path: Path, rng, monkeypatch) -> None:
    built = spy_on_index_builds(monkeypatch)
    too_small = omendb.HnswFlat(m=8, ef_construction=32, min_rows=1_000)
    with omendb.open(db_path, compaction=False) as db, PausedMerge(monkeypatch) as paused:
        tbl = db.create_table("t", dim=DIM, index=too_small)
        model: dict[int, np.ndarray] = {}
        sources = unindexed_segments(tbl, model, rng, 3)
        compaction, out = in_thread(tbl.compact)
        paused.wait_reached()
        tbl.create_index(index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=100))  # all three need one now
        assert not tbl.wait_for_index(timeout=1.5), "indexed while their merge was in progress"
        assert not set(built) & set(sources), "a graph was built for rows a merge was about to replace"
        paused.go.set()
        joined(compaction, out)
        assert tbl.wait_for_index(timeout=WAIT)
        stats = tbl.stats()
        assert (stats["segments"], stats["indexed_segments"], stats["indexed_rows"]) == (1, 1, 450)
        assert not set(built) & set(sources)
        assert_search_is_brute_force(tbl, model, vectors(rng, 3))


def test_segments_of_a_failed_merge_get_their_graphs_after_all(db_path: Path, rng, monkeypatch) -> None:
    built = spy_on_index_builds(monkeypatch)
    reached, go = threading.Event(), threading.Event()

    def failing(*args):
        reached.set()
        assert go.wait(30), "the test never released the merge"
        raise omendb.OmenError("the merged segment's index could not be written")

    monkeypatch.setattr(Compactor, "_index_merged", failing)
    with omendb.open(db_path, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM, index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=1_000))
        model: dict[int, np.ndarray] = {}
        sources = unindexed_segments(tbl, model, rng, 3)
        compaction, out = in_thread(tbl.compact)
        assert reached.wait(WAIT)
        tbl.create_index(index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=100))
        go.set()
        with pytest.raises(omendb.OmenError, match="could not be written"):
            joined(compaction, out)
        assert tbl.wait_for_index(timeout=WAIT)
        assert sorted(h.file for h in tbl.core.state.segments) == sorted(sources)
        assert tbl.stats()["indexed_segments"] == 3 and set(built) == set(sources)
        assert_matches(tbl, model, "after the failed merge")


class HeldCompaction:
    """Holds background compactions at the start of each planned merge (before the merge
    marks its sources) until the test says go; ``fail`` makes the held merge raise."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        original = Compactor._merge

        def held(compactor, files):
            self.reached.set()
            assert self.go.wait(30), "the test never released the compaction"
            if fail:
                raise omendb.OmenError("the merged segment could not be written")
            return original(compactor, files)

        monkeypatch.setattr(Compactor, "_merge", held)


def test_the_index_builder_leaves_the_segments_a_queued_compaction_will_merge(db_path: Path, rng,
                                                                                 monkeypatch) -> None:
    from omendb.table.indexer import IndexBuilder

    built = spy_on_index_builds(monkeypatch)
    attempts = []
    original_build = IndexBuilder._build
    monkeypatch.setattr(IndexBuilder, "_build", lambda builder, file: (attempts.append(file),
                                                                       original_build(builder, file))[1])
    held = HeldCompaction(monkeypatch)
    policy = omendb.CompactionPolicy(min_segments=4, small_rows=10_000)
    with omendb.open(db_path, compaction=policy) as db:
        try:
            tbl = db.create_table("t", dim=DIM, index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=1_000))
            model: dict[int, np.ndarray] = {}
            sources = unindexed_segments(tbl, model, rng, 4)  # the fourth makes a merge due
            assert held.reached.wait(WAIT), "the compaction service never planned the merge"
            tbl.create_index(index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=100))  # all four need one
            attempts.clear()
            assert not tbl.wait_for_index(timeout=1.5), "indexed before the merge that takes them ran"
            assert not set(built) & set(sources), "a graph was built for rows a planned merge will replace"
            # the waiter looks again every 0.5 s, never in a loop against the builder's skips
            assert len(attempts) <= 8 * len(sources), f"{len(attempts)} build attempts in 1.5 s: a busy loop"
        finally:
            held.go.set()
        assert tbl.wait_for_index(timeout=WAIT)
        stats = tbl.stats()
        assert (stats["segments"], stats["indexed_segments"], stats["indexed_rows"]) == (1, 1, 600)
        assert not set(built) & set(sources)
        assert_search_is_brute_force(tbl, model, vectors(rng, 3))


def test_after_a_failed_background_compaction_each_segment_gets_its_own_graph(db_path: Path, rng,
                                                                              monkeypatch) -> None:
    built = spy_on_index_builds(monkeypatch)
    held = HeldCompaction(monkeypatch, fail=True)
    policy = omendb.CompactionPolicy(min_segments=4, small_rows=10_000)
    with omendb.open(db_path, compaction=policy) as db, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tbl = db.create_table("t", dim=DIM, index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=1_000))
            model: dict[int, np.ndarray] = {}
            sources = unindexed_segments(tbl, model, rng, 4)
            assert held.reached.wait(WAIT)
            tbl.create_index(index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=100))
        finally:
            held.go.set()
        assert tbl.wait_for_index(timeout=WAIT), "the segments of the failed compaction were never indexed"
        assert sorted(h.file for h in tbl.core.state.segments) == sorted(sources)
        assert tbl.stats()["indexed_segments"] == 4 and set(built) == set(sources)
        assert any("background compaction" in str(w.message) for w in caught)
        assert_matches(tbl, model, "after the failed compaction")


def test_a_build_under_way_stops_when_its_segment_joins_a_merge(db_path: Path, rng, monkeypatch) -> None:
    from omendb.index.calibration import held_out
    from omendb.table import indexer

    first = 150 - held_out(150)  # the rows of the first segment a build starts from (the rest calibrate it)
    chunks: dict[int, int] = {}  # rows of the segment being built -> chunks it started
    held, go = threading.Event(), threading.Event()
    original = indexer.build_hnsw

    def small_chunks(vectors, norms, metric, config, should_stop, threads):
        rows = vectors.shape[0]

        def counting_threads() -> int:
            chunks[rows] = chunks.get(rows, 0) + 1
            if chunks[rows] == 2 and rows == first:  # the first segment's second chunk
                held.set()
                assert go.wait(30), "the test never released the build"
            return threads()

        return original(vectors, norms, metric, config, should_stop=should_stop, chunk_rows=50,
                        threads=counting_threads)

    monkeypatch.setattr(indexer, "build_hnsw", small_chunks)
    with omendb.open(db_path, compaction=False) as db, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tbl = db.create_table("t", dim=DIM, index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=1_000))
            model: dict[int, np.ndarray] = {}
            unindexed_segments(tbl, model, rng, 3)
            tbl.create_index(index=omendb.HnswFlat(m=8, ef_construction=32, min_rows=100))
            assert held.wait(WAIT), "the index builder never started"
            compaction, out = in_thread(tbl.compact)
            assert wait_until(lambda: len(tbl.core.merging) == 3), "the merge never started"
        finally:
            go.set()
        joined(compaction, out)
        assert tbl.wait_for_index(timeout=WAIT)
        assert chunks[first] == 2, "the build went on after its segment joined a merge"
        stats = tbl.stats()
        assert (stats["segments"], stats["indexed_segments"], stats["indexed_rows"]) == (1, 1, 450)
        assert not [w for w in caught if "failed" in str(w.message)], "a cancelled build was reported as failed"
        assert_search_is_brute_force(tbl, model, vectors(rng, 3))


def test_merged_segment_is_published_with_its_index(db_path: Path, rng) -> None:
    config = omendb.HnswConfig(m=8, ef_construction=40, min_rows=100)
    with omendb.open(db_path, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM, index=config)
        model: dict[int, np.ndarray] = {}
        for batch in range(4):
            ids = np.arange(batch * 100, batch * 100 + 60)  # 60 < min_rows: not indexed alone
            vecs = vectors(rng, 60)
            tbl.add(rows(ids, vecs))
            tbl.flush()
            model.update(zip(ids.tolist(), vecs))
        tbl.delete([0, 1, 2])
        for i in (0, 1, 2):
            del model[i]
        assert tbl.stats()["indexed_segments"] == 0
        tbl.compact()
        stats = tbl.stats()  # no waiting: the index came with the merge
        assert stats["segments"] == 1
        assert stats["indexed_segments"] == 1
        assert stats["indexed_rows"] == 237
        assert changes(tbl)[-1] == "compact", "the index was published in a separate version"
        assert_matches(tbl, model, "after the indexed merge")
        assert_search_is_brute_force(tbl, model, vectors(rng, 20), exact=False, min_recall=0.9)
        assert_search_is_brute_force(tbl, model, vectors(rng, 3))
    with omendb.open(db_path, compaction=False) as db:
        tbl = db.open_table("t")
        assert tbl.stats()["indexed_segments"] == 1
        assert_search_is_brute_force(tbl, model, vectors(rng, 10), exact=False, min_recall=0.9)


def test_background_merge_builds_the_index(db_path: Path, rng) -> None:
    config = omendb.HnswConfig(m=8, ef_construction=40, min_rows=100)
    policy = omendb.CompactionPolicy(min_segments=3, small_rows=10_000)
    with omendb.open(db_path, compaction=policy) as db:
        tbl = db.create_table("t", dim=DIM, index=config)
        model: dict[int, np.ndarray] = {}
        for batch in range(3):
            add_flushed(tbl, model, rng, batch, 50)
        assert wait_until(lambda: tbl.stats()["segments"] == 1)
        assert tbl.stats()["indexed_segments"] == 1
        assert_matches(tbl, model, "after the background merge")
        assert_search_is_brute_force(tbl, model, vectors(rng, 10), exact=False, min_recall=0.9)


def test_stats_while_writing_compacting_and_cleaning_up(db_path: Path, rng) -> None:
    # stats() (segments, deleted_rows, bytes) is a read like any other: it must not fail
    # because a flush, a merge or a cleanup renames or removes files at that moment.
    policy = omendb.CompactionPolicy(min_segments=2, small_rows=10_000)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with omendb.open(db_path, memtable_bytes=2 << 10, build_indexes=False, compaction=policy,
                         fsync=False) as db:
            tbl = db.create_table("t", dim=DIM)
            stop = threading.Event()
            written = [0]

            def write():
                local = np.random.default_rng(3)
                while not stop.is_set():
                    start = written[0]
                    tbl.add(rows(np.arange(start, start + 20), vectors(local, 20)))
                    written[0] = start + 20
                    if start % 200 == 0:
                        tbl.cleanup()

            writer, out = in_thread(write)
            errors, seen, calls = [], [], 0
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline and not errors and writer.is_alive():
                try:
                    stats = tbl.stats()
                except Exception as exc:
                    errors.append(exc)
                    break
                calls += 1
                seen.append(stats["rows"])
                assert stats["bytes"] > 0 and stats["segments"] >= 0
            stop.set()
            joined(writer, out)
            assert written[0] >= 200 and calls > 50, "the test hardly ran"
            assert not errors, f"stats() failed after {calls} calls: {errors[0]!r}"
            assert seen == sorted(seen), "stats()['rows'] went down while rows were only added"
            assert tbl.stats()["rows"] == written[0] == tbl.count()
    finally:
        sys.setswitchinterval(old_interval)


# ------------------------------------------------------------------ stress
class Stress:
    """A writer, a deleter/upserter, a searcher and a compact() caller on one table,
    with background compaction on, checked against a model."""

    def __init__(self, tbl, seed: int) -> None:
        self.tbl = tbl
        self.model: dict[int, np.ndarray] = {}
        self.retired: set[int] = set()     # deleted ids (never reused)
        self.op_lock = threading.Lock()    # a write and its model update happen together
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.counts = {"adds": 0, "deletes": 0, "upserts": 0, "locked_checks": 0, "unlocked_checks": 0,
                       "compacts": 0, "rows_dropped": 0}
        self.seed = seed
        self.last_version = 0

    def _loop(self, step: Callable[[np.random.Generator], None], offset: int) -> Callable[[], None]:
        def run():
            rng = np.random.default_rng(self.seed + offset)
            try:
                while not self.stop.is_set():
                    step(rng)
            except BaseException as exc:
                self.errors.append(exc)
                self.stop.set()
        return run

    def write(self, rng) -> None:
        with self.op_lock:
            start = self.counts["adds"] * 25
            vecs = vectors(rng, 25)
            self.tbl.add(rows(np.arange(start, start + 25), vecs))
            self.model.update(zip(range(start, start + 25), vecs))
            self.counts["adds"] += 1
        time.sleep(0.002)

    def mutate(self, rng) -> None:
        with self.op_lock:
            live = list(self.model)
            if len(live) > 40:
                picked = rng.choice(live, size=8, replace=False).tolist()
                doomed, replaced = picked[:4], picked[4:]
                assert self.tbl.delete(doomed) == 4
                for i in doomed:
                    del self.model[i]
                self.retired.update(doomed)
                new = vectors(rng, 4)
                self.tbl.upsert(rows(replaced, new))
                self.model.update(zip(replaced, new))
                self.counts["deletes"] += 4
                self.counts["upserts"] += 4
        time.sleep(0.003)

    def search(self, rng) -> None:
        # 1) writes held off (compaction still running): the table equals the model
        with self.op_lock:
            model = self.model
            if model:
                assert self.tbl.count() == len(model)
                q = vectors(rng, 1)[0]
                result = self.tbl.search(q, k=len(model) + 10, exact=True)
                ids = result.column("id").to_pylist()
                assert len(ids) == len(set(ids)), "a row is live twice"
                assert set(ids) == set(model), (f"missing {sorted(set(model) - set(ids))[:5]}, "
                                                f"deleted but returned {sorted(set(ids) - set(model))[:5]}")
                got = dict(zip(ids, vectors_of(result)))
                for i in rng.choice(list(model), size=min(20, len(model)), replace=False).tolist():
                    np.testing.assert_array_equal(got[i], model[i])
                retired = sorted(self.retired)[-20:]
                probe = retired + rng.choice(list(model), size=min(10, len(model)), replace=False).tolist()
                fetched = self.tbl.get(probe)
                assert sorted(fetched.column("id").to_pylist()) == sorted(set(probe) & set(model))
                self.counts["locked_checks"] += 1
            retired_before = frozenset(self.retired)
        # 2) writes going on: no retired id, no id twice
        result = self.tbl.search(vectors(rng, 1)[0], k=100_000, exact=True, columns=["id"])
        ids = result.column("id").to_pylist()
        assert len(ids) == len(set(ids)), "a row is live twice"
        back = retired_before.intersection(ids)
        assert not back, f"deleted rows came back: {sorted(back)[:10]}"
        if retired_before:
            assert self.tbl.get(sorted(retired_before)[:50]).num_rows == 0
        self.counts["unlocked_checks"] += 1

    def compact(self, rng) -> None:
        result = self.tbl.compact()
        # (segments_after may exceed segments_before here: the writer thread flushes meanwhile)
        assert result["rows_dropped"] >= 0 and result["version"] >= self.last_version, result
        self.last_version = result["version"]
        self.counts["compacts"] += 1
        self.counts["rows_dropped"] += result["rows_dropped"]
        time.sleep(rng.uniform(0.0, 0.05))

    def run(self, seconds: float) -> None:
        threads = [threading.Thread(target=self._loop(step, i), daemon=True)
                   for i, step in enumerate((self.write, self.mutate, self.search, self.compact))]
        for thread in threads:
            thread.start()
        self.stop.wait(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a stress thread hung"
        if self.errors:
            raise self.errors[0]


def run_stress(db_path: Path, seconds: float, seed: int) -> None:
    policy = omendb.CompactionPolicy(min_segments=3, small_rows=10_000, max_deleted_fraction=0.1)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often: races show up sooner
    try:
        with omendb.open(db_path, memtable_bytes=12 << 10, build_indexes=False, compaction=policy,
                         fsync=False) as db:
            tbl = db.create_table("t", dim=DIM)
            stress = Stress(tbl, seed)
            stress.run(seconds)
            counts = stress.counts
            assert counts["adds"] >= 20 and counts["deletes"] >= 40 and counts["upserts"] >= 40, counts
            assert counts["compacts"] >= 5 and counts["locked_checks"] >= 5 and counts["unlocked_checks"] >= 5, counts
            assert counts["rows_dropped"] > 0, counts
            assert changes(tbl).count("compact") >= 5
            model = stress.model
            assert_matches(tbl, model, "after the stress run")
            tbl.compact()
            assert tbl.stats()["deleted_rows"] == 0 and tbl.stats()["segments"] == 1
            assert_matches(tbl, model, "after the final compact()")
            assert_search_is_brute_force(tbl, model, vectors(np.random.default_rng(seed), 5))
            assert tbl.get(sorted(stress.retired)).num_rows == 0
    finally:
        sys.setswitchinterval(old_interval)
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert_matches(tbl, model, "after reopen")


def test_stress_writes_searches_and_compactions(db_path: Path) -> None:
    run_stress(db_path, seconds=3.0, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_stress_writes_searches_and_compactions_long(db_path: Path, seed: int) -> None:
    run_stress(db_path, seconds=20.0, seed=seed)
