"""Every script in examples/ runs as a newcomer would run it and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: A line each example must print (a regular expression); examples not listed must print something.
EXPECTED = {
    "pandas_quickstart.py": r"nearest to product 42: product 42 \(distance 0\.0000\)",
    "polars_lazy_ingest.py": r"ingested [\d,]+ rows from a LazyFrame in \d+ batches",
    "duckdb_sql.py": r"per-row kNN .*\[\(0, 3, 0\.0\), \(1, 3, 0\.0\)",
    "parquet_pipeline.py": r"export: 20,000 rows to snapshot\.parquet, read back 20,000",
}


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path):
    proc = run(script, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip(), f"{script.name} printed nothing"
    if script.name in EXPECTED:
        assert re.search(EXPECTED[script.name], proc.stdout), proc.stdout
    assert not list(tmp_path.iterdir()), "examples clean up after themselves"


def test_pipeline_example_on_a_given_file(tmp_path: Path):
    vectors = np.random.default_rng(0).random((300, 4), dtype=np.float32)
    pq.write_table(pa.table({"id": np.arange(300), "vector": list(vectors)}), tmp_path / "in.parquet")
    args = (str(tmp_path / "in.parquet"), str(tmp_path / "db.omen"), "things")
    first = run(EXAMPLES / "parquet_pipeline.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "ingest: 300 rows" in first.stdout and "table has 300 rows" in first.stdout
    again = run(EXAMPLES / "parquet_pipeline.py", *args, cwd=tmp_path)   # a re-run upserts: same rows
    assert again.returncode == 0, again.stderr
    assert "table has 300 rows" in again.stdout
    broken = run(EXAMPLES / "parquet_pipeline.py", str(tmp_path / "missing.parquet"), args[1], args[2], cwd=tmp_path)
    assert broken.returncode == 1 and "missing.parquet: no such file" in broken.stderr
