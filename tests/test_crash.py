"""Durability under kill -9: every acknowledged write survives, no batch is half there.

A writer subprocess writes batches in a loop and prints the number of each operation
once the call has returned (= acknowledged). The parent SIGKILLs it at a random
moment, reopens the database and checks what is stored against the acknowledged
operations: all of them must be there, and at most the one operation in flight may
additionally be there, entirely or not at all.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest

import omendb

DIM = 8
ROWS_PER_BATCH = 20
IDS_PER_BATCH = 1000  # batch b holds ids b*1000 .. b*1000+19

# Shared by the parent and the writer script (exec'd there), so both agree on the
# deterministic sequence of operations and on the rows each one writes.
OPS_SOURCE = r'''
import numpy as np

DIM, ROWS, SPAN = {dim}, {rows}, {span}


def vectors_for(ids, upserted=False):
    base = np.sin(ids[:, None].astype(np.float64) * (np.arange(DIM) + 1) * 1e-3)
    return (base + (1.0 if upserted else 0.0)).astype(np.float32)


def ids_of(batch):
    return batch * SPAN + np.arange(ROWS, dtype=np.int64)


def operations(first_batch, mixed):
    """Yield (kind, batch): adds of consecutive batches, plus upserts and deletes when mixed."""
    i = 0
    while True:
        yield ("add", first_batch + i)
        if mixed and i % 3 == 2:
            yield ("upsert", first_batch + i - 1)
        if mixed and i % 5 == 4:
            yield ("delete", first_batch + i - 3)
        i += 1


def rows_for(kind, batch):
    ids = ids_of(batch)
    tag = ("u" if kind == "upsert" else "b") + str(batch)
    return {{"id": ids, "vector": vectors_for(ids, kind == "upsert"),
            "batch": np.full(ROWS, batch, dtype=np.int64), "tag": [tag] * ROWS}}
'''.format(dim=DIM, rows=ROWS_PER_BATCH, span=IDS_PER_BATCH)

WRITER = r'''
import os, sys
import omendb

path, first_batch, memtable_bytes, limit, mixed = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                                   int(sys.argv[4]), sys.argv[5] == "mixed")
exec(open(sys.argv[6]).read())

db = omendb.open(path, memtable_bytes=memtable_bytes, fsync=sys.argv[7] == "fsync")
table = db.open_table("t")
print("ready", flush=True)
for n, (kind, batch) in enumerate(operations(first_batch, mixed)):
    if limit >= 0 and n >= limit:
        break
    if kind == "delete":
        table.delete(ids_of(batch))
    else:
        getattr(table, kind)(rows_for(kind, batch))
    print(n, flush=True)
print("done", flush=True)
os._exit(0)  # never close(): unflushed rows live only in the WAL
'''

_ops: dict = {}
exec(OPS_SOURCE, _ops)
operations, vectors_for, ids_of = _ops["operations"], _ops["vectors_for"], _ops["ids_of"]

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM)),
                    pa.field("batch", pa.int64()), pa.field("tag", pa.string())])


class Writer:
    """The writer subprocess; collects its stdout without losing any line."""

    def __init__(self, tmp_path: Path, db_path: Path, first_batch: int, memtable_bytes: int,
                 limit: int = -1, mixed: bool = False, fsync: bool = True) -> None:
        script, ops = tmp_path / "writer.py", tmp_path / "ops.py"
        script.write_text(WRITER)
        ops.write_text(OPS_SOURCE)
        self.stderr_path = tmp_path / f"writer-{first_batch}.err"
        self._stderr = open(self.stderr_path, "wb")
        # the writer imports the same omendb as this test process
        env = dict(os.environ)
        package_root = str(Path(omendb.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(db_path), str(first_batch), str(memtable_bytes), str(limit),
             "mixed" if mixed else "add", str(ops), "fsync" if fsync else "nofsync"],
            stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._fd = self.proc.stdout.fileno()
        self.output = b""

    def _read(self, timeout: float) -> bool:
        """Read what is there; False at end of file."""
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
        if self.proc.returncode is None:
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
        self.proc.stdout.close()
        self._stderr.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def acknowledged(self) -> int:
        """How many operations returned (complete lines only; they are numbered 0, 1, ...)."""
        numbers = [int(line) for line in self.output.split(b"\n")[:-1] if line.isdigit()]
        assert numbers == list(range(len(numbers)))
        return len(numbers)


def expected_state(base: dict[int, str], first_batch: int, count: int, mixed: bool) -> dict[int, str]:
    """batch -> tag after the first ``count`` operations, on top of ``base``."""
    state = dict(base)
    ops: Iterator = operations(first_batch, mixed)
    for _ in range(count):
        kind, batch = next(ops)
        if kind == "delete":
            state.pop(batch, None)
        else:
            state[batch] = ("u" if kind == "upsert" else "b") + str(batch)
    return state


def stored_state(db_path: Path) -> tuple[dict[int, str], dict]:
    """Reopen the database and check every stored batch is whole: batch -> tag, stats."""
    with omendb.open(db_path) as db:
        table = db.open_table("t")
        rows = table.to_arrow()
        stats = table.stats()
        assert table.count() == rows.num_rows
    by_batch: dict[int, list[dict]] = {}
    for row in rows.to_pylist():
        by_batch.setdefault(row["batch"], []).append(row)
    state = {}
    for batch, batch_rows in by_batch.items():
        batch_rows.sort(key=lambda r: r["id"])
        ids = np.array([r["id"] for r in batch_rows], dtype=np.int64)
        assert ids.tolist() == ids_of(batch).tolist(), f"batch {batch} is partial or has stray rows"
        tags = {r["tag"] for r in batch_rows}
        assert len(tags) == 1, f"batch {batch} mixes rows of different writes: {tags}"
        tag = tags.pop()
        vectors = np.array([r["vector"] for r in batch_rows], dtype=np.float32)
        np.testing.assert_array_equal(vectors, vectors_for(ids, upserted=tag.startswith("u")))
        state[batch] = tag
    return state, stats


def create(db_path: Path) -> None:
    with omendb.open(db_path) as db:
        db.create_table("t", schema=SCHEMA)


def run_rounds(tmp_path: Path, db_path: Path, rounds: int, mixed: bool, seed: int) -> tuple[int, dict]:
    create(db_path)
    rng = np.random.default_rng(seed)
    state: dict[int, str] = {}
    acknowledged_total = 0
    stats: dict = {}
    for round_no in range(rounds):
        first = round_no * 100_000
        writer = Writer(tmp_path, db_path, first, memtable_bytes=24 << 10, mixed=mixed)
        writer.wait_for(lambda: b"ready\n" in writer.output)
        time.sleep(rng.uniform(0.2, 1.0))
        writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL, writer.stderr()
        acked = writer.acknowledged()
        stored, stats = stored_state(db_path)
        acked_state = expected_state(state, first, acked, mixed)
        in_flight_state = expected_state(state, first, acked + 1, mixed)
        if stored != acked_state:
            lost = {b: t for b, t in acked_state.items() if stored.get(b) != t}
            assert stored == in_flight_state, (
                f"round {round_no}: after {acked} acknowledged operations the table differs; "
                f"expected but missing or different (batch: tag): {dict(list(lost.items())[:10])}")
        assert stats["rows"] == len(stored) * ROWS_PER_BATCH
        acknowledged_total += acked
        state = stored
    return acknowledged_total, stats


def test_acknowledged_batches_survive_sigkill(tmp_path: Path, db_path: Path) -> None:
    acknowledged, stats = run_rounds(tmp_path, db_path, rounds=5, mixed=False, seed=7)
    assert acknowledged >= 25, "the writer hardly wrote anything: test too weak"
    assert stats["version"] >= 3, "no flush happened during the run"  # (compaction may merge segments)


def test_acknowledged_upserts_and_deletes_survive_sigkill(tmp_path: Path, db_path: Path) -> None:
    acknowledged, stats = run_rounds(tmp_path, db_path, rounds=3, mixed=True, seed=11)
    assert acknowledged >= 25, "the writer hardly wrote anything: test too weak"
    assert stats["version"] >= 3, "no flush happened during the run"  # (compaction may merge segments)


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_wal_only_rows_survive_sigkill(tmp_path: Path, db_path: Path, fsync: bool) -> None:
    # fsync=False only gives up durability against machine crashes, not process crashes
    create(db_path)
    writer = Writer(tmp_path, db_path, 0, memtable_bytes=64 << 20, mixed=True, fsync=fsync)
    writer.wait_for(lambda: b"\n30\n" in writer.output)
    writer.kill()
    assert writer.proc.returncode == -signal.SIGKILL
    acked = writer.acknowledged()
    assert acked >= 31
    stored, stats = stored_state(db_path)
    assert stored in (expected_state({}, 0, acked, True), expected_state({}, 0, acked + 1, True))
    assert stats["segments"] == 0  # nothing was ever flushed: it all came back from the WAL
    assert stats["rows"] == len(stored) * ROWS_PER_BATCH


def test_clean_exit_without_close_keeps_every_batch(tmp_path: Path, db_path: Path) -> None:
    create(db_path)
    writer = Writer(tmp_path, db_path, 0, memtable_bytes=8 << 10, limit=60, mixed=True)
    writer.wait_for(lambda: b"done\n" in writer.output)
    writer.proc.wait(timeout=30)
    writer.kill()  # (already exited: only collects the output)
    assert writer.proc.returncode == 0, writer.stderr()
    assert writer.acknowledged() == 60
    stored, stats = stored_state(db_path)
    assert stored == expected_state({}, 0, 60, True)
    assert stats["version"] >= 3  # flushes happened while writing (compaction may merge segments)
