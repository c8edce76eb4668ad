"""Damage, races and failures a hostile user or an unlucky machine brings, and how
omendb keeps its promise through them: no acknowledged write lost silently, nothing
hangs, evidence kept, a documented way out (``omendb.salvage``).

Other processes are real interpreters writing the same folder; a full disk is a real
tmpfs where the machine allows mounting one (and a simulated ENOSPC everywhere).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import omendb
from omendb.storage.locking import WriterLock
from omendb.storage import segment as segment_module

DIM = 4
PACKAGE_ROOT = str(Path(omendb.__file__).resolve().parent.parent)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _rows(start: int, n: int) -> dict:
    return {"id": np.arange(start, start + n), "vector": np.full((n, DIM), float(start), np.float32)}


def _ids(table) -> list[int]:
    return sorted(table.to_arrow()["id"].to_pylist())


def _listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to show nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _wal_only_table(path: Path, batches: int = 5, rows: int = 10) -> None:
    """Table ``t`` whose rows live only in its write-ahead log (the writer died without closing)."""
    code = f"""
        import os, numpy as np, omendb
        db = omendb.open({str(path)!r}, build_indexes=False, compaction=False)
        t = db.create_table("t", dim={DIM})
        for b in range({batches}):
            t.add({{"id": np.arange(b * {rows}, (b + 1) * {rows}), "vector": np.ones(({rows}, {DIM}))}})
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, env=_env(), timeout=120)


class Writer:
    """A process that holds table ``t`` open for writing and adds a batch per line it reads."""

    CODE = """
        import sys, numpy as np, omendb
        db = omendb.open(sys.argv[1], build_indexes=False)
        t = db.create_table("t", dim=4, exist_ok=True)
        print("open", flush=True)
        for line in sys.stdin:
            if line.strip() == "close":
                db.close()
                print("closed", flush=True)
                break
            start = int(line)
            t.add({"id": np.arange(start, start + 5), "vector": np.ones((5, 4))})
            print("added", start, flush=True)
    """

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(self.CODE), str(path)], env=_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "open", self.proc.stderr.read()

    def send(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def finish(self) -> None:
        assert self.send("close") == "closed", self.proc.stderr.read()
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0, self.proc.stderr.read()


# ------------------------------------------------------------- the writer lock
def test_drop_table_from_another_process_is_refused_and_loses_nothing(db_path: Path) -> None:
    writer = Writer(db_path)
    try:
        assert writer.send("0") == "added 0"
        with omendb.open(db_path) as other:
            with pytest.raises(omendb.TableLockedError, match="another process"):
                other.open_table("t")
            with pytest.raises(omendb.TableLockedError, match="another process"):
                other.drop_table("t")
            assert "t" in other.table_names()
        assert writer.send("5") == "added 5"  # the writer goes on: its files are all there
    finally:
        writer.finish()
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("t")) == list(range(10))


def test_drop_table_of_a_table_another_open_of_this_process_holds(db_path: Path) -> None:
    with omendb.open(db_path) as first:
        first.create_table("t", data=_rows(0, 3))
        with omendb.open(db_path) as second:
            with pytest.raises(omendb.TableLockedError, match="another open of this database in this process"):
                second.drop_table("t")
        assert first.open_table("t").count() == 3
        first.drop_table("t")  # the holder itself may
        assert "t" not in first.table_names()


