"""Regenerate the golden v1 database (run only when a format version is bumped).

    python formats/golden/make_golden.py

It writes ``v1.omen/`` with: one segment, a deletion file, and two rows that exist
only in the write-ahead log (the process exits without flushing), plus
``v1-expected.json`` with the rows a reader must find.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import omendb

HERE = Path(__file__).parent


def main() -> None:
    target = HERE / "v1.omen"
    shutil.rmtree(target, ignore_errors=True)
    db = omendb.open(target)
    table = db.create_table("docs", data=[
        {"id": i, "vector": [float(i), 1.0, 0.0, -1.0], "tag": f"t{i}"} for i in range(4)
    ], metric="l2")
    table.flush()
    table.delete([1])
    table.flush()
    table.add([{"id": 10 + i, "vector": [0.5, 0.5, float(i), 2.0], "tag": "wal"} for i in range(2)])
    expected = sorted(table.to_arrow().to_pylist(), key=lambda r: r["id"])
    (HERE / "v1-expected.json").write_text(json.dumps(expected, indent=1))
    os._exit(0)  # leave the last rows in the WAL only


if __name__ == "__main__":
    main()
