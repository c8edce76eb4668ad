"""Background flush: a full memtable becomes a segment on the flusher thread while
writes and reads go on, and nothing is lost if that flush is slow, fails or is
killed halfway."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import time
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import omendb
from omendb.table import flusher as flushing

DIM = 16
MEMTABLE = 64 << 10  # 64 KiB: ~700 rows of 16 floats + id
ROWS = 1_000         # one add of this many fills it


def batch(start: int, n: int, scale: float = 1.0) -> dict:
    ids = np.arange(start, start + n)
    vectors = np.sin(ids[:, None] * (np.arange(DIM) + 1) * 1e-2).astype(np.float32) * scale
    return {"id": ids, "vector": vectors}


@pytest.fixture
def gated_flush(monkeypatch):
    """Background segment writes wait at a gate: (entered, gate) events."""
    entered, gate = threading.Event(), threading.Event()
    real = flushing.write_segment

    def write_when_let(*args, **kwargs):
        if threading.current_thread().name == "omendb-flusher":
            entered.set()
            assert gate.wait(30), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(flushing, "write_segment", write_when_let)
    yield entered, gate
    gate.set()


def live_state(tbl) -> dict[int, bytes]:
    rows = tbl.to_arrow()
    vectors = np.stack(rows.column("vector").to_numpy(zero_copy_only=False))
    return {int(i): v.tobytes() for i, v in zip(rows.column("id").to_pylist(), vectors)}


def test_a_full_memtable_flushes_in_the_background_while_writes_and_reads_go_on(db_path: Path,
                                                                                 gated_flush) -> None:
    entered, gate = gated_flush
    with omendb.open(db_path, memtable_bytes=MEMTABLE, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM, metric="l2")
        tbl.add(batch(0, ROWS))                      # fills the memtable: sealed, flush queued
        assert entered.wait(10), "no background flush started"
        stats = tbl.stats()
        assert (stats["segments"], stats["memtable_rows"], stats["rows"]) == (0, ROWS, ROWS)
        # the rows being flushed are searchable, gettable and countable
        probe = batch(0, ROWS)["vector"][123]
        hit = tbl.search(probe, k=1, exact=True)
        assert hit.column("id").to_pylist() == [123] and hit.column("_distance")[0].as_py() == pytest.approx(0, abs=1e-4)
        assert tbl.get([5, 999]).column("id").to_pylist() == [5, 999]
        # writes go on meanwhile, some of them to rows being flushed
        tbl.add(batch(ROWS, 100))
        assert tbl.delete([1, 2, 3]) == 3
        tbl.upsert(batch(10, 5, scale=-1.0))         # replaces ids 10..14, being flushed
        assert tbl.delete(where="id >= 1090") == 10   # rows of the new memtable
        with pytest.raises(omendb.errors.DuplicateKeyError, match="already exist"):
            tbl.add(batch(500, 1))                   # a row being flushed still counts as existing
        expected = {i: v for i, v in live_state(tbl).items()}
        assert len(expected) == ROWS + 100 - 3 - 10
        gate.set()
        tbl.wait_for_index()                         # waits for the flush in progress, then flushes the rest
        stats = tbl.stats()
        assert stats["memtable_rows"] == 0 and stats["segments"] == 2
        # the second segment: 100 new rows + 5 upserted, less the 10 deleted while in the memtable
        assert stats["segment_rows"] == ROWS + 100 + 5 - 10
        # deleted or replaced while being written: carried into the new segment's deletion vector
        assert stats["deleted_rows"] == 3 + 5
        assert live_state(tbl) == expected
        assert tbl.get([1, 2, 3]).num_rows == 0
        np.testing.assert_array_equal(tbl.get([12]).column("vector").to_pylist()[0],
                                      batch(12, 1, scale=-1.0)["vector"][0])
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        assert live_state(db.open_table("t")) == expected
        assert not list((db_path / "t" / "wal").glob("0*.wal"))[1:], "WAL files of the flushed rows remain"


def test_flush_close_and_compact_wait_for_a_background_flush(db_path: Path, gated_flush) -> None:
    entered, gate = gated_flush
    db = omendb.open(db_path, memtable_bytes=MEMTABLE, build_indexes=False, compaction=False)
    tbl = db.create_table("t", dim=DIM)
    tbl.add(batch(0, ROWS))
    assert entered.wait(10)
    tbl.add(batch(ROWS, 10))
    done = threading.Event()
    closer = threading.Thread(target=lambda: (db.close(), done.set()))
    closer.start()
    assert not done.wait(0.3), "close() returned while the flush was still held"
    gate.set()
    closer.join(30)
    assert done.is_set()
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        assert tbl.count() == ROWS + 10 and tbl.stats()["memtable_rows"] == 0


def test_a_failed_background_flush_keeps_the_rows_and_is_retried(db_path: Path, monkeypatch) -> None:
    real = flushing.write_segment
    failures = []

    def fail_once_in_the_background(*args, **kwargs):
        if threading.current_thread().name == "omendb-flusher" and not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(flushing, "write_segment", fail_once_in_the_background)
    with omendb.open(db_path, memtable_bytes=MEMTABLE, build_indexes=False, compaction=False) as db:
        tbl = db.create_table("t", dim=DIM)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tbl.add(batch(0, ROWS))
            tbl.wait_for_index(timeout=10)           # returns once the flush has ended
        assert failures and any("background flush" in str(w.message) for w in caught)
        assert tbl.count() == ROWS and tbl.stats()["segments"] == 0  # nothing lost, nothing published
        tbl.add(batch(ROWS, 10))                     # retries the flush first
        assert tbl.stats()["segments"] == 1 and tbl.count() == ROWS + 10
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        assert db.open_table("t").count() == ROWS + 10


def test_sigkill_during_a_background_flush_loses_no_acknowledged_write(tmp_path: Path, db_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys, threading, numpy as np, omendb
        from omendb.table import flusher as flushing
        real = flushing.write_segment
        def never_in_the_background(*args, **kwargs):
            if threading.current_thread().name == "omendb-flusher":
                print("flushing", flush=True)
                threading.Event().wait()             # hangs until the process is killed
            return real(*args, **kwargs)
        flushing.write_segment = never_in_the_background
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_flushing import batch, ROWS, MEMTABLE
        db = omendb.open({str(db_path)!r}, memtable_bytes=MEMTABLE, build_indexes=False, compaction=False)
        tbl = db.create_table("t", dim={DIM})
        tbl.add(batch(0, ROWS))
        tbl.add(batch(ROWS, 50))
        tbl.delete([7, 8])
        tbl.upsert(batch(20, 1, scale=-1.0))
        print("acked", flush=True)
        threading.Event().wait()
    """))
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(omendb.__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            bufsize=0)  # (unbuffered: select() must see every line not yet read)
    try:
        seen, deadline = b"", time.monotonic() + 60
        while not (b"acked\n" in seen and b"flushing\n" in seen):  # (in either order: a loaded machine
            left = deadline - time.monotonic()                       # may start the flush after the ack)
            assert left > 0 and select.select([proc.stdout], [], [], left)[0], f"saw only {seen!r}"
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode(errors="replace")
            seen += line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        tbl = db.open_table("t")
        state = live_state(tbl)
        assert len(state) == ROWS + 50 - 2
        assert 7 not in state and 8 not in state
        assert state[20] == batch(20, 1, scale=-1.0)["vector"][0].tobytes()
        assert state[ROWS + 49] == batch(ROWS + 49, 1)["vector"][0].tobytes()
        # the segment file the killed flush may have begun is gone (an orphan: never published)
        assert len(list((db_path / "t" / "segments").glob("seg-*.arrow"))) == tbl.stats()["segments"]