def test_create_table_over_a_folder_that_is_not_a_table_leaves_it_alone(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        folder = db_path / "t"
        folder.mkdir()
        (folder / "mine.txt").write_text("a user's file")
        with pytest.raises(omendb.TableExistsError, match="holds no omendb table"):
            db.create_table("t", dim=DIM)
        assert (folder / "mine.txt").read_text() == "a user's file"
        assert not [p for p in db_path.iterdir() if p.name.startswith(".creating-")]
        assert "t" not in db.table_names()


def test_racing_creates_of_one_name_make_one_table_and_leave_nothing_behind(db_path: Path) -> None:
    omendb.open(db_path).close()
    code = """
        import sys, numpy as np, omendb
        db = omendb.open(sys.argv[1])
        sys.stdin.readline()  # all start together
        try:
            db.create_table("t", data={"id": [int(sys.argv[2])], "vector": np.ones((1, 4))})
            print("created", flush=True)
        except omendb.TableExistsError as exc:
            print("exists", flush=True)
        except omendb.TableLockedError:
            print("exists", flush=True)  # it exists and its creator already holds it
        sys.stdin.readline()
        db.close()
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(db_path), str(i)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for proc in procs:
        proc.stdin.write("\n")
        proc.stdin.flush()
    answers = [proc.stdout.readline().strip() for proc in procs]
    for proc in procs:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read()
    assert sorted(answers) == ["created", "exists", "exists", "exists"], answers
    assert not [p for p in db_path.iterdir() if p.name.startswith(".creating-")]
    with omendb.open(db_path) as db:
        assert db.table_names() == ["t"] and db.open_table("t").count() == 1


def test_losing_a_create_race_is_table_exists_and_leaves_nothing(db_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process creates the same name between this one's check and its rename.
    rival = omendb.open(db_path)
    import omendb.database as database_module

    real = database_module.new_table_schema

    def rival_wins(*args, **kwargs):
        monkeypatch.setattr(database_module, "new_table_schema", real)
        rival.create_table("t", data=_rows(100, 1))
        rival.close()
        return real(*args, **kwargs)

    with omendb.open(db_path) as db:
        monkeypatch.setattr(database_module, "new_table_schema", rival_wins)
        with pytest.raises(omendb.TableExistsError, match="created by another process"):
            db.create_table("t", data=_rows(0, 3))
        monkeypatch.undo()
        assert not [p for p in db_path.iterdir() if p.name.startswith(".creating-")]
        assert _ids(db.open_table("t")) == [100]


def test_opening_a_database_spares_a_table_being_created_elsewhere(db_path: Path) -> None:
    omendb.open(db_path).close()
    staging = db_path / f".creating-t-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    lock = WriterLock(staging / "LOCK", "t")  # what a live create_table holds
    try:
        omendb.open(db_path).close()  # removes leftovers of crashed creates, not live ones
        assert staging.is_dir()
    finally:
        lock.release()
    omendb.open(db_path).close()  # now it is a leftover
    assert not staging.exists()


def test_a_lock_file_that_is_a_folder_is_a_clear_error(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("t", data=_rows(0, 2))
    (db_path / "t" / "LOCK").unlink()
    (db_path / "t" / "LOCK").mkdir()
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.CorruptFileError, match="lock file is a directory"):
            db.open_table("t")


# ------------------------------------------------------------ failures that end
def _failing_segment_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> dict:
    """The next ``times`` segment files fail to reach the disk as on a full one."""
    real = segment_module.publish_written
    left = {"n": times}

    def publish_written(*args, **kwargs):
        if left["n"]:
            left["n"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "publish_written", publish_written)
    return left


def _within(seconds: float, call) -> None:
    """Run ``call`` on a thread; fail (instead of hanging the suite) if it does not return."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} did not return within {seconds} s"
    if errors:
        raise errors[0]


def test_a_failed_flush_is_reported_and_the_next_one_works(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_segment_writes(monkeypatch, times=1)
    db = omendb.open(db_path, build_indexes=False)
    table = db.create_table("t", data=_rows(0, 10))
    with pytest.raises(omendb.DiskFullError, match="no space left"):
        table.flush()
    assert table.count() == 10  # the rows stay searchable
    _within(30, table.flush)
    assert table.stats()["segments"] == 1
    _within(30, table.compact)
    table.add(_rows(10, 5))
    _within(30, db.close)
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("t")) == list(range(15))


def test_close_after_failed_flushes_raises_and_loses_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_segment_writes(monkeypatch, times=100)
    db = omendb.open(db_path, build_indexes=False)
    table = db.create_table("t", data=_rows(0, 10))
    for _ in range(2):
        with pytest.raises(omendb.DiskFullError):
            table.flush()
    with pytest.raises(omendb.DiskFullError):
        _within(30, db.close)
    monkeypatch.undo()
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("t")) == list(range(10))  # from the log


