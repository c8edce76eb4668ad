"""A pipeline step: Parquet in, omendb table out, via the `omendb` command line.

    python examples/parquet_pipeline.py                      # makes its own data in a temp folder
    python examples/parquet_pipeline.py IN.parquet DB TABLE  # your file

The same step in a shell script (summaries are one JSON line each when piped):

    omendb ingest IN.parquet --db DB --table TABLE --upsert --batch-size 10000 | jq .rows_per_s
    omendb search --db DB --table TABLE --query queries.parquet -k 10 -o hits.parquet
    omendb export --db DB --table TABLE -o snapshot.parquet --overwrite

`--upsert` makes a re-run after a failure safe: rows already loaded are replaced, not
refused. Exit status 0 means every row is durable; non-zero prints one error line.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def omendb_cli(*args: str) -> str:
    """Run one `omendb` command; stop the pipeline with its error line if it fails."""
    proc = subprocess.run([sys.executable, "-m", "omendb.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"step failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def make_input(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    n, dim = 20_000, 32
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    path = folder / "events.parquet"
    pq.write_table(pa.table({
        "id": np.arange(n),
        "kind": rng.choice(["click", "view", "buy"], n),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    }), path, row_group_size=5_000)
    np.save(folder / "queries.npy", vectors[:3])
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if len(sys.argv) == 4:
            source, db, table = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
            queries = None
        else:
            source, db, table = make_input(tmp), str(tmp / "events.omen"), "events"
            queries = tmp / "queries.npy"

        summary = json.loads(omendb_cli("ingest", str(source), "--db", db, "--table", table, "--upsert",
                                        "--batch-size", "5000", "--metric", "cosine"))
        print(f"ingest: {summary['rows']:,} rows in {summary['seconds']:.2f} s "
              f"({summary['rows_per_s']:,.0f} rows/s); table has {summary['table_rows']:,} rows")

        info = json.loads(omendb_cli("info", "--db", db, "--table", table, "--json"))["tables"][0]
        print(f"info: dim {info['dim']}, {info['segments']} segment(s), {info['bytes'] / 2**20:.1f} MiB")

        if queries is not None:
            hits = [json.loads(line) for line in
                    omendb_cli("search", "--db", db, "--table", table, "--query", str(queries), "-k", "3",
                               "--json", "--where", "kind <> 'view'").splitlines()]
            print(f"search: {len(hits)} hits for 3 queries; query 0 -> ids {[h['id'] for h in hits if h['_query'] == 0]}")
            out = tmp / "snapshot.parquet"
            exported = json.loads(omendb_cli("export", "--db", db, "--table", table, "-o", str(out)))
            print(f"export: {exported['rows']:,} rows to {out.name}, read back {pq.read_metadata(out).num_rows:,}")


if __name__ == "__main__":
    main()
