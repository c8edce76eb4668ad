"""Import from every source format and export to every target format, round trip.

Each source is made from one reference Arrow table, ingested in small batches and
read back: ids, vectors and metadata must come back exactly (vectors as float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import omendb
from omendb.convert import to_vector_array
from omendb.io import export_table
from omendb.io import ingest
from omendb.io import detect_format, open_source

N, DIM, BATCH = 1_234, 8, 300


@pytest.fixture
def reference(rng) -> pa.Table:
    vectors = rng.random((N, DIM), dtype=np.float32)
    return pa.table({
        "id": pa.array(np.arange(N) * 3 + 1, pa.int64()),
        "lang": pa.array([("en", "de", "fr")[i % 3] for i in range(N)]),
        "score": pa.array(rng.random(N)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
    })


def vectors_of(table: pa.Table, column: str = "vector") -> np.ndarray:
    return np.asarray(to_vector_array(table.column(column), None, column).values).reshape(table.num_rows, -1)


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    got, want = got.sort_by("id"), want.sort_by("id")
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    np.testing.assert_array_equal(vectors_of(got), vectors_of(want))
    assert got.column("lang").to_pylist() == want.column("lang").to_pylist()
    np.testing.assert_allclose(got.column("score").to_numpy(), want.column("score").to_numpy(), rtol=1e-15)


def _json_rows(table: pa.Table, vector_as_string: bool) -> list[dict]:
    rows = table.to_pylist()
    if vector_as_string:
        for row in rows:
            row["vector"] = json.dumps(row["vector"])
    return rows


# ---------------------------------------------------------------- the sources
def write_source(kind: str, table: pa.Table, tmp: Path):
    """Return something open_source accepts, holding ``table``'s rows."""
    if kind == "parquet":
        pq.write_table(table, tmp / "rows.parquet", row_group_size=100)  # row groups smaller than a batch
        return tmp / "rows.parquet"
    if kind == "parquet-folder":
        folder = tmp / "rows"
        for i, start in enumerate(range(0, table.num_rows, 500)):
            (folder / f"part={i}").mkdir(parents=True)
            pq.write_table(table.slice(start, 500), folder / f"part={i}" / "data.parquet")
        return folder
    if kind == "lance":
        import lance

        lance.write_dataset(table, tmp / "rows.lance", max_rows_per_file=400)
        return tmp / "rows.lance"
    if kind == "lancedb-table":  # what LanceDB keeps on disk: <db>/<table>.lance
        import lance

        lance.write_dataset(table, tmp / "lancedb" / "docs.lance")
        return tmp / "lancedb" / "docs.lance"
    if kind in ("arrow-file", "arrow-stream"):
        path = tmp / ("rows.arrow" if kind == "arrow-file" else "rows.arrows")
        opener = pa.ipc.new_file if kind == "arrow-file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=450)
        return path
    if kind == "csv":
        path = tmp / "rows.csv"
        with open(path, "w") as f:
            f.write("id,lang,score,vector\n")
            for row in table.to_pylist():
                f.write(f'{row["id"]},{row["lang"]},{row["score"]!r},"{json.dumps(row["vector"])}"\n')
        return path
    if kind in ("jsonl-list", "jsonl-string"):
        path = tmp / "rows.jsonl"
        with open(path, "w") as f:
            for row in _json_rows(table, vector_as_string=kind == "jsonl-string"):
                f.write(json.dumps(row) + "\n")
        return path
    if kind == "pandas":
        return table.to_pandas()
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if kind == "polars-lazy":
        import polars as pl

        pq.write_table(table, tmp / "lazy.parquet")
        return pl.scan_parquet(tmp / "lazy.parquet")
    if kind == "arrow-table":
        return table
    if kind == "arrow-reader":
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=77))
    if kind == "duckdb":
        import duckdb

        pq.write_table(table, tmp / "duck.parquet")
        return duckdb.connect().read_parquet(str(tmp / "duck.parquet"))
    raise AssertionError(kind)


KINDS = ["parquet", "parquet-folder", "lance", "lancedb-table", "arrow-file", "arrow-stream", "csv",
         "jsonl-list", "jsonl-string", "pandas", "polars", "polars-lazy", "arrow-table", "arrow-reader", "duckdb"]