def test_a_failed_background_flush_is_retried_by_the_next_write(db_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    left = _failing_segment_writes(monkeypatch, times=1)
    with omendb.open(db_path, build_indexes=False, memtable_bytes=2048) as db:
        table = db.create_table("t", dim=DIM)
        with pytest.warns(RuntimeWarning, match="background flush .* failed"):
            for start in range(0, 400, 20):
                _within(30, lambda start=start: table.add(_rows(start, 20)))
            _within(30, table.flush)
        assert left["n"] == 0 and table.stats()["segments"] >= 1
        assert _ids(table) == list(range(400))


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.mark.filterwarnings("ignore:omendb. background:RuntimeWarning")  # (a full disk fails them too: expected)
def test_a_really_full_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the simulated ENOSPC tests cover the logic")
    try:
        ballast = disk / "ballast"
        acknowledged = 0
        db = omendb.open(disk / "db", build_indexes=False, compaction=False, memtable_bytes=256 << 10)
        table = db.create_table("t", dim=64)
        ballast.write_bytes(b"x" * (2 << 20))
        failure = None
        for batch in range(400):
            try:
                table.add({"id": np.arange(batch * 100, batch * 100 + 100),
                           "vector": np.ones((100, 64), np.float32)})
                acknowledged = batch + 1
            except omendb.OmenError as exc:
                failure = exc
                break
        assert isinstance(failure, omendb.DiskFullError), failure
        assert str(disk) in str(failure) and "no space left" in str(failure)
        ballast.unlink()  # space is back: everything works again
        _within(60, table.flush)
        table.add({"id": np.arange(10**6, 10**6 + 10), "vector": np.ones((10, 64), np.float32)})
        _within(60, db.close)
        with omendb.open(disk / "db") as db:
            ids = set(db.open_table("t").to_arrow()["id"].to_pylist())
        assert set(range(acknowledged * 100)) | set(range(10**6, 10**6 + 10)) <= ids
        assert acknowledged > 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # (lazily, should a file be open)


# ------------------------------------------------- a damaged log, a missing manifest
def test_a_bit_flip_in_the_last_acknowledged_record_is_reported(db_path: Path) -> None:
    _wal_only_table(db_path)
    (wal,) = (db_path / "t" / "wal").glob("*.wal")
    data = bytearray(wal.read_bytes())
    data[-60] ^= 0x04
    wal.write_bytes(bytes(data))
    before = _listing(db_path / "t")
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.WalDamageError, match=rf"{wal.name}.*record seq 5.*10 row\(s\) to add \(id 40"):
            db.open_table("t")
        with pytest.raises(omendb.WalDamageError):  # every time, not only the first
            db.open_table("t")
    assert _listing(db_path / "t") == before  # nothing cut, nothing removed
    (report,) = omendb.salvage(db_path)
    assert report["records_kept"] == 4 and report["rows_kept"] == 40
    assert any("record seq 5" in line for line in report["lost"])
    assert (Path(report["copies"]) / "wal" / wal.name).read_bytes() == bytes(data)  # the evidence, kept
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        assert _ids(table) == list(range(40))
        table.add(_rows(100, 2))
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("t")) == list(range(40)) + [100, 101]


@pytest.mark.parametrize("size", [0, 10])
def test_a_truncated_log_is_reported(db_path: Path, size: int) -> None:
    _wal_only_table(db_path)
    (wal,) = (db_path / "t" / "wal").glob("*.wal")
    with open(wal, "r+b") as handle:
        handle.truncate(size)
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.WalDamageError, match=f"{wal.name}: file of {size} bytes"):
            db.open_table("t")
    assert wal.stat().st_size == size


def test_damage_in_the_middle_names_the_records_after_it_and_salvage_keeps_them(db_path: Path) -> None:
    _wal_only_table(db_path)
    (wal,) = (db_path / "t" / "wal").glob("*.wal")
    data = bytearray(wal.read_bytes())
    data[len(data) // 2] ^= 0x01
    wal.write_bytes(bytes(data))
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.WalDamageError, match=r"verifiable record\(s\) follow it \(seq 4\.\.5, 20 rows\)"):
            db.open_table("t")
        report = db.salvage("t")
        assert report["records_kept"] == 4
        assert sorted(set(range(50)) - set(_ids(db.open_table("t")))) == list(range(20, 30))


