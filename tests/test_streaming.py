"""Searching while rows stream in: background work yields to the foreground."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import omendb
from omendb.table import workers

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
