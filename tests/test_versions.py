"""Versions: every publish is a version; checkout() time-travels; cleanup() frees disk.

The table is compared with models (``dict`` id -> vector) recorded right after each
publish, so a checkout must show exactly the rows of its version.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import omendb
from conftest import brute_force_distances
from omendb.storage.manifest import ManifestStore

DIM = 8


# ----------------------------------------------------------------- helpers
def vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return rng.normal(size=(n, dim)).astype(np.float32)


def rows(ids, vecs: np.ndarray) -> dict:
    return {"id": np.asarray(ids, dtype=np.int64), "vector": np.asarray(vecs, dtype=np.float32)}


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def assert_matches(tbl, model: dict[int, np.ndarray], where: str = "") -> None:
    data = tbl.to_arrow().sort_by("id")
    ids = data.column("id").to_pylist()
    assert ids == sorted(model), (f"{where}: missing {sorted(set(model) - set(ids))[:10]}, "
                                  f"unexpected {sorted(set(ids) - set(model))[:10]}, or an id twice")
    if ids:
        np.testing.assert_array_equal(vectors_of(data), np.stack([model[i] for i in ids]),
                                      err_msg=f"{where}: stale vectors")
    assert tbl.count() == len(model), where


def assert_search_matches(tbl, model: dict[int, np.ndarray], rng, k: int = 10) -> None:
    ids = np.array(sorted(model), dtype=np.int64)
    matrix = np.stack([model[i] for i in ids])
    queries = vectors(rng, 3, matrix.shape[1])
    for q, dist in zip(queries, brute_force_distances(matrix, queries, tbl.metric)):
        expected = ids[np.argsort(dist, kind="stable")[:k]].tolist()
        assert tbl.search(q, k=k, exact=True).column("id").to_pylist() == expected
        assert tbl.search(q, k=k).column("id").to_pylist() == expected  # unindexed: same scan


def referenced_files(table_dir: Path) -> set[str]:
    """Files the retained manifests reference (read straight from the JSON files)."""
    import json

    names: set[str] = set()
    for path in (table_dir / "manifests").glob("v*.json"):
        body = json.loads(path.read_bytes())["body"]
        for seg in body["segments"]:
            names.update(f for f in (seg["file"], seg.get("deletions_file"), seg.get("index_file")) if f)
    return names


def segment_files(table_dir: Path) -> set[str]:
    return set(os.listdir(table_dir / "segments"))


def build_history(tbl, rng) -> dict[int, dict[int, np.ndarray]]:
    """Publish versions by flush, delete, upsert and compact; return version -> model."""
    history = {tbl.version: {}}
    model: dict[int, np.ndarray] = {}

    def publish(step):
        step()
        history[tbl.version] = dict(model)

    def add(start):
        vecs = vectors(rng, 40)
        tbl.add(rows(range(start, start + 40), vecs))
        model.update(zip(range(start, start + 40), vecs))
        tbl.flush()

    def delete():
        tbl.delete(list(range(0, 40, 4)))
        for i in range(0, 40, 4):
            del model[i]
        tbl.flush()

    def upsert():
        new = np.full((5, DIM), 5.0, np.float32) + np.arange(5, dtype=np.float32)[:, None]
        tbl.upsert(rows([41, 42, 43, 44, 45], new))
        model.update(zip([41, 42, 43, 44, 45], new))
        tbl.flush()

    publish(lambda: add(0))
    publish(lambda: add(40))
    publish(delete)
    publish(upsert)
    publish(tbl.compact)
    publish(lambda: add(100))
    return history


# ---------------------------------------------------------------- versions
def test_every_publish_is_a_version(db_path: Path, rng) -> None:
    started = dt.datetime.now(dt.timezone.utc)
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        assert tbl.version == 1
        history = build_history(tbl, rng)
        listed = tbl.versions()
        assert [v["version"] for v in listed] == list(range(1, 8))
        assert [v["version"] for v in listed] == sorted(history)
        assert [v["change"] for v in listed] == ["create", "flush", "flush", "flush", "flush", "compact", "flush"]
        assert [v["rows"] for v in listed] == [len(history[v["version"]]) for v in listed]
        assert [v["segments"] for v in listed] == [0, 1, 2, 2, 3, 1, 2]
        times = [v["time"] for v in listed]
        assert all(isinstance(t, dt.datetime) for t in times)
        assert times == sorted(times)
        assert started - dt.timedelta(seconds=1) <= times[0] <= dt.datetime.now(dt.timezone.utc)
        assert tbl.version == listed[-1]["version"] == tbl.stats()["version"]

        before = tbl.version
        tbl.add(rows([500], vectors(rng, 1)))  # in the memtable only: not a version yet
        assert tbl.version == before and len(tbl.versions()) == 7
        tbl.flush()
        assert tbl.version == before + 1
        assert tbl.versions()[-1]["rows"] == len(history[before]) + 1
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert [v["version"] for v in tbl.versions()] == list(range(1, 9))
        assert tbl.version == 8


def test_index_builds_and_close_publish_versions(db_path: Path, rng) -> None:
    config = omendb.HnswConfig(m=8, ef_construction=40, min_rows=50)
    with omendb.open(db_path, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM, index=config)
        tbl.add(rows(range(100), vectors(rng, 100)))
        tbl.flush()
        assert tbl.wait_for_index(timeout=30)
        assert [v["change"] for v in tbl.versions()] == ["create", "flush", "index"]
        tbl.add(rows([1000], vectors(rng, 1)))
    with omendb.open(db_path, compaction=False, build_indexes=False) as db:
        tbl = db.open_table("t")
        assert [v["change"] for v in tbl.versions()][-1] == "close"
        assert tbl.count() == 101


# ---------------------------------------------------------------- checkout
def test_checkout_shows_each_version(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        tbl.add(rows([999], vectors(rng, 1)))  # unflushed: in no version
        for version, model in history.items():
            old = tbl.checkout(version)
            assert old.version == version and old.read_only
            assert_matches(old, model, f"checkout({version})")
            assert old.stats()["rows"] == len(model)
            assert old.get([999]).num_rows == 0
            if model:
                assert_search_matches(old, model, rng)
            old.close()
        # the rows upserted at version 5 had their old vectors before it
        first_upsert = min(v for v, m in history.items() if 41 in m and m[41][0] == 5.0)
        before = tbl.checkout(first_upsert - 1)
        after = tbl.checkout(first_upsert)
        np.testing.assert_array_equal(vectors_of(before.get([41]))[0], history[first_upsert - 1][41])
        np.testing.assert_array_equal(vectors_of(after.get([41]))[0], np.full(DIM, 5.0, np.float32))
        assert before.get([0]).num_rows == 0  # deleted before the upsert version
        assert tbl.checkout(2).get([0]).num_rows == 1  # ... but not yet at version 2
        # the live table goes on unchanged
        assert tbl.count() == len(history[tbl.version]) + 1


def test_checkout_refuses_writes(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", data=rows(range(20), vectors(rng, 20)))
        tbl.flush()
        old = tbl.checkout(tbl.version)
        writes = {
            "add": lambda: old.add(rows([100], vectors(rng, 1))),
            "upsert": lambda: old.upsert(rows([1], vectors(rng, 1))),
            "delete": lambda: old.delete([1]),
            "delete_where": lambda: old.delete(where="id < 5"),
            "flush": old.flush,
            "compact": old.compact,
            "cleanup": old.cleanup,
            "create_index": lambda: old.create_index(m=8),
        }
        for name, write in writes.items():
            with pytest.raises(omendb.ReadOnlyError):
                write()
        assert old.count() == 20 and tbl.count() == 20
        assert issubclass(omendb.ReadOnlyError, omendb.OmenError)


@pytest.mark.parametrize("version", [0, -1, 3, 10_000])
def test_checkout_of_an_unknown_version(db_path: Path, rng, version: int) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", data=rows(range(5), vectors(rng, 5)))
        tbl.flush()
        assert tbl.version == 2
        with pytest.raises(omendb.VersionNotFoundError):
            tbl.checkout(version)
        assert issubclass(omendb.VersionNotFoundError, omendb.OmenError)


def test_checkout_works_after_reopen(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        for version, model in history.items():
            assert_matches(tbl.checkout(version), model, f"checkout({version}) after reopen")
    with omendb.open(db_path, read_only=True) as db:  # and in a reader
        tbl = db.open_table("t")
        for version, model in history.items():
            assert_matches(tbl.checkout(version), model, f"reader's checkout({version})")


# ----------------------------------------------------------------- cleanup
def test_cleanup_keep_last_removes_old_versions(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        newest = tbl.version
        result = tbl.cleanup(keep_last=3)
        assert set(result) >= {"versions_removed", "files_removed", "bytes_freed"}
        assert result["versions_removed"] == len(history) - 3
        assert [v["version"] for v in tbl.versions()] == [newest - 2, newest - 1, newest]
        for version in history:
            if version <= newest - 3:
                with pytest.raises(omendb.VersionNotFoundError):
                    tbl.checkout(version)
            else:
                assert_matches(tbl.checkout(version), history[version], f"kept version {version}")
        assert_matches(tbl, history[newest], "after cleanup")
        assert referenced_files(db_path / "t") == segment_files(db_path / "t"), \
            "cleanup left unreferenced files or removed referenced ones"

        result = tbl.cleanup()  # default: keep the newest only
        assert result["versions_removed"] == 2
        assert [v["version"] for v in tbl.versions()] == [newest]
        assert tbl.cleanup() == {"versions_removed": 0, "files_removed": 0, "bytes_freed": 0}
        tbl.add(rows([5000], vectors(rng, 1)))
        tbl.flush()
        assert tbl.version == newest + 1  # numbers are never reused
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        model = dict(history[newest])
        model[5000] = tbl.get([5000]).to_pylist()[0]["vector"]
        assert tbl.count() == len(model)
        assert_matches(tbl.checkout(newest), history[newest], "after cleanup and reopen")


def test_cleanup_after_deleting_half_frees_disk(db_path: Path, rng) -> None:
    dim = 64
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=dim)
        model: dict[int, np.ndarray] = {}
        for batch in range(4):
            ids = range(batch * 500, batch * 500 + 500)
            vecs = vectors(rng, 500, dim)
            tbl.add(rows(ids, vecs))
            tbl.flush()
            model.update(zip(ids, vecs))
        full = tbl.stats()
        assert full["segments"] == 4 and full["deleted_rows"] == 0
        doomed = sorted(model)[::2]
        assert tbl.delete(doomed) == 1000
        for i in doomed:
            del model[i]
        tbl.flush()
        assert tbl.stats()["deleted_rows"] == 1000
        compacted = tbl.compact()
        assert compacted["rows_dropped"] == 1000
        after_compact = tbl.stats()
        assert after_compact["deleted_rows"] == 0 and after_compact["segments"] == 1
        # the old segments are still referenced by old versions: nothing freed yet
        assert after_compact["bytes"] > 0.9 * full["bytes"]

        versions_before = len(tbl.versions())
        freed = tbl.cleanup(keep_last=1)
        cleaned = tbl.stats()
        assert freed["versions_removed"] == versions_before - 1
        assert len(tbl.versions()) == 1
        assert freed["files_removed"] >= 4
        assert freed["bytes_freed"] > 0.5 * full["bytes"]
        assert cleaned["bytes"] < 0.6 * full["bytes"], (full["bytes"], cleaned["bytes"])
        assert after_compact["bytes"] - cleaned["bytes"] >= freed["bytes_freed"]
        assert cleaned["rows"] == len(model) == 1000
        assert_matches(tbl, model, "after cleanup")
        assert referenced_files(db_path / "t") == segment_files(db_path / "t")
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert_matches(tbl, model, "after reopen")
        assert tbl.stats()["bytes"] < 0.6 * full["bytes"]


def test_cleanup_never_breaks_an_open_checkout(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        old_version = 3
        old = tbl.checkout(old_version)  # not read yet: its files are opened lazily
        old_files = referenced_files(db_path / "t")  # a superset of version 3's files

        tbl.delete(list(range(40, 80)))
        tbl.compact()
        result = tbl.cleanup(keep_last=1)
        assert result["versions_removed"] > 0
        assert old_version in [v["version"] for v in tbl.versions()], "the checked-out version was removed"

        assert_matches(old, history[old_version], "open checkout after cleanup")
        assert_search_matches(old, history[old_version], rng)
        assert old.stats()["rows"] == len(history[old_version])

        old.close()
        with pytest.raises(omendb.ClosedError):
            old.count()
        freed = tbl.cleanup(keep_last=1)
        assert freed["versions_removed"] == 1 and freed["files_removed"] > 0 and freed["bytes_freed"] > 0
        assert [v["version"] for v in tbl.versions()] == [tbl.version]
        assert segment_files(db_path / "t") == referenced_files(db_path / "t")
        assert not (old_files - referenced_files(db_path / "t")) & segment_files(db_path / "t")


@pytest.mark.parametrize("how", ["checkout_of_a_checkout", "writer_table_reopened", "read_only_database"])
def test_cleanup_never_breaks_other_checkouts_of_this_process(db_path: Path, rng, how: str) -> None:
    # Every way of holding an open checkout in this process is protected, not only
    # checkouts made from the very Table object that runs cleanup().
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        version = 3
        reader_db = None
        if how == "checkout_of_a_checkout":
            newer = tbl.checkout(tbl.version)
            old = newer.checkout(version)
            newer.close()
        elif how == "writer_table_reopened":
            old = tbl.checkout(version)
            tbl.close()
            tbl = db.open_table("t")
        else:
            reader_db = omendb.open(db_path, read_only=True)
            old = reader_db.open_table("t").checkout(version)
        try:
            tbl.delete(list(range(40, 80)))
            tbl.compact()
            tbl.cleanup(keep_last=1)
            try:
                data = old.to_arrow()
            except omendb.OmenError as exc:
                pytest.fail(f"cleanup() removed the files of an open checkout ({how}): {exc}")
            assert data.num_rows == len(history[version])
            assert_matches(old, history[version], f"open checkout ({how}) after cleanup")
        finally:
            if reader_db is not None:
                reader_db.close()


@pytest.mark.parametrize("call", ["versions", "checkout"])
def test_versions_and_checkout_while_another_thread_cleans_up(db_path: Path, rng, monkeypatch, call: str) -> None:
    # A thread lists versions (or checks one out) while the writer thread runs
    # cleanup(): the cleanup lands right after the version numbers were listed.
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        newest = tbl.version
        armed = [True]
        listing = ManifestStore.versions

        def versions_then_cleanup(store):
            found = listing(store)
            if armed[0]:
                armed[0] = False
                cleaner = threading.Thread(target=lambda: tbl.cleanup(keep_last=1))
                cleaner.start()
                cleaner.join(30)
            return found

        monkeypatch.setattr(ManifestStore, "versions", versions_then_cleanup)
        if call == "versions":
            try:
                listed = [v["version"] for v in tbl.versions()]
            except omendb.CorruptFileError as exc:
                pytest.fail(f"versions() failed while another thread ran cleanup(): {exc}")
            assert listed in (sorted(history), [newest])
        else:
            try:
                old = tbl.checkout(3)
            except omendb.VersionNotFoundError:
                pass  # removed by the cleanup: fine
            except omendb.CorruptFileError as exc:
                pytest.fail(f"checkout() failed with a corruption error while another thread ran cleanup(): {exc}")
            else:
                assert_matches(old, history[3], "checkout racing cleanup")
        assert not armed[0]
        assert [v["version"] for v in tbl.versions()] in ([newest], [3, newest])


def test_older_than_keeps_recent_versions(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        for batch in range(3):
            tbl.add(rows(range(batch * 10, batch * 10 + 10), vectors(rng, 10)))
            tbl.flush()
        old_versions = [v["version"] for v in tbl.versions()]  # 1..4
        boundary = time.time()
        time.sleep(0.4)
        for batch in range(3, 6):
            tbl.add(rows(range(batch * 10, batch * 10 + 10), vectors(rng, 10)))
            tbl.flush()
        recent = [v["version"] for v in tbl.versions()][len(old_versions):]

        assert tbl.cleanup(older_than=3600, keep_last=1)["versions_removed"] == 0
        assert tbl.cleanup(older_than=dt.timedelta(hours=1), keep_last=1)["versions_removed"] == 0
        assert [v["version"] for v in tbl.versions()] == old_versions + recent

        cutoff_age = time.time() - boundary - 0.2  # between the two groups
        result = tbl.cleanup(older_than=cutoff_age, keep_last=1)
        assert result["versions_removed"] == len(old_versions)
        assert [v["version"] for v in tbl.versions()] == recent
        assert tbl.checkout(recent[0]).count() == 40
        assert tbl.count() == 60

        result = tbl.cleanup(older_than=dt.timedelta(seconds=0), keep_last=2)
        assert [v["version"] for v in tbl.versions()] == recent[-2:]
        assert result["versions_removed"] == 1


def test_cleanup_arguments_and_read_only(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", data=rows(range(5), vectors(rng, 5)))
        tbl.flush()
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                tbl.cleanup(keep_last=bad)
        assert [v["change"] for v in tbl.versions()] == ["create", "flush"]  # nothing removed
    with omendb.open(db_path, read_only=True) as db:
        with pytest.raises(omendb.ReadOnlyError):
            db.open_table("t").cleanup()


# ------------------------------------------------------ automatic removal
def _wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_old_versions_are_removed_in_the_background_after_keep_versions_for(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False, keep_versions_for=0.5) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        newest = tbl.version
        table_dir = db_path / "t"
        assert _wait_for(lambda: [v["version"] for v in tbl.versions()] == [newest]), tbl.versions()
        assert _wait_for(lambda: segment_files(table_dir) <= referenced_files(table_dir)), \
            segment_files(table_dir) - referenced_files(table_dir)
        with pytest.raises(omendb.VersionNotFoundError, match="retained"):
            tbl.checkout(newest - 1)
        assert_matches(tbl, history[newest], "after the automatic removal")
    with omendb.open(db_path) as db:
        assert_matches(db.open_table("t"), history[newest], "reopened")


def test_an_open_checkout_keeps_its_version_from_the_automatic_removal(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False, keep_versions_for=0) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        first_rows = min(v for v, model in history.items() if model)
        old = tbl.checkout(first_rows)
        newest = tbl.version
        assert _wait_for(lambda: [v["version"] for v in tbl.versions()] == [first_rows, newest]), tbl.versions()
        assert_matches(old, history[first_rows], "the open checkout")
        old.close()
        assert _wait_for(lambda: [v["version"] for v in tbl.versions()] == [newest])
        assert_matches(tbl, history[newest])


def test_keep_versions_for_none_keeps_every_version(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False, keep_versions_for=None) as db:
        tbl = db.create_table("t", dim=DIM)
        history = build_history(tbl, rng)
        time.sleep(1.5)
        assert [v["version"] for v in tbl.versions()] == sorted(history)
        for version, model in history.items():
            assert_matches(tbl.checkout(version), model, f"version {version}")


def test_versions_a_previous_process_left_are_removed_once_expired(db_path: Path, rng) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False, keep_versions_for=None) as db:
        history = build_history(db.create_table("t", dim=DIM), rng)
    newest = max(history)
    with omendb.open(db_path, keep_versions_for=dt.timedelta(seconds=0)) as db:
        tbl = db.open_table("t")
        assert _wait_for(lambda: [v["version"] for v in tbl.versions()] == [tbl.version])
        assert_matches(tbl, history[newest])


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "60", True, dt.timedelta(seconds=-5)])
def test_bad_keep_versions_for_is_refused(db_path: Path, bad) -> None:
    with pytest.raises(omendb.InvalidArgumentError, match="keep_versions_for"):
        omendb.open(db_path, keep_versions_for=bad)
    assert not db_path.exists()