def test_an_older_log_file_cut_at_a_record_boundary_is_reported(db_path: Path) -> None:
    # Two log files: a background flush was running when the writer died. The older file
    # loses its last record, cut exactly at a record boundary: only the next file's name
    # (the seq of its first record) shows that something is missing.
    code = f"""
        import os, numpy as np, omendb
        from omendb.table import flusher
        flusher.Flusher._flush_sealed = lambda self, sealed: None  # the flush never finishes
        db = omendb.open({str(db_path)!r}, build_indexes=False, compaction=False, memtable_bytes=2048)
        t = db.create_table("t", dim={DIM})
        for b in range(12):
            t.add({{"id": np.arange(b * 10, b * 10 + 10), "vector": np.ones((10, {DIM}))}})
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, env=_env(), timeout=120)
    older, newer = sorted((db_path / "t" / "wal").glob("*.wal"))[:2]
    from omendb.storage.wal_read import read_wal

    records = list(read_wal(older, repair=False, last=False))
    end_of_second_last = 16 + sum(24 + r.size for r in records[:-1])
    with open(older, "r+b") as handle:
        handle.truncate(end_of_second_last)
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.WalDamageError, match=rf"records {records[-1].seq}\.\.{records[-1].seq} are missing"):
            db.open_table("t")


def test_a_missing_newest_manifest_is_refused_not_rolled_back(db_path: Path) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        table = db.create_table("t", data=_rows(0, 10))
        table.flush()
        table.delete([1, 2])
        table.flush()  # publishes the deletes and removes the log that held them
        table.add(_rows(10, 5))
    manifests = sorted((db_path / "t" / "manifests").glob("v*.json"))
    newest = manifests[-1]
    newest.unlink()
    before = _listing(db_path / "t")
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.MissingVersionError, match=rf"after v{len(manifests) - 1} are missing"):
            db.open_table("t")
    with omendb.open(db_path, read_only=True) as reader:
        with pytest.raises(omendb.MissingVersionError):
            reader.open_table("t")
    assert _listing(db_path / "t") == before  # nothing removed: the evidence is intact
    (report,) = omendb.salvage(db_path)
    assert any("missing manifest version" in line for line in report["lost"])
    with omendb.open(db_path) as db:
        assert db.open_table("t").count() == 8  # the rollback was accepted, knowingly


def test_opening_removes_only_files_omendb_named(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("t", data=_rows(0, 5)).flush()
    segments = db_path / "t" / "segments"
    (segments / "notes.txt").write_text("mine")
    (segments / "seg-0000000099-0a1b2c3d.arrow").write_bytes(b"an orphan of a crashed flush")
    with omendb.open(db_path) as db:
        assert db.open_table("t").count() == 5
    assert (segments / "notes.txt").read_text() == "mine"
    assert not (segments / "seg-0000000099-0a1b2c3d.arrow").exists()


# ------------------------------------------------------------ background work
def test_a_build_cancelled_at_exit_is_not_reported_as_a_failure(db_path: Path) -> None:
    code = f"""
        import threading, time, numpy as np, omendb
        from omendb.index.hnsw import BuildCancelled
        from omendb.table import indexer
        entered = threading.Event()

        def build_hnsw(vectors, norms, metric, config, should_stop, threads=None):  # a build that runs until stopped
            entered.set()
            deadline = time.monotonic() + 60
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise BuildCancelled()

        indexer.build_hnsw = build_hnsw
        # (no reference to the database is kept: its table must keep it alive and closed at exit)
        t = omendb.open({str(db_path)!r}, memtable_bytes=4096, build_indexes=True,
                        compaction=omendb.CompactionPolicy(min_segments=2)).create_table(
                            "t", dim=4, index=omendb.HnswConfig(min_rows=10))
        for b in range(4):
            t.add({{"id": np.arange(b * 100, b * 100 + 100), "vector": np.random.rand(100, 4)}})
            t.flush()
        assert entered.wait(60), "no background merge started"
        print("exiting", flush=True)
    """
    done = subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout
    assert "failed" not in done.stderr and "Warning" not in done.stderr, done.stderr
    with omendb.open(db_path) as db:
        assert db.open_table("t").count() == 400


def test_a_killed_add_of_a_blob_that_looks_like_a_log_record_is_a_torn_tail(db_path: Path) -> None:
    # The writer dies after the payload is written and before its header: whatever the
    # payload holds (here the bytes of a valid log record), the zero header says "torn".
    code = f"""
        import os, signal, struct, numpy as np, pyarrow as pa, omendb
        from omendb.storage import wal
        from omendb.storage.checksum import crc32
        from omendb.table import writer
        db = omendb.open({str(db_path)!r})
        t = db.create_table("t", data={{"id": [1], "blob": [b"hi"], "vector": np.ones((1, 4), np.float32)}})
        inner = wal.encode_table(pa.table({{"x": [1]}})).to_bytes()
        fields = struct.pack("<BBHQI", 1, 0, 0, 7, len(inner))
        fake = struct.pack("<4sBBHQII", b"WREC", 1, 0, 0, 7, len(inner), crc32(inner, crc32(fields))) + inner
        writer.Writer.check_and_stage = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        t.add({{"id": [2], "blob": [fake * 3], "vector": np.ones((1, 4), np.float32)}})
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(), capture_output=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("t")) == [1]


