"""Regenerate the golden indexed database ``v1-indexed.omen`` (only when an index format changes).

Two tables of 1,500 x 8 rows (l2), each one segment with its graph:

* ``flat``: a flat HNSW graph (faiss ``IndexHNSWFlat``) as omendb wrote it before quantized
  graphs existed: made by omendb at commit 427ad39 (``git worktree add /tmp/old 427ad39``,
  then ``PYTHONPATH=/tmp/old python formats/golden/make_golden_indexes.py flat``);
* ``sq8``: a quantized graph (faiss ``IndexHNSWSQ``, 8-bit codes) with its recall
  calibration: ``python formats/golden/make_golden_indexes.py sq8``.

``v1-indexed-expected.json`` holds, per table, the exact top-5 of three queries that a
reader must find through the graph.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import omendb

HERE = Path(__file__).parent
ROWS, DIM = 1_500, 8


def rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(ROWS, DIM)).astype(np.float32)


def queries() -> np.ndarray:
    return np.random.default_rng(8).normal(size=(3, DIM)).astype(np.float32)


def main(kind: str) -> None:
    index = omendb.HnswConfig(m=8, ef_construction=32, min_rows=1_000) if kind == "flat" else \
        omendb.HnswSq(m=8, ef_construction=32, min_rows=1_000)
    with omendb.open(HERE / "v1-indexed.omen") as db:
        table = db.create_table(kind, data={"id": np.arange(ROWS), "vector": rows()}, metric="l2", index=index)
        table.flush()
        assert table.wait_for_index(timeout=120)
        expected_path = HERE / "v1-indexed-expected.json"
        expected = json.loads(expected_path.read_text()) if expected_path.exists() else {}
        expected[kind] = [table.search(q, k=5, exact=True)["id"].to_pylist() for q in queries()]
        expected_path.write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
