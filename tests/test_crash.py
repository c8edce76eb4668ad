"""Durability under kill -9: every acknowledged write survives, no batch is half there.

A writer subprocess adds batches in a loop and prints each batch number once ``add``
has returned. The parent SIGKILLs it at a random moment, reopens the database and
checks the acknowledged batches against what is stored.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import omendb

DIM = 8
ROWS_PER_BATCH = 20
IDS_PER_BATCH = 1000  # batch b holds ids b*1000 .. b*1000+19

WRITER = r"""
import sys
import numpy as np
import omendb

path, first_batch, memtable_bytes, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
DIM, ROWS, SPAN = {dim}, {rows}, {span}


def vectors_for(ids):
    return np.sin(ids[:, None].astype(np.float64) * (np.arange(DIM) + 1) * 1e-3).astype(np.float32)


db = omendb.open(path, memtable_bytes=memtable_bytes)
table = db.open_table("t")
print("ready", flush=True)
batch = first_batch
while limit < 0 or batch < first_batch + limit:
    ids = batch * SPAN + np.arange(ROWS, dtype=np.int64)
    table.add({{"id": ids, "vector": vectors_for(ids), "batch": np.full(ROWS, batch, dtype=np.int64),
               "tag": [f"b{{batch}}"] * ROWS}})
    print(batch, flush=True)
    batch += 1
print("done", flush=True)
sys.stdout.flush()
import os
os._exit(0)  # never close(): unflushed rows live only in the WAL
""".format(dim=DIM, rows=ROWS_PER_BATCH, span=IDS_PER_BATCH)

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM)),
                    pa.field("batch", pa.int64()), pa.field("tag", pa.string())])


def vectors_for(ids: np.ndarray) -> np.ndarray:
    return np.sin(ids[:, None].astype(np.float64) * (np.arange(DIM) + 1) * 1e-3).astype(np.float32)


class Writer:
    """The writer subprocess; collects stdout lines without losing any."""

    def __init__(self, tmp_path: Path, db_path: Path, first_batch: int, memtable_bytes: int,
                 limit: int = -1) -> None:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        self.stderr_path = tmp_path / f"writer-{first_batch}.err"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(db_path), str(first_batch), str(memtable_bytes), str(limit)],
            stdout=subprocess.PIPE, stderr=self._stderr)
        self._fd = self.proc.stdout.fileno()
        self.output = b""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self._fd, 1 << 16)
        self.output += chunk
        return bool(chunk)

    def wait_for(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"writer timed out; stderr:\n{self.stderr()}")
            if not self._read(min(left, 0.5)) and not predicate():
                self.proc.wait()
                pytest.fail(f"writer exited ({self.proc.returncode}); stderr:\n{self.stderr()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # drain what it printed before dying, up to EOF
            ready, _, _ = select.select([self._fd], [], [], 1.0)
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    break
                self.output += chunk
        self._stderr.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def acknowledged(self) -> list[int]:
        """Batches whose add() returned (complete lines only)."""
        lines = self.output.split(b"\n")[:-1]
        return [int(line) for line in lines if line.isdigit()]


def stored_batches(db_path: Path) -> tuple[dict[int, list[dict]], dict]:
    """Reopen the database: rows grouped by batch, and the table's stats."""
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        rows = table.to_arrow()
        stats = table.stats()
        assert table.count() == rows.num_rows
    by_batch: dict[int, list[dict]] = {}
    for row in rows.to_pylist():
        by_batch.setdefault(row["batch"], []).append(row)
    return by_batch, stats


def check_batches(by_batch: dict[int, list[dict]]) -> None:
    """Every stored batch is complete and exactly what the writer wrote."""
    for batch, rows in by_batch.items():
        ids = np.array(sorted(r["id"] for r in rows), dtype=np.int64)
        expected_ids = batch * IDS_PER_BATCH + np.arange(ROWS_PER_BATCH)
        assert ids.tolist() == expected_ids.tolist(), f"batch {batch} is partial or has stray rows"
        rows = sorted(rows, key=lambda r: r["id"])
        np.testing.assert_array_equal(np.array([r["vector"] for r in rows], dtype=np.float32), vectors_for(ids))
        assert {r["tag"] for r in rows} == {f"b{batch}"}


def create(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("t", schema=SCHEMA)


def test_acknowledged_batches_survive_sigkill(tmp_path: Path, db_path: Path) -> None:
    create(db_path)
    rng = np.random.default_rng(7)
    acknowledged_total: set[int] = set()
    present_before: set[int] = set()
    rounds = 5
    for round_no in range(rounds):
        first = round_no * 100_000
        writer = Writer(tmp_path, db_path, first, memtable_bytes=24 << 10)
        writer.wait_for(lambda: b"ready\n" in writer.output)
        time.sleep(rng.uniform(0.2, 1.0))
        writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL, writer.stderr()
        acked = writer.acknowledged()
        assert acked == list(range(first, first + len(acked)))
        by_batch, stats = stored_batches(db_path)
        check_batches(by_batch)
        present = set(by_batch)
        missing = set(acked) - present
        assert not missing, f"round {round_no}: acknowledged batches lost: {sorted(missing)[:10]}"
        assert present_before <= present, "batches of earlier rounds were lost"
        # at most the one batch in flight may be durable without having been acknowledged
        in_flight = first + len(acked)
        assert present - present_before - set(acked) <= {in_flight}
        assert stats["rows"] == len(present) * ROWS_PER_BATCH
        acknowledged_total |= set(acked)
        present_before = present
    assert len(acknowledged_total) >= rounds * 5, "the writer hardly wrote anything: test too weak"
    assert stats["segments"] >= 2, "no flush happened during the run"


def test_wal_only_rows_survive_sigkill(tmp_path: Path, db_path: Path) -> None:
    create(db_path)
    writer = Writer(tmp_path, db_path, 0, memtable_bytes=64 << 20)
    writer.wait_for(lambda: len(writer.acknowledged()) >= 25)
    writer.kill()
    assert writer.proc.returncode == -signal.SIGKILL
    acked = set(writer.acknowledged())
    by_batch, stats = stored_batches(db_path)
    check_batches(by_batch)
    assert acked <= set(by_batch)
    assert set(by_batch) - acked <= {max(acked) + 1}
    assert stats["segments"] == 0  # nothing was ever flushed: it all came back from the WAL
    assert stats["rows"] == len(by_batch) * ROWS_PER_BATCH


def test_clean_exit_without_close_keeps_every_batch(tmp_path: Path, db_path: Path) -> None:
    create(db_path)
    writer = Writer(tmp_path, db_path, 0, memtable_bytes=8 << 10, limit=40)
    writer.wait_for(lambda: b"done\n" in writer.output)
    writer.proc.wait()
    writer.kill()
    assert writer.acknowledged() == list(range(40))
    by_batch, stats = stored_batches(db_path)
    check_batches(by_batch)
    assert set(by_batch) == set(range(40))
    assert stats["segments"] >= 2  # flushes happened while writing