def test_drop_table_while_another_thread_adds(db_path: Path) -> None:
    for attempt in range(5):
        with omendb.open(db_path) as db:
            table = db.create_table("t", dim=64)
            outcome: list[BaseException | int] = []

            def add() -> None:
                try:
                    outcome.append(table.add(np.ones((20_000, 64), np.float32)))
                except omendb.OmenError as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=add)
            thread.start()
            db.drop_table("t")
            thread.join(60)
            assert not thread.is_alive()
            assert outcome and (outcome[0] == 20_000 or isinstance(outcome[0], omendb.ClosedError)), outcome
            assert "t" not in db.table_names()


def test_a_damaged_older_manifest_does_not_lock_the_table_out(db_path: Path) -> None:
    with omendb.open(db_path, build_indexes=False, compaction=False) as db:
        table = db.create_table("t", data=_rows(0, 5))
        table.flush()
        table.add(_rows(5, 5))
        table.flush()
    oldest = sorted((db_path / "t" / "manifests").glob("v*.json"))[0]
    oldest.write_bytes(oldest.read_bytes()[:-10])
    with pytest.warns(RuntimeWarning, match=oldest.name):
        with omendb.open(db_path) as db:
            assert _ids(db.open_table("t")) == list(range(10))


def test_a_flush_after_reopening_an_unpublished_seal_keeps_the_live_log(db_path: Path) -> None:
    # A batch larger than the memtable is sealed after its commit, which starts an empty
    # log file; the process dies before that flush publishes. The next open replays the
    # rows and writes on in that empty file: its first flush must not remove it.
    first = f"""
        import os, numpy as np, omendb
        from omendb.table import flusher
        flusher.Flusher._flush_sealed = lambda self, sealed: None  # the background flush never runs
        t = omendb.open({str(db_path)!r}, memtable_bytes=4096).create_table("t", dim=16)
        t.add({{"id": np.arange(2000), "vector": np.ones((2000, 16), np.float32)}})
        os._exit(0)
    """
    then = f"""
        import os, numpy as np, omendb
        t = omendb.open({str(db_path)!r}).open_table("t")
        t.flush()
        t.add({{"id": [200000], "vector": np.ones((1, 16), np.float32)}})
        assert os.listdir({str(db_path / "t" / "wal")!r}), "the live log file is gone"
        os._exit(0)
    """
    for code in (first, then):
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        assert table.count() == 2001 and table.get([200000]).num_rows == 1


