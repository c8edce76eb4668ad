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
