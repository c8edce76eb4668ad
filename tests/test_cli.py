"""The ``omendb`` command, driven as a user drives it: a subprocess, its exit status and output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import omendb

DIM = 8


def omendb_cli(*args: str, input: str | bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``omendb ARGS`` (stdout is a pipe: summaries come as JSON lines)."""
    return subprocess.run([sys.executable, "-m", "omendb.cli", *map(str, args)], capture_output=True,
                          input=input, text=not isinstance(input, bytes), timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def fails(proc: subprocess.CompletedProcess, status: int, message: str, command: str) -> str:
    """The command failed with ``status`` and one clear line naming the problem, no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"omendb {command}: error: ".replace(" :", ":")), lines[0]
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data(tmp_path: Path, rng) -> tuple[Path, np.ndarray]:
    vectors = rng.random((600, DIM), dtype=np.float32)
    table = pa.table({"id": np.arange(600), "lang": [("en", "de")[i % 2] for i in range(600)],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=128)
    return tmp_path / "rows.parquet", vectors


@pytest.fixture
def loaded(data, db_path) -> tuple[Path, np.ndarray]:
    ok(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs", "--batch-size", 250))
    return db_path, data[1]


def test_ingest_prints_one_json_summary(data, db_path, tmp_path):
    proc = ok(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs", "--batch-size", 250,
                         "--metric", "cosine", "--format", "lance", "--no-fsync"))
    summary = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1
    assert summary["rows"] == 600 and summary["batches"] == 3 and summary["created"] is True
    assert summary["table_rows"] == 600 and summary["dim"] == DIM
    assert summary["metric"] == "cosine" and summary["format"] == "lance" and summary["rows_per_s"] > 0
    (tmp_path / "more.csv").write_text('id,lang,vector\n1000,fr,"[1,2,3,4,5,6,7,8]"\n')
    summary = json.loads(ok(omendb_cli("ingest", tmp_path / "more.csv", "--db", db_path, "--table", "docs",
                                       "--append")).stdout)
    assert summary["created"] is False and summary["table_rows"] == 601
    with omendb.open(db_path, read_only=True) as db:
        assert db["docs"].get([1000])["lang"].to_pylist() == ["fr"]


def test_ingest_from_stdin_arrow_stream(data, db_path):
    sink = io.BytesIO()
    table = pq.read_table(data[0])
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    summary = json.loads(ok(omendb_cli("ingest", "-", "--db", db_path, "--table", "docs",
                                       input=sink.getvalue())).stdout)
    assert summary["rows"] == 600


def test_ingest_errors(data, db_path, tmp_path):
    fails(omendb_cli("ingest", tmp_path / "missing.parquet", "--db", db_path, "--table", "docs"),
          1, "missing.parquet: no such file or folder", "ingest")
    assert not db_path.exists()  # nothing is created for a bad source
    fails(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs", "--vector-column", "emb"),
          1, "no vector column 'emb' (columns: id, lang, vector)", "ingest")
    ok(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs"))
    fails(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs", "--create"), 1,
          "table 'docs' already exists", "ingest")
    fails(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs"), 1, "already exist", "ingest")
    (tmp_path / "wide.jsonl").write_text(json.dumps({"id": 5000, "vector": [1.0] * (DIM + 1)}) + "\n")
    fails(omendb_cli("ingest", tmp_path / "wide.jsonl", "--db", db_path, "--table", "docs"), 1,
          "row 0 has 9 components, the table's dimension is 8", "ingest")
    (tmp_path / "bad.csv").write_text('id,vector\n7000,"[1,2,x,4,5,6,7,8]"\n')
    fails(omendb_cli("ingest", tmp_path / "bad.csv", "--db", db_path, "--table", "docs"), 1,
          "row 0 is not a JSON array of numbers: '[1,2,x,4,5,6,7,8]'", "ingest")
    fails(omendb_cli("ingest", data[0], "--db", db_path, "--table", "docs", "--create", "--append"), 2,
          "--create and --append exclude each other", "ingest")
    fails(omendb_cli("ingest", data[0], "--db", db_path), 2, "Missing option '--table'", "ingest")
    fails(omendb_cli("ingest", data[0], "--db", db_path, "--table", "x", "--metric", "manhattan"), 2,
          "Invalid value for '--metric'", "ingest")
    fails(omendb_cli("ingest", data[0], "--db", data[0], "--table", "x"), 2, "is a file", "ingest")


def test_search_outputs(loaded, tmp_path):
    db_path, vectors = loaded
    np.save(tmp_path / "q.npy", vectors[:2])
    rows = [json.loads(line) for line in
            ok(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", tmp_path / "q.npy", "-k", "3",
                          "--json")).stdout.splitlines()]
    assert len(rows) == 6 and [r["_query"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert rows[0]["id"] == 0 and rows[3]["id"] == 1 and "vector" not in rows[0]

    one = json.dumps(vectors[5].tolist())
    table_out = ok(omendb_cli("search", "--db", db_path, "-q", one, "-k", "2")).stdout  # the only table
    assert "_distance" in table_out and " 5 " in table_out

    csv_out = ok(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", "-", "-k", "2", "--format", "csv",
                            "--where", "lang = 'de'", "--columns", "id,vector", input=json.dumps({"vector": vectors[5].tolist()}))).stdout
    header, first, second = csv_out.strip().splitlines()
    assert header == '"id","vector","_distance"' and first.startswith("5,") and "[" in first

    parquet = subprocess.run([sys.executable, "-m", "omendb.cli", "search", "--db", str(db_path), "--table", "docs",
                              "-q", one, "-k", "4", "-f", "parquet", "--exact"], capture_output=True)
    assert parquet.returncode == 0, parquet.stderr
    result = pq.read_table(pa.BufferReader(parquet.stdout))
    assert result.num_rows == 4 and result["id"][0].as_py() == 5

    ok(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", one, "-o", tmp_path / "hits.parquet",
                  "--columns", "*", "--ef", "50"))  # (the format from the suffix)
    hits = pq.read_table(tmp_path / "hits.parquet")
    assert hits.num_rows == 10 and "vector" in hits.column_names
    ok(omendb_cli("export", "--db", db_path, "--table", "docs", "-o", tmp_path / "q.parquet"))
    rows = ok(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", tmp_path / "q.parquet", "-k", "1",
                         "--output", tmp_path / "hits.jsonl")).stdout.splitlines()
    assert rows == [] and len((tmp_path / "hits.jsonl").read_text().splitlines()) == 600  # one search per row
    old = omendb_cli("search", "--db", db_path, "-q", one, "-k", "2", "-o", "json")  # (-o once took the format)
    assert old.returncode == 0 and "--format json" in old.stderr and len(old.stdout.splitlines()) == 2
    fails(omendb_cli("search", "--db", db_path, "-q", one, "--json", "--format", "csv"), 2, "disagree", "search")
    fails(omendb_cli("export", "--db", db_path, "--table", "docs"), 2, "-o/--output", "export")


def test_search_errors(loaded, tmp_path):
    db_path, _ = loaded
    fails(omendb_cli("search", "--db", tmp_path / "nowhere", "--table", "docs", "-q", "[1]"), 1,
          "nowhere: no such database folder", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "nope", "-q", "[1]"), 1,
          "table 'nope' does not exist", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", "[1, 2, 3]"), 1,
          "query has 3 components; table 'docs' has dim 8", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", tmp_path / "q.npy"), 1,
          "q.npy: no such query file", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", json.dumps([0.1] * DIM),
                     "--where", "nope = 1"), 1, "nope", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", json.dumps([0.1] * DIM),
                     "--columns", "id,colour"), 1, "unknown column(s) 'colour'", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", "-", input='{"vec": [1]}'), 1,
          "no 'vector' key", "search")
    fails(omendb_cli("search", "--db", db_path, "--table", "docs", "-q", "[1]", "-k", "0"), 2,
          "Invalid value for '-k'", "search")
    debug = omendb_cli("--debug", "search", "--db", db_path, "--table", "docs", "-q", "[1, 2, 3]")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DimensionError" in debug.stderr


def test_info(loaded):
    db_path, _ = loaded
    info = json.loads(ok(omendb_cli("info", "--db", db_path, "--json")).stdout)
    (docs,) = info["tables"]
    assert docs["table"] == "docs" and docs["rows"] == 600 and docs["dim"] == DIM and docs["metric"] == "l2"
    assert docs["format"] == "arrow" and docs["segments"] >= 1 and docs["bytes"] > 600 * DIM * 4
    detail = json.loads(ok(omendb_cli("info", "--db", db_path, "--table", "docs", "--json")).stdout)["tables"][0]
    assert detail["columns"]["lang"] == "string" and detail["vector_column"] == "vector"
    assert "docs" in ok(omendb_cli("info", "--db", db_path)).stdout
    env = json.loads(ok(omendb_cli("info", "--json")).stdout)
    assert env["omendb"] == omendb.__version__ and env["pyarrow"] == pa.__version__


def test_compact_and_export(loaded, tmp_path):
    db_path, _ = loaded
    with omendb.open(db_path) as db:
        db["docs"].delete(list(range(100)))
    report = json.loads(ok(omendb_cli("compact", "--db", db_path, "--cleanup", "--keep-last", "1")).stdout)
    assert report["table"] == "docs" and report["rows"] == 500 and report["versions_removed"] >= 1
    with omendb.open(db_path, read_only=True) as db:
        assert db["docs"].stats()["deleted_rows"] == 0 and len(db["docs"].versions()) == 1
    for fmt, name in (("parquet", "out.parquet"), ("arrow", "out.arrow"), ("lance", "out.lance")):
        summary = json.loads(ok(omendb_cli("export", "--db", db_path, "--table", "docs", "--out",
                                           tmp_path / name)).stdout)
        assert summary["format"] == fmt and summary["rows"] == 500
    fails(omendb_cli("export", "--db", db_path, "--table", "docs", "-o", tmp_path / "out.parquet"), 1,
          "already exists", "export")
    ok(omendb_cli("export", "--db", db_path, "--output", tmp_path / "out.parquet", "--overwrite", "--format", "parquet"))
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 500
    fails(omendb_cli("export", "--db", db_path, "--table", "docs", "--out", tmp_path / "x", "--format", "csv"), 2,
          "Invalid value for '--format'", "export")
    fails(omendb_cli("compact", "--db", tmp_path / "nowhere"), 1, "no such database folder", "compact")


def test_a_locked_table_is_reported(loaded):
    db_path, _ = loaded
    with omendb.open(db_path) as db:
        db.open_table("docs")  # this process holds the writer lock
        fails(omendb_cli("compact", "--db", db_path), 1, "docs", "compact")
        fails(omendb_cli("ingest", str(db_path / "nothing.parquet"), "--db", db_path, "--table", "docs"), 1,
              "no such file", "ingest")


@pytest.mark.parametrize("command", ["", "ingest", "search", "info", "compact", "export", "demo", "serve"])
def test_help_everywhere(command):
    proc = ok(omendb_cli(*([command] if command else []), "--help"))
    assert proc.stdout.startswith("Usage: ") and "--help" in proc.stdout


def test_unknown_command_is_a_usage_error():
    fails(omendb_cli("frobnicate"), 2, "No such command 'frobnicate'", "")


def test_demo_small(tmp_path):
    proc = ok(omendb_cli("demo", "--path", tmp_path / "demo.omen", "--rows", "3000", "--dim", "16",
                         "--queries", "20", timeout=300))
    for expected in ("ingested products.parquet", "HNSW search", "SQL:", "compacted to", "exported"):
        assert expected in proc.stdout, proc.stdout


def test_interrupted_ingest_keeps_whole_batches(data, db_path):
    """Ctrl-C while ingest waits for more input: exit 130, the batches already written are kept."""
    import signal
    import time

    table = pq.read_table(data[0])
    proc = subprocess.Popen([sys.executable, "-m", "omendb.cli", "ingest", "-", "--db", str(db_path), "--table",
                             "docs", "--batch-size", "100"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    writer = pa.ipc.new_stream(proc.stdin, table.schema)
    writer.write_table(table.slice(0, 350))      # 3 whole batches, and 50 rows of a 4th
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not (db_path / "docs").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)                                # the 2nd and 3rd batches follow the first at once
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted after 300 rows" in err
    with omendb.open(db_path, read_only=True) as db:
        assert db["docs"].count() == 300