@pytest.mark.parametrize("damage", ["zero_header", "zero_sector"])
def test_damage_that_looks_torn_but_has_records_after_it_is_damage(db_path: Path, damage: str) -> None:
    # Zeros are what a crash leaves of the record it was writing, which is the last one:
    # zeros in a record followed by acknowledged records are damage.
    _wal_only_table(db_path, batches=20, rows=10)
    (wal,) = (db_path / "t" / "wal").glob("*.wal")
    from omendb.storage.wal_read import read_wal

    records = list(read_wal(wal, repair=False))
    starts = np.cumsum([16] + [24 + r.size for r in records])
    data = bytearray(wal.read_bytes())
    if damage == "zero_header":
        data[starts[2]:starts[2] + 24] = bytes(24)  # record 3 of 20
    else:
        sector = (int(starts[10]) // 512 + 1) * 512  # a whole sector inside record 11
        assert sector + 512 <= starts[11]
        data[sector:sector + 512] = bytes(512)
    wal.write_bytes(bytes(data))
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.WalDamageError, match="acknowledged records after it"):
            db.open_table("t")
    assert wal.read_bytes() == bytes(data)
    (report,) = omendb.salvage(db_path)
    assert report["records_kept"] == 19


def test_salvage_of_a_database_goes_on_past_a_table_it_cannot_save(db_path: Path) -> None:
    for name in ("a", "b"):
        with omendb.open(db_path, build_indexes=False, compaction=False) as db:
            table = db.create_table(name, data=_rows(0, 5))
            table.flush()
    code = f"""
        import os, numpy as np, omendb
        t = omendb.open({str(db_path)!r}).open_table("b")
        t.add({{"id": np.arange(5, 10), "vector": np.ones((5, {DIM}), np.float32)}})
        t.add({{"id": np.arange(10, 15), "vector": np.ones((5, {DIM}), np.float32)}})
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, env=_env(), timeout=120)
    newest_a = sorted((db_path / "a" / "manifests").glob("v*.json"))[-1]
    newest_a.write_text("junk")
    (wal,) = (db_path / "b" / "wal").glob("*.wal")
    data = bytearray(wal.read_bytes())
    data[-40] ^= 1
    wal.write_bytes(bytes(data))
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.CorruptFileError, match="newest version: restore the file"):
            db.open_table("a")
    reports = {r["table"]: r for r in omendb.salvage(db_path)}
    assert reports["a"]["salvaged"] is False and newest_a.name in reports["a"]["error"]
    assert reports["b"]["salvaged"] is True and reports["b"]["records_kept"] == 1
    with omendb.open(db_path) as db:
        assert _ids(db.open_table("b")) == list(range(10))


def test_a_reader_of_a_dropped_table_is_told_so(db_path: Path) -> None:
    with omendb.open(db_path) as writer:
        writer.create_table("t", data=_rows(0, 3)).flush()
        with omendb.open(db_path, read_only=True) as reader:
            table = reader.open_table("t")
            assert table.count() == 3
            writer.drop_table("t")
            with pytest.raises(omendb.TableNotFoundError, match="dropped"):
                table.count()


# ------------------------------------------- third attack: races of readers and cleanup
def test_cleanup_never_cuts_a_file_a_process_has_mapped(db_path: Path) -> None:
    # cleanup() used to shrink files before unlinking them: a process still reading a
    # mapped segment died of SIGBUS. A plain unlink leaves mapped pages readable.
    code = f"""
        import numpy as np, omendb
        db = omendb.open({str(db_path)!r}, compaction=False, build_indexes=False)
        t = db.create_table("t", dim=32)
        t.add({{"id": np.arange(50_000), "vector": np.random.rand(50_000, 32).astype(np.float32)}})
        t.flush()
        rows = t.to_arrow()  # zero-copy views of the mapped segment
        t.delete([1]); t.compact(); t.cleanup(keep_last=1)
        print(float(np.asarray(rows.column("vector").combine_chunks().flatten()).sum()) > 0)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", (done.returncode, done.stderr[-2000:])


