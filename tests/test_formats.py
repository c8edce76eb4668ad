"""Golden files: databases written by an older omendb must still open and read the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import omendb

GOLDEN = Path(__file__).resolve().parent.parent / "formats" / "golden"


@pytest.fixture
def golden_db(tmp_path: Path) -> Path:
    copy = tmp_path / "v1.omen"
    shutil.copytree(GOLDEN / "v1.omen", copy)
    return copy


def test_v1_database_opens_with_segment_deletions_and_wal_rows(golden_db: Path) -> None:
    expected = json.loads((GOLDEN / "v1-expected.json").read_text())
    with omendb.open(golden_db) as db:
        table = db.open_table("docs")
        rows = sorted(table.to_arrow().to_pylist(), key=lambda r: r["id"])
        assert rows == expected
        assert table.get([1]).num_rows == 0  # deleted through the deletion file
        assert set(table.get([10, 11])["tag"].to_pylist()) == {"wal"}  # replayed from the WAL
        hit = table.search([0.0, 1.0, 0.0, -1.0], k=1)
        assert hit["id"].to_pylist() == [0]


def test_v1_database_unknown_manifest_version_is_refused(golden_db: Path) -> None:
    manifest = golden_db / "docs" / "manifests" / "v0000000003.json"
    doc = json.loads(manifest.read_text())
    doc["format_version"] = 99
    manifest.write_text(json.dumps(doc))
    with omendb.open(golden_db) as db:
        with pytest.raises(omendb.FormatVersionError, match="v0000000003.json"):
            db.open_table("docs")


@pytest.mark.parametrize("kind, storage", [("flat", "IndexHNSWFlat"), ("sq8", "IndexHNSWSQ")])
def test_indexes_written_earlier_open_and_search_through_their_graph(tmp_path: Path, kind: str, storage: str) -> None:
    # ``flat``: a graph written before quantized graphs existed; ``sq8``: a quantized one.
    import numpy as np

    copy = tmp_path / "v1-indexed.omen"
    shutil.copytree(GOLDEN / "v1-indexed.omen", copy)
    expected = json.loads((GOLDEN / "v1-indexed-expected.json").read_text())[kind]
    queries = np.random.default_rng(8).normal(size=(3, 8)).astype(np.float32)
    with omendb.open(copy) as db:
        table = db.open_table(kind)
        handle = table.core.state.segments[0]
        index_file = handle.entry.index_file
        assert type(handle.hnsw()._index).__name__ == storage
        assert table.stats()["indexed_segments"] == 1  # current: nothing to rebuild
        for q, ids in zip(queries, expected):
            assert table.search(q, k=5, ef=64)["id"].to_pylist() == ids
            assert table.search(q, k=5)["id"].to_pylist() == ids
        assert table.wait_for_index(timeout=30)
        assert table.core.state.segments[0].entry.index_file == index_file