@pytest.mark.parametrize("kind", KINDS)
def test_ingest_round_trip(kind, reference, tmp_path, db_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    source = open_source(write_source(kind, reference, tmp_path / "a"), batch_size=BATCH)
    batches = list(source)
    assert sum(b.num_rows for b in batches) == N
    assert all(b.num_rows == BATCH for b in batches[:-1]) and 0 < batches[-1].num_rows <= BATCH
    assert source.total_rows in (None, N)
    source.close()

    with omendb.open(db_path) as db:
        seen: list[int] = []
        result = ingest(db, write_source(kind, reference, tmp_path / "b"), table="docs", batch_size=BATCH,
                        metric="cosine", on_batch=seen.append)
        assert result.rows == N and result.created and result.batches == len(seen) == -(-N // BATCH)
        table = db["docs"]
        assert table.metric == "cosine" and table.dim == DIM
        assert_same_rows(table.to_arrow(), reference)
        hit = table.search(vectors_of(reference)[7], k=1)
        assert hit["id"].to_pylist() == [reference["id"][7].as_py()]


def test_parquet_folder_keeps_hive_partition_columns(reference, tmp_path, db_path):
    folder = write_source("parquet-folder", reference, tmp_path)
    with omendb.open(db_path) as db:
        ingest(db, folder, table="docs")
        rows = db["docs"].to_arrow().sort_by("id")
    assert "part" in rows.column_names
    assert rows["part"].to_pylist() == [i // 500 for i in range(N)]


def test_numpy_sources_get_ids(tmp_path, db_path, rng):
    vectors = rng.random((500, DIM), dtype=np.float32)
    np.save(tmp_path / "v.npy", vectors)
    with omendb.open(db_path) as db:
        ingest(db, tmp_path / "v.npy", table="a", batch_size=128)
        ingest(db, vectors, table="b", batch_size=128)
        for name in ("a", "b"):
            rows = db[name].to_arrow().sort_by("id")
            assert rows["id"].to_pylist() == list(range(500))
            np.testing.assert_array_equal(vectors_of(rows), vectors)


def test_omendb_table_as_source(reference, db_path):
    with omendb.open(db_path) as db:
        first = db.create_table("first", reference)
        first.delete(reference["id"].to_pylist()[:10])
        ingest(db, first, table="copy")
        assert_same_rows(db["copy"].to_arrow(), reference.slice(10))


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["parquet", "arrow", "lance"])
def test_export_round_trip(fmt, reference, tmp_path, db_path):
    out = tmp_path / f"docs.{fmt}"
    with omendb.open(db_path) as db:
        table = db.create_table("docs", reference.slice(0, 1000))
        table.flush()
        table.add(reference.slice(1000))                       # unflushed rows are exported too
        gone = reference["id"].to_pylist()[5:25]
        table.delete(gone)                                     # deleted rows are not
        result = export_table(table, out, fmt, batch_size=256)
    keep = reference.filter(pa.array([i not in set(gone) for i in reference["id"].to_pylist()]))
    assert result.rows == keep.num_rows and result.format == fmt and result.bytes > 0
    if fmt == "parquet":
        back = pq.read_table(out)
    elif fmt == "arrow":
        back = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    else:
        import lance

        back = lance.dataset(str(out)).to_table()
    assert back.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert_same_rows(back, keep)
    # ... and it ingests back unchanged
    with omendb.open(tmp_path / "again.omen") as db:
        ingest(db, out, table="docs")
        assert_same_rows(db["docs"].to_arrow(), keep)


def test_export_refuses_to_overwrite_unless_asked(reference, tmp_path, db_path):
    out = tmp_path / "docs.parquet"
    out.write_text("precious")
    with omendb.open(db_path) as db:
        table = db.create_table("docs", reference)
        with pytest.raises(FileExistsError, match="already exists"):
            export_table(table, out)
        assert out.read_text() == "precious"
        export_table(table, out, overwrite=True)
        assert pq.read_table(out).num_rows == N
        assert table.export(tmp_path / "method.arrow", "arrow").rows == N   # Table.export is the same call
        (tmp_path / "docs.lance").mkdir()
        export_table(table, tmp_path / "docs.lance", "lance", overwrite=True)  # a folder replaced by a dataset
        with pytest.raises(ValueError, match="unknown export format 'csv'"):
            export_table(table, tmp_path / "x.csv", "csv")
        with pytest.raises(FileNotFoundError, match="no such folder"):
            export_table(table, tmp_path / "missing" / "x.parquet")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers


def test_export_of_a_checkout_and_an_empty_table(reference, tmp_path, db_path):
    with omendb.open(db_path) as db:
        table = db.create_table("docs", reference)
        table.flush()
        version = table.version
        table.delete(reference["id"].to_pylist())
        assert export_table(table, tmp_path / "empty.parquet").rows == 0
        assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
        assert export_table(table.checkout(version), tmp_path / "old.arrow", "arrow").rows == N


# ---------------------------------------------------------------- errors
def test_clear_errors(reference, tmp_path, db_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet: no such file"):
        open_source(tmp_path / "nope.parquet")
    pq.write_table(reference.rename_columns(["id", "lang", "score", "emb"]), tmp_path / "emb.parquet")
    with pytest.raises(omendb.SchemaError, match=r"no vector column 'vector' \(columns: id, lang, score, emb\)"):
        open_source(tmp_path / "emb.parquet")
    assert open_source(tmp_path / "emb.parquet", vector_column="emb").total_rows == N
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the format"):
        open_source(tmp_path / "notes.xyz")
    with pytest.raises(ValueError, match="unknown source format 'xml'"):
        open_source(tmp_path / "emb.parquet", format="xml")
    with pytest.raises(ValueError, match="batch_size"):
        open_source(tmp_path / "emb.parquet", vector_column="emb", batch_size=0)
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not readable as Parquet"):
        open_source(tmp_path / "garbage.parquet")


def test_folder_detection(reference, tmp_path):
    write_source("lancedb-table", reference, tmp_path)
    with pytest.raises(ValueError, match=r"is a LanceDB database \(tables: docs.lance\)"):
        open_source(tmp_path / "lancedb")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(reference, mixed / "a.parquet")
    (mixed / "b.csv").write_text("id,vector\n1,\"[1]\"\n")
    with pytest.raises(ValueError, match="mixes formats"):
        detect_format(mixed)
    assert detect_format(tmp_path / "x.csv.gz") == "csv"
    assert detect_format(tmp_path / "x.NDJSON") == "jsonl"


def test_bad_vector_strings_name_the_row(tmp_path, db_path):
    (tmp_path / "bad.csv").write_text('id,vector\n1,"[1, 2]"\n2,"[1, 2]"\n3,"[1, oops]"\n')
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.InvalidVectorError, match=r"bad.csv.*row 2 is not a JSON array of numbers: '\[1, oops\]'"):
            ingest(db, tmp_path / "bad.csv", table="docs")
        assert "docs" not in db  # the table made from the failed first batch is gone
        (tmp_path / "ragged.csv").write_text('id,vector\n1,"[1, 2]"\n2,"[1, 2, 3]"\n')
        with pytest.raises(omendb.InvalidVectorError, match="ragged"):
            ingest(db, tmp_path / "ragged.csv", table="docs")


@pytest.mark.parametrize("text, message", [
    ("[1, 2", "row 1 is not a JSON array"), ("1, 2", "row 1 is not a JSON array"),
    ("[]", "row 1 is not a JSON array"), ('["a", 2]', "row 1 is not a JSON array"),
    ("[1, null]", "row 1 is not a JSON array"), ("[1, NaN]", "row 1 contains NaN"),
])
def test_to_vector_array_parses_json_strings(text, message):
    good = to_vector_array(pa.array([" [0.5, -1e-3] ", "[3,4]"]), None, "v")
    assert good.type == pa.list_(pa.float32(), 2)
    assert good.to_pylist() == [[0.5, pytest.approx(-1e-3)], [3.0, 4.0]]
    sliced = to_vector_array(pa.array(["junk", "[1, 2]", "[3, 4]"]).slice(1), 2, "v")
    assert sliced.to_pylist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(omendb.InvalidVectorError, match=message):
        to_vector_array(pa.array(["[0, 0]", text]), None, "v")
    with pytest.raises(omendb.InvalidVectorError, match="null vector at row 1"):
        to_vector_array(pa.array(["[0, 0]", None]), None, "v")
    with pytest.raises(omendb.DimensionError, match="row 0 has 2 components"):
        to_vector_array(pa.array(["[0, 0]"]), 3, "v")


# ---------------------------------------------------------------- ingest modes
def test_modes_and_upsert(reference, tmp_path, db_path):
    pq.write_table(reference, tmp_path / "rows.parquet")
    src = tmp_path / "rows.parquet"
    with omendb.open(db_path) as db:
        with pytest.raises(omendb.TableNotFoundError, match="does not exist"):
            ingest(db, src, table="docs", mode="append")
        ingest(db, src, table="docs", mode="create", format="lance")
        assert db["docs"].format == "lance"
        with pytest.raises(omendb.TableExistsError, match="already exists"):
            ingest(db, src, table="docs", mode="create")
        with pytest.raises(omendb.DuplicateKeyError, match=r"rows.parquet, in the batch of rows 0-1,233: 1234 id\(s\) already exist"):
            ingest(db, src, table="docs")
        result = ingest(db, [src, reference], table="docs", upsert=True)  # idempotent re-run, two sources
        assert result.rows == 2 * N and not result.created and db["docs"].count() == N
        with pytest.raises(omendb.SchemaError, match="no rows to ingest"):
            ingest(db, reference.slice(0, 0), table="empty")
        other = db.create_table("other", schema=reference.schema)
        assert ingest(other, src).rows == N  # a Table target
        with pytest.raises(ValueError, match="mode must be"):
            ingest(db, src, table="docs", mode="replace")


def test_failure_mid_ingest_keeps_whole_batches(reference, db_path):
    def batches():
        yield from reference.slice(0, 900).to_batches(max_chunksize=300)
        raise RuntimeError("source broke")

    with omendb.open(db_path) as db:
        with pytest.raises(RuntimeError, match="source broke"):
            ingest(db, pa.RecordBatchReader.from_batches(reference.schema, batches()), table="docs",
                   batch_size=300)
        assert db["docs"].count() == 900


def test_kill_mid_ingest_keeps_a_prefix_of_whole_batches(reference, tmp_path, db_path):
    """A process killed (os._exit, no close) in the middle of an ingest loses no acknowledged batch."""
    pq.write_table(reference, tmp_path / "rows.parquet")
    code = f"""
        import os, omendb
        from omendb.io import ingest
        db = omendb.open({str(db_path)!r})
        seen = []
        def on_batch(rows):
            seen.append(rows)
            if len(seen) == 3:
                os._exit(9)          # dies right after the 3rd batch is acknowledged, without close()
        ingest(db, {str(tmp_path / 'rows.parquet')!r}, table="docs", batch_size=200, on_batch=on_batch)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with omendb.open(db_path) as db:
        rows = db["docs"].to_arrow().sort_by("id")
    assert rows.num_rows == 600
    assert_same_rows(rows, reference.slice(0, 600))


# ---------------------------------------------------------------- bounded memory
#: Peak RSS of a process itself: /proc VmHWM. (ru_maxrss would not do: Linux carries the
#: parent's high-water mark over fork + exec, so a child of a big pytest reports pytest's.)
PEAK = """
def vm_hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
"""

MEMORY_SCRIPT = PEAK + """
import sys
import omendb
from omendb.io import ingest
path, db_path, memtable_mb, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with omendb.open(db_path, build_indexes=False, compaction=False, memtable_bytes=memtable_mb << 20) as db:
    result = ingest(db, path, table="t", batch_size=batch)
print(result.rows, vm_hwm())
"""

CLI_SCRIPT = PEAK + """
import atexit, runpy, sys
atexit.register(lambda: print("peak", vm_hwm()))
sys.argv = ["omendb", *sys.argv[1:]]
runpy.run_module("omendb.cli", run_name="__main__")
"""

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def _write_vectors_parquet(path: Path, rows: int, dim: int = 384, chunk: int = 20_000) -> int:
    rng = np.random.default_rng(5)
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(str(path), schema, compression="none") as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            vectors = rng.random((n, dim), dtype=np.float32)
            writer.write_table(pa.table({"id": np.arange(start, start + n),
                                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
                                        schema=schema))
    return path.stat().st_size


def _peak_rss(path: Path, db_path: Path, memtable_mb: int, batch: int) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(db_path), str(memtable_mb),
                           str(batch)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows, peak = map(int, proc.stdout.split())
    return rows, peak


@needs_proc
def test_streamed_ingest_memory_is_bounded(tmp_path):
    """A ~300 MB Parquet file ingests with peak RSS a small fraction of it above a tiny file's."""
    small_size = _write_vectors_parquet(tmp_path / "small.parquet", 4_000)
    size = _write_vectors_parquet(tmp_path / "big.parquet", 200_000)
    assert size > 250 << 20 and small_size < size / 40
    _, baseline = _peak_rss(tmp_path / "small.parquet", tmp_path / "small.omen", 8, 2_000)
    rows, peak = _peak_rss(tmp_path / "big.parquet", tmp_path / "big.omen", 8, 2_000)
    assert rows == 200_000
    assert peak - baseline < size / 3, (peak - baseline, size)


@needs_proc
@pytest.mark.slow
def test_streamed_cli_ingest_of_a_large_file_stays_under_its_size(tmp_path):
    """`omendb ingest` of a ~1.2 GB file with default settings: peak RSS well under the file size."""
    size = _write_vectors_parquet(tmp_path / "big.parquet", 800_000)
    proc = subprocess.run([sys.executable, "-c", CLI_SCRIPT, "ingest", str(tmp_path / "big.parquet"),
                           "--db", str(tmp_path / "db"), "--table", "t", "--no-index", "--json"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    summary, peak = proc.stdout.strip().splitlines()
    assert json.loads(summary)["rows"] == 800_000
    assert int(peak.split()[1]) < size / 2, (peak, size)