def test_a_reader_refresh_that_loses_to_cleanup_reads_the_newest_version(db_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from omendb.table.segments import SegmentHandle

    with omendb.open(db_path, compaction=False, build_indexes=False) as writer:
        table = writer.create_table("t", data=_rows(0, 10))
        table.flush()
        with omendb.open(db_path, read_only=True) as reader_db:
            reader = reader_db.open_table("t")
            assert reader.count() == 10
            table.delete([0])
            table.flush()  # version N+1 with a deletion file
            real = SegmentHandle.initial_live_mask
            armed = [True]

            def then_the_writer_moves_on(self, entry=None):
                if armed[0]:  # the reader listed version N+1; before it reads its deletion file ...
                    armed[0] = False
                    table.delete([1])
                    table.flush()
                    table.cleanup(keep_last=1)  # ... N+1 and its files are gone
                return real(self, entry)

            monkeypatch.setattr(SegmentHandle, "initial_live_mask", then_the_writer_moves_on)
            assert reader.count() == 8 and not armed[0]
            assert reader.version == table.version


def test_a_reader_never_goes_back_to_an_older_version(db_path: Path) -> None:
    with omendb.open(db_path, compaction=False, build_indexes=False) as writer:
        table = writer.create_table("t", data=_rows(0, 10))
        table.flush()
        old = table.core.store.load(table.version)
        table.delete([0])
        table.flush()
        with omendb.open(db_path, read_only=True) as reader_db:
            reader = reader_db.open_table("t")
            newest = reader.version
            reader.core.adopt(old)  # a thread that listed earlier, adopting late
            assert reader.version == newest and reader.count() == 9


def test_every_published_version_holds_an_upserted_key_old_or_new(db_path: Path) -> None:
    # A flush publishes the log's records up to the sealed memtable only: the deletion of
    # an upsert's old row waits for the version that also holds its new row.
    with omendb.open(db_path, memtable_bytes=4096, fsync=False, compaction=False, build_indexes=False) as db:
        table = db.create_table("t", dim=DIM)
        table.add(_rows(0, 40))
        table.flush()
        rng = np.random.default_rng(3)
        for round_ in range(1, 150):
            keys = rng.choice(40, size=10, replace=False)
            table.upsert({"id": keys, "vector": np.full((10, DIM), float(round_), np.float32)})
        table.flush()
        versions = [v["version"] for v in table.versions()]
        assert len(versions) > 10
        for version in versions[1:]:
            ids = table.checkout(version).to_arrow()["id"].to_pylist()
            assert sorted(ids) == list(range(40)), f"version {version}: keys {sorted(set(range(40)) - set(ids))} " \
                                                  "missing, or some twice"


def _blocking_builds(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Index builds that run until their table stops them (then raise BuildCancelled)."""
    from omendb.index.hnsw import BuildCancelled
    from omendb.table import indexer

    started = threading.Event()

    def build_hnsw(vectors, norms, metric, config, should_stop, threads=None):
        started.set()
        for _ in range(3000):
            if should_stop():
                raise BuildCancelled()
            threading.Event().wait(0.01)
        raise AssertionError("the build was never stopped")

    monkeypatch.setattr(indexer, "build_hnsw", build_hnsw)
    return started


def _in_thread(call) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_compact_interrupted_by_close_raises_closed_error(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _blocking_builds(monkeypatch)
    db = omendb.open(db_path, compaction=False, build_indexes=True)
    table = db.create_table("t", data=_rows(0, 300), index=omendb.HnswConfig(min_rows=100))
    table.flush()
    table.add(_rows(300, 300))
    monkeypatch.setattr(omendb.table.indexer.IndexBuilder, "submit", lambda self, file: None)  # only the merge builds
    thread, outcome = _in_thread(table.compact)
    assert started.wait(30)
    _within(30, db.close)
    thread.join(30)
    assert not thread.is_alive() and isinstance(outcome[0], omendb.ClosedError), outcome


def test_wait_for_index_ends_when_the_table_closes(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _blocking_builds(monkeypatch)
    db = omendb.open(db_path, compaction=False)
    table = db.create_table("t", data=_rows(0, 300), index=omendb.HnswConfig(min_rows=100))
    table.flush()
    thread, outcome = _in_thread(table.wait_for_index)
    assert started.wait(30)
    _within(30, db.close)
    thread.join(30)
    assert not thread.is_alive() and isinstance(outcome[0], omendb.ClosedError), outcome
